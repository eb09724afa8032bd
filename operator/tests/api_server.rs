//! The operator against a real kube-apiserver and etcd (with the ServiceMonitor and PrometheusRule
//! CRDs installed).
//! There is no controller-manager in this tier: tests write Deployment status and scale
//! themselves, standing in for the Deployment controller and the HPA.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use llmserve_operator::build::{prometheus_rule_resource, service_monitor_resource};
use llmserve_operator::crd::{AuthStatus, LlmApplication};
use llmserve_router::tenants::{LimitsConfig, Tenants};
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

async fn setup(ns: &str) -> (Client, RunningController) {
    let client = client().await;
    install_llmapp_crd(&client).await;
    install_service_monitor_crd(&client).await;
    install_prometheus_rule_crd(&client).await;
    namespace(&client, ns).await;
    let ctrl = spawn_controller(&client, ns);
    (client, ctrl)
}

async fn wait_get<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(WAIT, || async { api.get_opt(name).await.ok().flatten() })
        .await
        .unwrap_or_else(|| panic!("{name} never appeared"))
}

fn args(d: &Deployment) -> Vec<String> {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

fn condition(app: &LlmApplication, type_: &str) -> Option<(String, String, String)> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn events_for(client: &Client, ns: &str, app: &str) -> Vec<(String, String)> {
    // kube's recorder writes events.k8s.io/v1 Events, which core/v1 reads back.
    let evs = Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
    evs.items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(app))
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ray_example_produces_every_child() {
    let ns = "ray-example";
    let (client, _ctrl) = setup(ns).await;
    apply_app(&client, ns, &fixture("ray-example.yaml", "qwen")).await.unwrap();

    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = wait_get(&deps, "qwen--qwen-0-5b").await;
    let a = args(&d);
    assert!(a.contains(&"--disable-engine-metrics".to_string()), "logEngineMetrics: false reaches the engine: {a:?}");
    assert!(a.windows(2).any(|w| w == ["--model", "Qwen/Qwen2.5-0.5B-Instruct"]));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(pod.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"], "NVIDIA-A10G");
    assert_eq!(d.metadata.owner_references.as_ref().unwrap()[0].name, "qwen");
    let managers: Vec<_> = d.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
    assert_eq!(managers, vec!["llmserve-operator".to_string()], "one field manager, server-side apply");

    let svc = wait_get(&Api::<Service>::namespaced(client.clone(), ns), "qwen--qwen-0-5b").await;
    assert!(svc.spec.unwrap().ports.unwrap().iter().any(|p| p.name.as_deref() == Some("metrics")));
    let hpa = wait_get(&Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns), "qwen--qwen-0-5b").await;
    let hs = hpa.spec.unwrap();
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(1), 2));
    assert_eq!(hs.metrics.unwrap()[0].pods.as_ref().unwrap().metric.name, "llmserve_ongoing_requests");
    let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
    let sm = wait_get(&sms, "qwen--qwen-0-5b").await;
    assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "metrics");
    wait_get(&sms, "qwen-router").await;
    let router = wait_get(&deps, "qwen-router").await;
    assert!(args(&router).contains(&"qwen-0.5b=qwen--qwen-0-5b".to_string()));
    wait_get(&Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), ns), "qwen-router").await;
    wait_get(&Api::<Service>::namespaced(client.clone(), ns), "qwen-router").await;

    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let app = eventually(WAIT, || async {
        let a = apps.get("qwen").await.ok()?;
        (a.status.as_ref()?.observed_generation == a.metadata.generation).then_some(a)
    })
    .await
    .expect("status observed the generation");
    let st = app.status.as_ref().unwrap();
    assert_eq!(st.router_url.as_deref(), Some("http://qwen-router.ray-example.svc:8000"));
    assert_eq!(st.models[0].model_id, "qwen-0.5b");
    assert_eq!(st.replicas.as_deref(), Some("0/1"));
    assert_eq!(condition(&app, "Ready").unwrap().0, "False", "no pod is ready: Ready must not come from what was sent");
    assert_eq!(condition(&app, "Monitored").unwrap().1, "ServiceMonitorsApplied");
    let evs = eventually(WAIT, || async {
        let e = events_for(&client, ns, "qwen").await;
        e.iter().any(|(_, r)| r == "Applied").then_some(e)
    })
    .await;
    assert!(evs.is_some(), "an Applied event is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_keeps_the_replica_count_the_hpa_wrote() {
    let ns = "hpa-owns-replicas";
    let (client, _ctrl) = setup(ns).await;
    let mut app = fixture("ray-example.yaml", "chat");
    app["spec"]["models"][0]["deploymentConfig"]["autoscalingConfig"] =
        json!({"minReplicas": 1, "maxReplicas": 4, "initialReplicas": 3});
    apply_app(&client, ns, &app).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let name = "chat--qwen-0-5b";
    let d = eventually(WAIT, || async {
        let d = deps.get_opt(name).await.ok().flatten()?;
        (d.spec.as_ref()?.replicas == Some(3)).then_some(d)
    })
    .await
    .expect("initialReplicas applied on creation");
    assert!(!args(&d).contains(&"--max-model-len".to_string()));

    // The HPA scales through the scale subresource, under its own field manager.
    let hpa_pp = PatchParams { field_manager: Some("horizontal-pod-autoscaler".into()), ..Default::default() };
    deps.patch_scale(name, &hpa_pp, &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();

    app["spec"]["models"][0]["engineKwargs"] = json!({"maxModelLen": 2048});
    apply_app(&client, ns, &app).await.unwrap();
    let d = eventually(WAIT, || async {
        let d = deps.get_opt(name).await.ok().flatten()?;
        args(&d).windows(2).any(|w| w == ["--max-model-len", "2048"]).then_some(d)
    })
    .await
    .expect("spec change reached the Deployment");
    assert_eq!(d.spec.unwrap().replicas, Some(2), "the operator did not overwrite the HPA's replica count");

    // Switching to a fixed count hands replicas back to the operator and removes the HPA.
    app["spec"]["models"][0]["deploymentConfig"] = json!({"numReplicas": 5});
    apply_app(&client, ns, &app).await.unwrap();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, || async {
        let d = deps.get_opt(name).await.ok().flatten()?;
        let gone = hpas.get_opt(name).await.ok()?.is_none();
        (d.spec.as_ref()?.replicas == Some(5) && gone).then_some(())
    })
    .await
    .expect("fixed replicas applied and the HPA deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_model_removes_its_children() {
    let ns = "remove-model";
    let (client, _ctrl) = setup(ns).await;
    let mut app = fixture("ray-example.yaml", "two");
    let mut second = app["spec"]["models"][0].clone();
    second["modelLoadingConfig"] = json!({"modelId": "stories", "modelSource": "/models/stories260k"});
    second["acceleratorType"] = json!("none");
    app["spec"]["models"].as_array_mut().unwrap().push(second);
    apply_app(&client, ns, &app).await.unwrap();

    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
    for name in ["two--qwen-0-5b", "two--stories"] {
        wait_get(&deps, name).await;
        wait_get(&svcs, name).await;
        wait_get(&hpas, name).await;
        wait_get(&sms, name).await;
    }

    app["spec"]["models"].as_array_mut().unwrap().pop();
    apply_app(&client, ns, &app).await.unwrap();
    eventually(WAIT, || async {
        let gone = deps.get_opt("two--stories").await.ok()?.is_none()
            && svcs.get_opt("two--stories").await.ok()?.is_none()
            && hpas.get_opt("two--stories").await.ok()?.is_none()
            && sms.get_opt("two--stories").await.ok()?.is_none();
        gone.then_some(())
    })
    .await
    .expect("the removed model's Deployment, Service, HPA and ServiceMonitor are deleted");
    assert!(deps.get_opt("two--qwen-0-5b").await.unwrap().is_some(), "the remaining model stays");
    let router = deps.get("two-router").await.unwrap();
    assert!(!args(&router).iter().any(|a| a.starts_with("stories=")), "the router forgets the removed model");
    let evs = eventually(WAIT, || async {
        let e = events_for(&client, ns, "two").await;
        e.iter().any(|(_, r)| r == "Pruned").then_some(e)
    })
    .await;
    assert!(evs.is_some(), "a Pruned event is recorded");
}

/// A change to one model of a valid spec.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_invalid_specs_naming_the_field() {
    let ns = "invalid-specs";
    let client = client().await;
    install_llmapp_crd(&client).await;
    namespace(&client, ns).await;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "max < min",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"] = json!({"minReplicas": 3, "maxReplicas": 2})),
            "autoscalingConfig.minReplicas",
        ),
        (
            "unknown engineKwargs key",
            Box::new(|m| m["engineKwargs"] = json!({"maxModelLen": 10, "maxBatchSize": 8})),
            "engineKwargs.maxBatchSize",
        ),
        (
            "zero minReplicas",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"]["minReplicas"] = json!(0)),
            "minReplicas",
        ),
        (
            "negative numReplicas",
            Box::new(|m| m["deploymentConfig"] = json!({"numReplicas": -1})),
            "deploymentConfig.numReplicas",
        ),
        (
            "zero target",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"]["targetOngoingRequests"] = json!(0)),
            "targetOngoingRequests",
        ),
        (
            "an unknown autoscaling metric",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"]["metric"] = json!("gpuUtilization")),
            "autoscalingConfig.metric: Unsupported value",
        ),
        (
            "waitingRequests without its target",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"]["metric"] = json!("waitingRequests")),
            "metric waitingRequests needs targetWaitingRequests",
        ),
        (
            "kvCacheUsage without its target",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"]["metric"] = json!("kvCacheUsage")),
            "metric kvCacheUsage needs targetKvCacheUsage",
        ),
        (
            "ttftP95 without its target",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"]["metric"] = json!("ttftP95")),
            "metric ttftP95 needs targetTtftP95Seconds",
        ),
        (
            "a target of another metric",
            Box::new(|m| m["deploymentConfig"]["autoscalingConfig"]["targetKvCacheUsage"] = json!(0.8)),
            "targetKvCacheUsage is only for metric kvCacheUsage",
        ),
        (
            "a KV-cache target above 1",
            Box::new(|m| {
                m["deploymentConfig"]["autoscalingConfig"]["metric"] = json!("kvCacheUsage");
                m["deploymentConfig"]["autoscalingConfig"]["targetKvCacheUsage"] = json!(1.5);
            }),
            "autoscalingConfig.targetKvCacheUsage: Invalid value",
        ),
        (
            "a zero TTFT target",
            Box::new(|m| {
                m["deploymentConfig"]["autoscalingConfig"]["metric"] = json!("ttftP95");
                m["deploymentConfig"]["autoscalingConfig"]["targetTtftP95Seconds"] = json!(0);
            }),
            "targetTtftP95Seconds must be greater than 0",
        ),
        (
            "a zero waiting target",
            Box::new(|m| {
                m["deploymentConfig"]["autoscalingConfig"]["metric"] = json!("waitingRequests");
                m["deploymentConfig"]["autoscalingConfig"]["targetWaitingRequests"] = json!(0);
            }),
            "targetWaitingRequests must be greater than 0",
        ),
        ("bad accelerator", Box::new(|m| m["acceleratorType"] = json!("TPU-v5")), "acceleratorType"),
        ("zero maxNumSeqs", Box::new(|m| m["engineKwargs"] = json!({"maxNumSeqs": 0})), "engineKwargs.maxNumSeqs"),
        ("bad modelSource", Box::new(|m| m["modelLoadingConfig"]["modelSource"] = json!("s3 bucket")), "modelSource"),
        // What the serving image cannot do yet is refused, saying so.
        ("LoRA", Box::new(|m| m["loraConfig"] = json!({"maxNumAdaptersPerReplica": 2})), "loraConfig is not supported"),
        (
            "tensor parallel",
            Box::new(|m| m["engineKwargs"] = json!({"tensorParallelSize": 2})),
            "tensorParallelSize > 1 is not supported",
        ),
        (
            "a cache limit in words",
            Box::new(|m| m["cacheSizeLimit"] = json!("lots")),
            "cacheSizeLimit must be a positive",
        ),
        (
            "a negative cache limit",
            Box::new(|m| m["cacheSizeLimit"] = json!("-1Gi")),
            "cacheSizeLimit must be a positive",
        ),
        ("a zero cache limit", Box::new(|m| m["cacheSizeLimit"] = json!("0")), "cacheSizeLimit must be a positive"),
    ];
    for (what, edit, field) in cases {
        let mut app = fixture("ray-example.yaml", "bad");
        edit(&mut app["spec"]["models"][0]);
        let err = apply_app(&client, ns, &app).await.expect_err(what);
        let msg = err.to_string();
        assert!(msg.contains(field), "{what}: error should name {field}: {msg}");
    }
    // The router's routing and auth settings (edits of `spec`).
    let app_cases: Vec<(&str, Edit, &str)> = vec![
        ("unknown policy", Box::new(|s| s["router"] = json!({"policy": "foo"})), "spec.router.policy"),
        ("loadFactor below 1", Box::new(|s| s["router"] = json!({"loadFactor": 0.5})), "spec.router.loadFactor"),
        ("zero prefixChars", Box::new(|s| s["router"] = json!({"prefixChars": 0})), "spec.router.prefixChars"),
        (
            "a Secret name with Unicode",
            Box::new(|s| s["auth"] = json!({"apiKeys": {"secretRef": {"name": "kéys"}}})),
            "spec.auth.apiKeys.secretRef.name: Invalid value",
        ),
        (
            "a Secret name in upper case",
            Box::new(|s| s["auth"] = json!({"apiKeys": {"secretRef": {"name": "Keys"}}})),
            "must be a Secret name",
        ),
        (
            "limits without keys",
            Box::new(|s| s["auth"] = json!({"limits": {"default": {"requestsPerMinute": 5}}})),
            "spec.auth.apiKeys: Required value",
        ),
        (
            "a zero default limit",
            Box::new(|s| {
                s["auth"] =
                    json!({"apiKeys": {"secretRef": {"name": "k"}}, "limits": {"default": {"requestsPerMinute": 0}}})
            }),
            "spec.auth.limits.default.requestsPerMinute",
        ),
        (
            "a zero tenant limit",
            Box::new(|s| {
                s["auth"] = json!({"apiKeys": {"secretRef": {"name": "k"}},
                    "limits": {"tenants": {"team-a": {"concurrentRequests": 0}}}})
            }),
            "spec.auth.limits.tenants.team-a.concurrentRequests",
        ),
        (
            "a tenant no Secret entry can name",
            Box::new(|s| {
                s["auth"] = json!({"apiKeys": {"secretRef": {"name": "k"}},
                    "limits": {"tenants": {"team a🙂": {"concurrentRequests": 1}}}})
            }),
            "spec.auth.limits.tenants: Invalid value",
        ),
        (
            "a TLS Secret name with a slash",
            Box::new(|s| s["tls"] = json!({"secretName": "certs/router"})),
            "tls.secretName must be a Secret name",
        ),
        ("TLS without a Secret", Box::new(|s| s["tls"] = json!({})), "spec.tls.secretName: Required value"),
    ];
    for (what, edit, field) in app_cases {
        let mut app = fixture("ray-example.yaml", "bad");
        edit(&mut app["spec"]);
        let err = apply_app(&client, ns, &app).await.expect_err(what);
        let msg = err.to_string();
        assert!(msg.contains(field), "{what}: error should name {field}: {msg}");
    }
    let mut app = fixture("ray-example.yaml", "bad");
    let dup = app["spec"]["models"][0].clone();
    app["spec"]["models"].as_array_mut().unwrap().push(dup);
    let msg = apply_app(&client, ns, &app).await.expect_err("duplicate modelId").to_string();
    assert!(msg.contains("spec.models") && msg.contains("modelId must be unique"), "{msg}");
    // The name is part of every child's name: a DNS-1035 label without the `--` separator.
    for (name, why) in [("x--y", "must not contain '--'"), (&"n".repeat(64), "at most 63 characters")] {
        let msg = apply_app(&client, ns, &fixture("ray-example.yaml", name)).await.expect_err(name).to_string();
        assert!(msg.contains("metadata.name") && msg.contains(why), "{name}: {msg}");
    }
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    assert!(apps.get_opt("bad").await.unwrap().is_none(), "nothing was stored");
    // Each autoscaling metric with its target is stored, and the API server takes the HPA built from it.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let metrics = [
        json!({"maxReplicas": 2}),
        json!({"maxReplicas": 2, "metric": "waitingRequests", "targetWaitingRequests": 0.5}),
        json!({"maxReplicas": 2, "metric": "kvCacheUsage", "targetKvCacheUsage": 1}),
        json!({"maxReplicas": 2, "metric": "ttftP95", "targetTtftP95Seconds": 0.75}),
    ];
    for (i, auto) in metrics.into_iter().enumerate() {
        let mut app = fixture("ray-example.yaml", &format!("metric-{i}"));
        app["spec"]["models"][0]["deploymentConfig"]["autoscalingConfig"] = auto.clone();
        let stored = apply_app(&client, ns, &app).await.unwrap_or_else(|e| panic!("{auto}: {e}"));
        let hpa = llmserve_operator::build::hpa(&stored, &stored.spec.models[0]).unwrap();
        hpas.create(&kube::api::PostParams { dry_run: true, ..Default::default() }, &hpa)
            .await
            .unwrap_or_else(|e| panic!("{auto}: the HPA is refused: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_schema_cannot_catch_sets_a_condition_and_keeps_children() {
    let ns = "semantic-invalid";
    let (client, ctrl) = setup(ns).await;
    let mut app = fixture("ray-example.yaml", "keep");
    apply_app(&client, ns, &app).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let before = wait_get(&deps, "keep--qwen-0-5b").await;

    // `Qwen-0.5B` passes the schema's uniqueness rule but would name the same objects.
    let mut twin = app["spec"]["models"][0].clone();
    twin["modelLoadingConfig"]["modelId"] = json!("Qwen-0.5B");
    twin["engineKwargs"] = json!({"maxModelLen": 99});
    app["spec"]["models"].as_array_mut().unwrap().push(twin);
    app["spec"]["models"][0]["engineKwargs"] = json!({"maxModelLen": 4096});
    apply_app(&client, ns, &app).await.expect("the schema accepts it");

    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let a = eventually(WAIT, || async {
        let a = apps.get("keep").await.ok()?;
        (condition(&a, "Ready")?.1 == "InvalidSpec").then_some(a)
    })
    .await
    .expect("Ready=False with reason InvalidSpec");
    let (status, _, msg) = condition(&a, "Ready").unwrap();
    assert_eq!(status, "False");
    assert!(msg.contains("spec.models[1].modelLoadingConfig.modelId"), "{msg}");
    assert_eq!(condition(&a, "Degraded").unwrap().0, "True");
    let evs = eventually(WAIT, || async {
        let e = events_for(&client, ns, "keep").await;
        e.iter().any(|(t, r)| t == "Warning" && r == "InvalidSpec").then_some(e)
    })
    .await;
    assert!(evs.is_some(), "a Warning InvalidSpec event is recorded");
    assert!(ctrl.metrics.render().contains(r#"llmserve_operator_reconciles_total{result="invalid"}"#));

    let after = deps.get("keep--qwen-0-5b").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the running Deployment was not touched"
    );
    assert!(!args(&after).contains(&"--max-model-len".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_deployment_status() {
    let ns = "status-follows";
    let (client, _ctrl) = setup(ns).await;
    let mut app = fixture("ray-example.yaml", "st");
    app["spec"]["models"][0]["deploymentConfig"] = json!({"numReplicas": 2});
    apply_app(&client, ns, &app).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let model = wait_get(&deps, "st--qwen-0-5b").await;
    let router = wait_get(&deps, "st-router").await;

    let write_status = |name: &'static str, generation: Option<i64>, replicas: i32, ready: i32| {
        let deps = deps.clone();
        async move {
            let s = json!({"status": {
                "observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
                "availableReplicas": ready, "updatedReplicas": replicas,
            }});
            deps.patch_status(name, &PatchParams::default(), &Patch::Merge(s)).await.unwrap();
        }
    };
    write_status("st--qwen-0-5b", model.metadata.generation, 2, 2).await;
    write_status("st-router", router.metadata.generation, 1, 1).await;

    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let a = eventually(WAIT, || async {
        let a = apps.get("st").await.ok()?;
        (condition(&a, "Ready")?.0 == "True").then_some(a)
    })
    .await
    .expect("Ready=True once every Deployment reports its replicas ready");
    let st = a.status.unwrap();
    assert_eq!(st.replicas.as_deref(), Some("2/2"));
    assert_eq!((st.models[0].ready_replicas, st.models[0].desired_replicas), (2, 2));
    assert_eq!(condition(&apps.get("st").await.unwrap(), "Progressing").unwrap().0, "False");

    write_status("st--qwen-0-5b", model.metadata.generation, 2, 1).await;
    let a = eventually(WAIT, || async {
        let a = apps.get("st").await.ok()?;
        (condition(&a, "Ready")?.0 == "False").then_some(a)
    })
    .await
    .expect("Ready=False when a replica stops being ready");
    assert_eq!(a.status.unwrap().replicas.as_deref(), Some("1/2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_alerts_follow_the_spec_and_the_observability_switch() {
    let ns = "slo";
    let (client, _ctrl) = setup(ns).await;
    let mut app = fixture("slo.yaml", "shop");
    apply_app(&client, ns, &app).await.unwrap();
    let rules: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &prometheus_rule_resource());
    let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let ttft = |r: &DynamicObject| {
        r.data["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["alert"] == "LlmserveTTFTHigh")
            .map(|x| x["expr"].as_str().unwrap().to_string())
    };
    let rule = wait_get(&rules, "shop-slo").await;
    assert_eq!(
        rule.data["spec"]["groups"][0]["rules"].as_array().unwrap().len(),
        6,
        "5 SLOs of chat, the error rate of quiet"
    );
    assert!(ttft(&rule).unwrap().ends_with("> 1"), "{:?}", ttft(&rule));
    wait_get(&sms, "shop--chat").await;

    // A changed SLO changes the rule.
    app["spec"]["models"][0]["slo"]["ttftP95Seconds"] = json!(3);
    apply_app(&client, ns, &app).await.unwrap();
    eventually(WAIT, || async {
        rules.get("shop-slo").await.ok().and_then(|r| ttft(&r)).filter(|e| e.ends_with("> 3"))
    })
    .await
    .expect("the PrometheusRule follows the SLO");

    // Observability off: alerts and ServiceMonitors go, engine metrics go where the model did not decide.
    app["spec"]["observability"] = json!({"enabled": false});
    apply_app(&client, ns, &app).await.unwrap();
    let off = eventually(WAIT, || async {
        let gone = rules.get_opt("shop-slo").await.ok()?.is_none()
            && sms.get_opt("shop--chat").await.ok()?.is_none()
            && sms.get_opt("shop-router").await.ok()?.is_none();
        let chat = deps.get("shop--chat").await.ok()?;
        (gone && args(&chat).contains(&"--disable-engine-metrics".to_string())).then_some(())
    })
    .await;
    assert!(off.is_some(), "observability off removes the PrometheusRule and ServiceMonitors and engine metrics");
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let monitored = eventually(WAIT, || async {
        condition(&apps.get("shop").await.ok()?, "Monitored").filter(|c| c.1 == "ObservabilityDisabled")
    })
    .await;
    assert!(monitored.is_some());

    // A model's own logEngineMetrics wins over the switch.
    app["spec"]["models"][0]["logEngineMetrics"] = json!(true);
    apply_app(&client, ns, &app).await.unwrap();
    let kept = eventually(WAIT, || async {
        (!args(&deps.get("shop--chat").await.ok()?).contains(&"--disable-engine-metrics".to_string())).then_some(())
    })
    .await;
    assert!(kept.is_some(), "logEngineMetrics: true keeps engine metrics with observability off");
    assert!(rules.get_opt("shop-slo").await.unwrap().is_none(), "still no alerts");
}

/// A spec the schema lets through but the API server refuses in a child (an environment variable
/// named in non-ASCII, long enough that the API's message passes the Event note's 1 kB limit in
/// the middle of a character) never stops the operator: that app reports one readable line naming
/// the object, and an app beside it reconciles as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_the_api_refuses_is_one_readable_line_and_stops_no_other_app() {
    let ns = "refused-child";
    let (client, ctrl) = setup(ns).await;
    let mut bad = fixture("ray-example.yaml", "bad-env");
    bad["spec"]["models"][0]["env"] = json!([{"name": format!("x{}", "é".repeat(600)), "value": "1"}]);
    apply_app(&client, ns, &bad).await.expect("the schema accepts any env name");
    apply_app(&client, ns, &fixture("ray-example.yaml", "good")).await.unwrap();

    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_get(&deps, "good--qwen-0-5b").await;
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let (_, reason, message) = eventually(WAIT, || async {
        condition(&apps.get("bad-env").await.ok()?, "Degraded").filter(|c| c.0 == "True")
    })
    .await
    .expect("the refused app is Degraded");
    assert_eq!(reason, "ApplyFailed");
    assert!(message.starts_with("applying Deployment bad-env--qwen-0-5b failed: "), "{message}");
    assert!(!message.contains('\n') && message.len() <= 1024, "one bounded line: {message}");
    assert!(!message.contains("Status {"), "no debug dump: {message}");
    let notes = eventually(WAIT, || async {
        let list = Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.ok()?;
        let notes: Vec<String> = list
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some("bad-env") && e.reason.as_deref() == Some("ApplyFailed")
            })
            .filter_map(|e| e.message)
            .collect();
        (!notes.is_empty()).then_some(notes)
    })
    .await
    .expect("an ApplyFailed Event");
    assert!(notes.iter().all(|n| n.len() <= 1000 && !n.contains('\n')), "{notes:?}");
    assert!(!ctrl.handle_finished(), "the controller is still running");
}

/// App `a` with model `b-c` and app `a-b` with model `c` once both wanted Deployment `a-b-c`; now
/// they are `a--b-c` and `a-b--c`, each with one owner. An object made outside llmserve at a name
/// an app wants is not taken over: that app reports `NameConflict` naming the object and its owner,
/// and the object keeps its spec and its (lack of) owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_met_differ_and_a_foreign_object_is_a_conflict_and_not_taken_over() {
    let ns = "names-meet";
    let (client, ctrl) = setup(ns).await;
    let mut first = fixture("ray-example.yaml", "a");
    first["spec"]["models"][0]["modelLoadingConfig"]["modelId"] = json!("b-c");
    apply_app(&client, ns, &first).await.unwrap();
    let mut second = fixture("ray-example.yaml", "a-b");
    second["spec"]["models"][0]["modelLoadingConfig"]["modelId"] = json!("c");
    apply_app(&client, ns, &second).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for (name, owner) in [("a--b-c", "a"), ("a-b--c", "a-b"), ("a-router", "a"), ("a-b-router", "a-b")] {
        let d = wait_get(&deps, name).await;
        let owners: Vec<_> = d.metadata.owner_references.iter().flatten().map(|r| r.name.clone()).collect();
        assert_eq!(owners, [owner], "{name}");
    }

    let foreign: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "f--c", "labels": {"team": "someone-else"}},
        "spec": {
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "c", "image": "theirs:1"}]},
            },
        },
    }))
    .unwrap();
    let foreign = deps.create(&Default::default(), &foreign).await.unwrap();
    let mut third = fixture("ray-example.yaml", "f");
    third["spec"]["models"][0]["modelLoadingConfig"]["modelId"] = json!("c");
    apply_app(&client, ns, &third).await.unwrap();
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let (_, reason, message) =
        eventually(WAIT, || async { condition(&apps.get("f").await.ok()?, "Degraded").filter(|c| c.0 == "True") })
            .await
            .expect("the third app is Degraded");
    assert_eq!(reason, "NameConflict");
    assert!(message.contains("Deployment f--c") && message.contains("made outside llmserve"), "{message}");
    let after = deps.get("f--c").await.unwrap();
    assert_eq!(after.metadata.resource_version, foreign.metadata.resource_version, "the object was not touched");
    assert!(after.metadata.owner_references.is_none());
    assert!(deps.get_opt("f-router").await.unwrap().is_none(), "nothing of the third app was written");
    assert!(!ctrl.handle_finished());
}

