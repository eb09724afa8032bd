//! Checks the schema cannot express: they compare derived names (see `build::names`), or guard
//! objects stored before the CRD had a rule.
//! A spec failing them is reported in status and an Event and waits for the next edit; nothing
//! already running is touched.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::build::{MAX_NAME_LEN, is_dns_1035_label, label_value, model_object_name, slug};
use crate::crd::LlmApplication;

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
    // The CRD refuses such names on creation; an object stored before those rules keeps its name.
    if !is_dns_1035_label(&name) || name.contains("--") {
        problems.push(SpecProblem {
            field: "metadata.name".into(),
            message: format!(
                "{name:?} must be a DNS-1035 label of at most {MAX_NAME_LEN} characters without \"--\" to name the \
                    application's objects; recreate the application under such a name"
            ),
        });
    }
    let mut names: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    let mut labels: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    for (i, model) in app.spec.models.iter().enumerate() {
        let id = model.model_id();
        let field = format!("spec.models[{i}].modelLoadingConfig.modelId");
        let child = model_object_name(&name, id);
        if slug(id).is_empty() {
            problems.push(SpecProblem {
                field: field.clone(),
                message: format!("model id {id:?} has no ASCII letter or digit to name its objects by"),
            });
        } else if let Some((j, other)) = names.insert(child.clone(), (i, id)) {
            let hint = if slug(id) == slug(other) {
                "ids must differ in more than case and punctuation"
            } else {
                "their shortened names meet; change either id"
            };
            problems.push(SpecProblem {
                field: field.clone(),
                message: format!(
                    "model id {id:?} names the same objects ({child:?}) as spec.models[{j}] ({other:?}); {hint}"
                ),
            });
        } else if let Some((j, other)) = labels.insert(label_value(id), (i, id)) {
            problems.push(SpecProblem {
                field: field.clone(),
                message: format!(
                    "model id {id:?} has the same {} label value as spec.models[{j}] ({other:?}), so their \
                        pods could not be told apart; change either id",
                    crate::build::labels::MODEL_ID
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
