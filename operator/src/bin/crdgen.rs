//! Prints the LlmApplication CRD; `charts/llmserve/crds/llmapplications.yaml` (its one checked-in place) is this
//! output.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

fn main() {
    print!("{}", llmserve_operator::crd_yaml());
}