/// Children named by an older operator (`<app>-<model>`, before the double hyphen) are pruned the
/// first time a new operator looks at the app, though the spec did not change; an object that
/// merely carries the app's labels, with no owner, is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_prunes_children_an_older_operator_named_and_nothing_else() {
    let ns = "upgrade-names";
    let (client, ctrl) = setup(ns).await;
    apply_app(&client, ns, &fixture("ray-example.yaml", "up")).await.unwrap();
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let app = eventually(WAIT, || async {
        let a = apps.get("up").await.ok()?;
        (a.status.as_ref()?.observed_generation == a.metadata.generation).then_some(a)
    })
    .await
    .expect("the app is reconciled");
    let uid = app.metadata.uid.clone().unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let old = |name: &str, owned: bool| -> Deployment {
        let mut d = json!({
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/instance": "up",
                "app.kubernetes.io/managed-by": "llmserve-operator",
                "app.kubernetes.io/component": "model",
            }},
            "spec": {
                "selector": {"matchLabels": {"old": name}},
                "template": {
                    "metadata": {"labels": {"old": name}},
                    "spec": {"containers": [{"name": "c", "image": "old:1"}]},
                },
            },
        });
        if owned {
            d["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "llmserve.dev/v1alpha1", "kind": "LlmApplication", "name": "up", "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }]);
        }
        serde_json::from_value(d).unwrap()
    };
    deps.create(&Default::default(), &old("up-qwen-0-5b", true)).await.unwrap();
    let decoy = deps.create(&Default::default(), &old("up-decoy", false)).await.unwrap();

    drop(ctrl);
    let _ctrl = spawn_controller(&client, ns);
    eventually(WAIT, || async { deps.get_opt("up-qwen-0-5b").await.ok()?.is_none().then_some(()) })
        .await
        .expect("the child named by the older operator is pruned");
    assert!(deps.get_opt("up--qwen-0-5b").await.unwrap().is_some());
    let after = deps.get("up-decoy").await.unwrap();
    assert_eq!(after.metadata.resource_version, decoy.metadata.resource_version, "no owner, not pruned");
}

