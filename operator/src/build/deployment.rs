//! The model replicas' Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::*;
use crate::accelerator::{GPU_PRODUCT_LABEL, GPU_RESOURCE};
use crate::crd::{LlmApplication, ModelConfig};

/// Where a PersistentVolumeClaim model source is mounted.
pub const MODEL_VOLUME_PATH: &str = "/model-volume";
/// Writable cache (Hugging Face downloads) on an emptyDir, since the root filesystem is read-only.
pub const CACHE_PATH: &str = "/cache";

/// The Deployment serving `model`. When the model autoscales, `spec.replicas` is left out: the
/// HPA owns it, and applying it here would fight the HPA.
pub fn deployment(app: &LlmApplication, model: &ModelConfig) -> Deployment {
    let app_name = app.name_any();
    let selector = model_selector(&app_name, model.model_id());
    let mut volumes =
        vec![empty_dir("cache", None, Some(model.cache_size_limit())), empty_dir("tmp", None, Some(TMP_SIZE_LIMIT))];
    let mut mounts = vec![mount("cache", CACHE_PATH, false), mount("tmp", "/tmp", false)];
    let model_arg = match model.model_source().strip_prefix("pvc://") {
        Some(rest) => {
            let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
            volumes.push(Volume {
                name: "model".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: Some(true),
                }),
                ..Default::default()
            });
            mounts.push(mount("model", MODEL_VOLUME_PATH, true));
            format!("{MODEL_VOLUME_PATH}/{path}").trim_end_matches('/').to_string()
        }
        None => model.model_source().to_string(),
    };
    if model.tensor_parallel_size() > 1 {
        // NCCL between tensor-parallel ranks needs more shared memory than the runtime default.
        volumes.push(empty_dir("dshm", Some("Memory"), None));
        mounts.push(mount("dshm", "/dev/shm", false));
    }

    let mut env = vec![
        EnvVar { name: "HF_HOME".into(), value: Some(format!("{CACHE_PATH}/huggingface")), ..Default::default() },
        EnvVar { name: "RUST_LOG".into(), value: Some("info".into()), ..Default::default() },
    ];
    if let Some(extra) = &model.env {
        env.retain(|e| !extra.iter().any(|x| x.name == e.name));
        env.extend(extra.iter().cloned());
    }

    let container = Container {
        name: "server".into(),
        image: Some(image_for(app, Some(model))),
        command: Some(vec!["llmserve-server".into()]),
        args: Some(server_args(model, &model_arg, app.spec.engine_metrics(model))),
        ports: Some(container_ports()),
        env: Some(env),
        resources: Some(resources(model)),
        // Loading large weights can take many minutes: the startup probe holds liveness off until
        // the first healthy answer, then liveness and readiness both watch `/health`.
        startup_probe: Some(health_probe(10, 180)),
        readiness_probe: Some(health_probe(5, 3)),
        liveness_probe: Some(health_probe(10, 6)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let gpu = model.accelerator_type.and_then(|a| a.gpu_product());
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        security_context: Some(pod_security_context()),
        // The app's own identity, without a token: a model replica calls no API.
        service_account_name: Some(models_name(&app_name)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(60),
        node_selector: gpu.map(|p| BTreeMap::from([(GPU_PRODUCT_LABEL.to_string(), p.to_string())])),
        tolerations: gpu.map(|_| {
            vec![Toleration {
                key: Some(GPU_RESOURCE.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };

    Deployment {
        metadata: model_meta(app, model),
        spec: Some(DeploymentSpec {
            replicas: if model.autoscaling().is_some() { None } else { Some(model.fixed_replicas()) },
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // A GPU replica is expensive: replace one at a time, never run two extra.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(object_labels(&selector)),
                    annotations: model_meta(app, model).annotations,
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// `llmserve-server` flags for a model; vLLM's flag names, one per `engineKwargs` key.
pub fn server_args(model: &ModelConfig, model_arg: &str, engine_metrics: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--model".into(),
        model_arg.into(),
        "--served-model-name".into(),
        model.model_id().into(),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        HTTP_PORT.to_string(),
        "--metrics-port".into(),
        METRICS_PORT.to_string(),
        "--shutdown-delay-seconds".into(),
        SHUTDOWN_DELAY_SECONDS.to_string(),
    ];
    let mut flag = |name: &str, value: String| {
        a.push(format!("--{name}"));
        a.push(value);
    };
    match model.accelerator_type {
        Some(acc) if acc.is_gpu() => flag("device", "cuda".into()),
        _ => flag("device", "cpu".into()),
    }
    if let Some(k) = &model.engine_kwargs {
        if let Some(v) = k.max_model_len {
            flag("max-model-len", v.to_string());
        }
        if let Some(v) = k.max_num_seqs {
            flag("max-num-seqs", v.to_string());
        }
        if let Some(v) = k.max_num_batched_tokens {
            flag("max-num-batched-tokens", v.to_string());
        }
        if let Some(v) = k.tensor_parallel_size {
            flag("tensor-parallel-size", v.to_string());
        }
        if let Some(v) = k.gpu_memory_utilization {
            flag("gpu-memory-utilization", v.to_string());
        }
        if let Some(v) = k.dtype {
            flag("dtype", v.as_str().into());
        }
        if let Some(v) = k.block_size {
            flag("block-size", v.to_string());
        }
    }
    // `loraConfig` passes no flag: the API refuses it until the server serves adapters.
    if model.engine_kwargs.as_ref().and_then(|k| k.enable_prefix_caching) == Some(true) {
        a.push("--enable-prefix-caching".into());
    }
    if !engine_metrics {
        a.push("--disable-engine-metrics".into());
    }
    a
}

/// Resources from the accelerator table, with the user's `resources` laid over key by key. The
/// GPU count always follows `acceleratorType` and the tensor-parallel degree.
pub fn resources(model: &ModelConfig) -> ResourceRequirements {
    let gpus = model.gpus();
    let q = |s: &str| Quantity(s.to_string());
    let (mut requests, mut limits) = if gpus > 0 {
        (
            BTreeMap::from([
                ("cpu".to_string(), q(&(4 * gpus).to_string())),
                ("memory".to_string(), q(&format!("{}Gi", 16 * gpus))),
            ]),
            BTreeMap::from([("memory".to_string(), q(&format!("{}Gi", 32 * gpus)))]),
        )
    } else {
        (
            BTreeMap::from([("cpu".to_string(), q("1")), ("memory".to_string(), q("1Gi"))]),
            BTreeMap::from([("memory".to_string(), q("4Gi"))]),
        )
    };
    if let Some(user) = &model.resources {
        requests.extend(user.requests.clone().unwrap_or_default());
        limits.extend(user.limits.clone().unwrap_or_default());
    }
    if gpus > 0 {
        requests.insert(GPU_RESOURCE.into(), q(&gpus.to_string()));
        limits.insert(GPU_RESOURCE.into(), q(&gpus.to_string()));
    } else {
        requests.remove(GPU_RESOURCE);
        limits.remove(GPU_RESOURCE);
    }
    ResourceRequirements { requests: Some(requests), limits: Some(limits), ..Default::default() }
}

/// `/tmp`'s `sizeLimit`: scratch space only, nothing large is written there.
pub const TMP_SIZE_LIMIT: &str = "1Gi";

/// An emptyDir; with `size_limit`, a pod writing past it is evicted rather than filling the node.
pub fn empty_dir(name: &str, medium: Option<&str>, size_limit: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(String::from),
            size_limit: size_limit.map(|l| Quantity(l.into())),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(read_only), ..Default::default() }
}
