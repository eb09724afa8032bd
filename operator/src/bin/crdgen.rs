//! Prints the LlmApplication CRD; `charts/llmserve/crds/llmapplications.yaml` (its one checked-in place) is this
//! output.
#![forbid(unsafe_code)]

fn main() {
    print!("{}", llmserve_operator::crd_yaml());
}
