//! Prints the LlmApplication CRD; `crds/llmapplications.yaml` is this output.
#![forbid(unsafe_code)]

fn main() {
    print!("{}", llmserve_operator::crd_yaml());
}