/// A client that is the ServiceAccount `ns/name`, with a token the API server issued for it (the
/// identity the router's pod has).
async fn service_account_client(admin: &Client, ns: &str, name: &str) -> Client {
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(name, &Default::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kc = Kubeconfig::read_from(&control_plane().kubeconfig).unwrap();
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    config.auth_info = serde_json::from_value(json!({"token": token})).unwrap();
    Client::try_from(config).unwrap()
}

fn bearer(key: &str) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert(axum::http::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    h
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

/// With `spec.auth`, the router gets `--api-keys-secret` and a Role that reads that one Secret:
/// as the router's ServiceAccount, with a token the API server issued, the router's own Secret
/// follower lists and watches it by `metadata.name` field selector, and no other Secret can be read.
/// Without `spec.auth` the access goes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_reach_the_router_and_its_role_reads_that_secret_only() {
    let ns = "api-keys";
    let (client, _ctrl) = setup(ns).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, data) in [("keys.api-keys", json!({"team-a": "key-a"})), ("other", json!({"x": "not yours"}))] {
        let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
        secrets.create(&Default::default(), &s).await.unwrap();
    }
    let mut app = fixture("keys.yaml", "keys");
    apply_app(&client, ns, &app).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let router = wait_get(&deps, "keys-router").await;
    let a = args(&router);
    assert!(a.windows(2).any(|w| w == ["--api-keys-secret", "keys.api-keys"]), "{a:?}");
    assert!(a.windows(2).any(|w| w == ["--routing-policy", "prefixHash"]), "{a:?}");
    assert!(a.iter().any(|x| x == "--tenant-limits"), "{a:?}");
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    assert_eq!(wait_get(&roles, "keys-router").await.rules.unwrap().len(), 2);
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, || async { (apps.get("keys").await.ok()?.status?.auth? == AuthStatus::ApiKeys).then_some(()) })
        .await
        .expect("status.auth is apiKeys");
    let cp = control_plane();
    let out = std::process::Command::new(cp.bin.join("kubectl"))
        .args(["get", "llmapp", "keys", "-n", ns, "--kubeconfig"])
        .arg(&cp.kubeconfig)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let (head, row) = table.split_once('\n').unwrap_or_default();
    let auth = head.split_whitespace().position(|c| c == "AUTH").unwrap_or_else(|| panic!("no AUTH column: {table}"));
    assert_eq!(row.split_whitespace().nth(auth), Some("apiKeys"), "{table}");

    let sa = service_account_client(&client, ns, "keys-router").await;
    let tenants = Arc::new(Tenants::required());
    let follower = tokio::spawn(llmserve_router::discovery::follow_keys_secret(
        sa.clone(),
        ns.into(),
        "keys.api-keys".into(),
        LimitsConfig::default(),
        tenants.clone(),
    ));
    eventually(WAIT, || async { tenants.authenticate(&bearer("key-a")).ok().flatten() })
        .await
        .expect("the router, as its ServiceAccount, read the keys (list with the field selector)");
    secrets
        .patch("keys.api-keys", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"team-b": "key-b"}})))
        .await
        .unwrap();
    eventually(WAIT, || async { tenants.authenticate(&bearer("key-b")).ok().flatten() })
        .await
        .expect("a key added later is seen (watch with the field selector)");
    follower.abort();

    let as_router: Api<Secret> = Api::namespaced(sa.clone(), ns);
    assert!(as_router.get("keys.api-keys").await.is_ok());
    assert!(forbidden(as_router.get("other").await), "another Secret by name");
    assert!(forbidden(as_router.list(&ListParams::default()).await), "every Secret");
    assert!(forbidden(as_router.list(&ListParams::default().fields("metadata.name=other")).await));
    let mine = as_router.list(&ListParams::default().fields("metadata.name=keys.api-keys")).await.unwrap();
    assert_eq!(mine.items.len(), 1);
    let slices: Api<EndpointSlice> = Api::namespaced(sa.clone(), ns);
    assert!(slices.list(&ListParams::default()).await.is_ok(), "EndpointSlices as before");

    // Without auth: no flag, no Secret in the Role, status says so.
    app["spec"].as_object_mut().unwrap().remove("auth");
    apply_app(&client, ns, &app).await.unwrap();
    eventually(WAIT, || async {
        let plain = !args(&deps.get("keys-router").await.ok()?).iter().any(|x| x.starts_with("--api-keys"));
        let one_rule = roles.get("keys-router").await.ok()?.rules?.len() == 1;
        let none = apps.get("keys").await.ok()?.status?.auth? == AuthStatus::None;
        (plain && one_rule && none).then_some(())
    })
    .await
    .expect("auth removed from the Deployment, the Role and status");
    let gone = eventually(WAIT, || async { forbidden(as_router.get("keys.api-keys").await).then_some(()) }).await;
    assert!(gone.is_some(), "the router can no longer read the keys' Secret");
}

