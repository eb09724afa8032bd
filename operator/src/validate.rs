//! Checks the schema cannot express: they need the object's name or compare derived names.
//! A spec failing them is reported in status and an Event and waits for the next edit; nothing
//! already running is touched.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::build::{label_value, model_object_name, router_name, slug};
use crate::crd::LlmApplication;

/// Longest name a Service (DNS-1035 label) may have, and so every child.
pub const MAX_NAME_LEN: usize = 63;

/// One thing wrong with a spec, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// Path of the offending field, e.g. `spec.models[1].modelLoadingConfig.modelId`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem with `app`'s spec that the CRD schema lets through.
pub fn validate(app: &LlmApplication) -> Vec<SpecProblem> {
    let name = app.name_any();
    let mut problems = Vec::new();
    let router = router_name(&name);
    if router.len() > MAX_NAME_LEN {
        problems.push(SpecProblem {
            field: "metadata.name".into(),
            message: format!(
                "router name {router:?} would exceed {MAX_NAME_LEN} characters; use a shorter application name"
            ),
        });
    }
    let mut seen: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    for (i, model) in app.spec.models.iter().enumerate() {
        let id = model.model_id();
        let field = format!("spec.models[{i}].modelLoadingConfig.modelId");
        let child = model_object_name(&name, id);
        if child.len() > MAX_NAME_LEN {
            problems.push(SpecProblem {
                field: field.clone(),
                message: format!(
                    "object name {child:?} (application name + model id) exceeds {MAX_NAME_LEN} characters; shorten \
                        the model id or the application name"
                ),
            });
        }
        if label_value(id).len() > MAX_NAME_LEN {
            problems.push(SpecProblem {
                field: field.clone(),
                message: format!("model id is longer than the {MAX_NAME_LEN} characters a label value allows"),
            });
        }
        if slug(id) == "router" {
            problems.push(SpecProblem {
                field: field.clone(),
                message: format!("model id {id:?} would name its objects like the application's router"),
            });
        }
        if let Some((j, other)) = seen.insert(slug(id), (i, id)) {
            problems.push(SpecProblem {
                field: field.clone(),
                message: format!(
                    "model id {id:?} names the same objects ({child:?}) as spec.models[{j}] ({:?}); ids must differ in \
                        more than case and punctuation",
                    other
                ),
            });
        }
        if model.gpus() == 0 && model.tensor_parallel_size() > 1 {
            problems.push(SpecProblem {
                field: format!("spec.models[{i}].engineKwargs.tensorParallelSize"),
                message: "tensorParallelSize > 1 needs a GPU acceleratorType".into(),
            });
        }
    }
    problems
}
