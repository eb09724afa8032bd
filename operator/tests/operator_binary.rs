//! The `llmserve-operator` binary itself against a real API server that has no Prometheus
//! Operator: leader election, usage data, `/metrics`, `/readyz`, and the ServiceMonitor CRD
//! missing without anything else breaking.

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::Api;
use llmserve_operator::crd::LlmApplication;
use llmserve_test_support::process::{Process, free_port};
use support::*;

const WAIT: Duration = Duration::from_secs(45);

fn start_operator(ns: &str, identity: &str, extra_env: &[(&str, &str)]) -> Process {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmserve-operator"));
    cmd.env("KUBECONFIG", &control_plane().kubeconfig)
        .args(["--namespace", ns, "--watch-namespace", ns, "--identity", identity])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--lease-duration-seconds", "3", "--usage-interval-seconds", "1"])
        .envs(extra_env.iter().copied());
    Process::spawn(cmd, port)
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

async fn metric_line(port: u16, prefix: &str) -> Option<String> {
    let (_, body) = get(port, "/metrics").await?;
    body.lines().find(|l| l.starts_with(prefix)).map(String::from)
}

fn app_status(apps: &Api<LlmApplication>) -> String {
    let apps = apps.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move { format!("{:?}", apps.get("full").await.map(|a| a.status)) })
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reconciles_reports_usage_and_survives_a_missing_service_monitor_crd() {
    let ns = "binary";
    let client = client().await;
    install_llmapp_crd(&client).await;
    namespace(&client, ns).await;
    let op = start_operator(ns, "op-a", &[]);

    let ready = eventually(WAIT, || async { get(op.port, "/readyz").await.filter(|(c, _)| *c == 200) }).await;
    assert!(ready.is_some(), "/readyz answers 200");
    assert_eq!(get(op.port, "/healthz").await.unwrap().0, 200);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let holder =
        eventually(WAIT, || async { leases.get_opt("llmserve-operator").await.ok()??.spec?.holder_identity }).await;
    assert_eq!(holder.as_deref(), Some("op-a"));

    apply_app(&client, ns, &fixture("full.yaml", "full")).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for name in ["full--llama-8b", "full--stories", "full-router"] {
        eventually(WAIT, || async { deps.get_opt(name).await.ok().flatten() })
            .await
            .unwrap_or_else(|| panic!("{name}"));
    }
    assert!(Api::<Service>::namespaced(client.clone(), ns).get_opt("full--stories").await.unwrap().is_some());

    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let monitored = eventually(WAIT, || async {
        let a = apps.get("full").await.ok()?;
        a.status?.conditions.into_iter().find(|c| c.type_ == "Monitored")
    })
    .await
    .unwrap_or_else(|| panic!("no Monitored condition: {:?}", app_status(&apps)));
    assert_eq!((monitored.status.as_str(), monitored.reason.as_str()), ("False", "ServiceMonitorCRDMissing"));

    let usage: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    // Usage data is cluster-wide: other tests' applications may be counted too.
    let report = eventually(WAIT, || async {
        let cm = usage.get_opt("llmserve-usage-stats").await.ok()??;
        let json: serde_json::Value = serde_json::from_str(cm.data?.get("usage.json")?).ok()?;
        let h100 = json["models"].as_array()?.iter().find(|m| m["gpu_type"] == "H100")?.clone();
        Some((json, h100))
    })
    .await
    .expect("usage report with the H100 model written to the ConfigMap");
    let (report, h100) = report;
    assert!(report["num_models"].as_u64().unwrap() >= 2 && report["serves_multiple_models"] == true);
    assert_eq!((h100["num_gpus"].as_i64(), h100["tensor_parallel_size"].as_i64()), (Some(1), Some(1)));
    assert_eq!(
        (h100["architecture"].as_str(), h100["lora_initial_adapters"].as_i64()),
        (Some("LlamaForCausalLM"), Some(0))
    );
    assert_eq!(
        (h100["min_replicas"].as_i64(), h100["max_replicas"].as_i64(), h100["initial_replicas"].as_i64()),
        (Some(2), Some(8), Some(3))
    );

    let line = eventually(WAIT, || async {
        metric_line(op.port, r#"llmserve_operator_reconciles_total{result="success"}"#).await
    })
    .await;
    assert!(line.is_some(), "reconcile counter exported");
    assert!(metric_line(op.port, "llmserve_usage_info{").await.is_some());
    assert!(metric_line(op.port, "llmserve_operator_reconcile_duration_seconds_count").await.is_some());
    assert_eq!(metric_line(op.port, "llmserve_operator_leader").await.as_deref(), Some("llmserve_operator_leader 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over() {
    let ns = "leader";
    let client = client().await;
    install_llmapp_crd(&client).await;
    namespace(&client, ns).await;
    let first = start_operator(ns, "first", &[("LLMSERVE_USAGE_STATS_ENABLED", "0")]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, || async {
        (leases.get_opt("llmserve-operator").await.ok()??.spec?.holder_identity? == "first").then_some(())
    })
    .await
    .expect("first replica leads");
    let second = start_operator(ns, "second", &[("LLMSERVE_USAGE_STATS_ENABLED", "0")]);
    eventually(WAIT, || async { get(second.port, "/readyz").await.filter(|(c, _)| *c == 200) })
        .await
        .expect("follower is ready");
    assert_eq!(
        metric_line(second.port, "llmserve_operator_leader").await.as_deref(),
        Some("llmserve_operator_leader 0")
    );
    apply_app(&client, ns, &fixture("ray-example.yaml", "before-failover")).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, || async { deps.get_opt("before-failover-router").await.ok().flatten() })
        .await
        .expect("the leader reconciles");
    let (_, body) = get(second.port, "/metrics").await.expect("follower metrics");
    let reconciles: Vec<&str> = body.lines().filter(|l| l.starts_with("llmserve_operator_reconciles_total")).collect();
    assert_eq!(reconciles.len(), 3, "zero-valued series for each result: {reconciles:?}");
    assert!(reconciles.iter().all(|l| l.ends_with(" 0")), "the follower reconciled nothing: {reconciles:?}");

    drop(first);
    let holder = eventually(WAIT, || async {
        let h = leases.get_opt("llmserve-operator").await.ok()??.spec?.holder_identity?;
        (h == "second").then_some(h)
    })
    .await;
    assert!(holder.is_some(), "the follower took over the expired lease");
    apply_app(&client, ns, &fixture("ray-example.yaml", "after-failover")).await.unwrap();
    eventually(WAIT, || async { deps.get_opt("after-failover-router").await.ok().flatten() })
        .await
        .expect("the new leader reconciles");
    let usage: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert!(usage.get_opt("llmserve-usage-stats").await.unwrap().is_none(), "usage stats off: no ConfigMap");
}