// === isolation: Pod Security `restricted`, identities, the NetworkPolicy ===

/// Creates a Pod from `d`'s template in dry-run: the API server's Pod Security admission judges it
/// as it would the ReplicaSet's pods (this tier has no controller-manager to make them).
async fn dry_run_pod(client: &Client, ns: &str, d: &Deployment) -> Result<(), kube::Error> {
    let template = d.spec.as_ref().unwrap().template.clone();
    let pod = k8s_openapi::api::core::v1::Pod {
        metadata: kube::api::ObjectMeta {
            generate_name: Some("dry-run-".into()),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let pp = kube::api::PostParams { dry_run: true, ..Default::default() };
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns).create(&pp, &pod).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_pass_pod_security_restricted_and_only_the_router_is_admitted_to_models() {
    let ns = "restricted";
    let (client, _ctrl) = setup(ns).await;
    let label = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let mut app = fixture("ray-example.yaml", "sealed");
    app["spec"]["tls"] = json!({"secretName": "sealed-cert"});
    app["spec"]["auth"] = json!({"apiKeys": {"secretRef": {"name": "sealed-keys"}}});
    app["spec"]["models"][0]["cacheSizeLimit"] = json!("2Gi");
    apply_app(&client, ns, &app).await.unwrap();

    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let model = wait_get(&deps, "sealed--qwen-0-5b").await;
    let router = wait_get(&deps, "sealed-router").await;
    // Both pods pass `restricted` (the model's ServiceAccount must exist for the Pod to be taken).
    let sa = wait_get(&Api::<ServiceAccount>::namespaced(client.clone(), ns), "sealed-models").await;
    assert_eq!(sa.automount_service_account_token, Some(false));
    for d in [&model, &router] {
        dry_run_pod(&client, ns, d)
            .await
            .unwrap_or_else(|e| panic!("{} refused: {e}", d.metadata.name.as_ref().unwrap()));
    }
    // The admission is real: one privilege the standard forbids, and the same pod is refused.
    let mut loose = model.clone();
    let c = &mut loose.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0];
    c.security_context.as_mut().unwrap().allow_privilege_escalation = Some(true);
    let err = dry_run_pod(&client, ns, &loose).await.expect_err("a pod allowing escalation").to_string();
    assert!(err.contains("restricted") && err.contains("allowPrivilegeEscalation"), "{err}");

    // The policy selects the app's model pods and lets the router's in.
    let np = wait_get(
        &Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), ns),
        "sealed-models",
    )
    .await;
    assert_eq!(np.metadata.owner_references.as_ref().unwrap()[0].name, "sealed");
    let spec = np.spec.unwrap();
    let selected = spec.pod_selector.unwrap().match_labels.unwrap();
    let model_pod = model.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert!(selected.iter().all(|(k, v)| model_pod.get(k) == Some(v)), "{selected:?} vs {model_pod:?}");
    let router_pod = router.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let admitted =
        spec.ingress.unwrap()[0].from.as_ref().unwrap()[0].pod_selector.clone().unwrap().match_labels.unwrap();
    assert!(admitted.iter().all(|(k, v)| router_pod.get(k) == Some(v)));

    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let url = eventually(WAIT, || async { apps.get("sealed").await.ok()?.status?.router_url }).await.unwrap();
    assert_eq!(url, "https://sealed-router.restricted.svc:8000");
    let cache = model.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    let cache = cache.iter().find(|v| v.name == "cache").unwrap().empty_dir.clone().unwrap();
    assert_eq!(cache.size_limit.unwrap().0, "2Gi");
}
