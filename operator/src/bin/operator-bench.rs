//! Operator benchmark: create N LlmApplications on a real test API server and measure the time
//! until every one has its children applied and status written, and the operator's peak RSS.
//!
//! Baseline, in the same run and on the same API server: the bench itself server-side-applies the
//! same children (built with the same pure builders) with the same concurrency, so the ratio says
//! what the operator's watch, queue and status round trips cost over raw API writes.
//!
//! With `--steady-seconds S`, each N is run twice more through the operator, with live status on
//! and off, and once every application is reconciled the API server's own counters (requests
//! served, CPU seconds) are read over S quiet seconds: the load live status adds at N applications.
//! `--fake-routers` (root) makes every application's router answer the operator's reads: the
//! test API server's Service range is routed to loopback, where the bench serves `GET /status` on
//! the routers' metrics port with figures that change on every read, so every application is worth
//! a status write each time it may have one (the worst case).
//!
//! `cargo run --release -p llmserve-operator --bin operator-bench -- --apps 100 --apps 1000`
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use llmserve_operator::build;
use llmserve_operator::crd::LlmApplication;

#[derive(Parser, Debug)]
struct Args {
    /// Application counts to measure, each in a fresh namespace.
    #[arg(long = "apps", default_values_t = [100, 1000])]
    apps: Vec<usize>,
    /// Concurrent creates by the bench.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Operator binary (defaults to the one built next to this bench).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Quiet seconds over which the API server's load is read, live status on and off (0: skip).
    #[arg(long, default_value_t = 0)]
    steady_seconds: u64,
    /// Answer every router read with changing figures (routes 10.96.0.0/16 to loopback; root).
    #[arg(long)]
    fake_routers: bool,
}

/// The test API server's Service range (`tests/harness/control-plane.sh`).
const SERVICE_RANGE: &str = "10.96.0.0/16";

/// Router reads answered, each with new figures.
static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A router's `GET /status` whose figures change on every read: requests per second cycle through
/// 1 to 7, so each read differs from the last written figures by more than the write threshold
/// six times in seven.
async fn fake_status() -> axum::Json<serde_json::Value> {
    let n = READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rps = 1.0 + (n % 7) as f64;
    axum::Json(serde_json::json!({"models": [{
        "model": "qwen-0.5b", "readyReplicas": 1.0, "running": 1.0, "waiting": 0.0, "kvCacheUsage": 0.1,
        "requestsPerSecond": rps, "outputTokensPerSecond": rps * 50.0, "ttftSecondsP50": 0.05, "ttftSecondsP95": 0.1,
    }]}))
}

/// Serves [`fake_status`] on every address of [`SERVICE_RANGE`], port 9090, until dropped.
struct FakeRouters(tokio::task::JoinHandle<()>);

impl FakeRouters {
    async fn start() -> anyhow::Result<Self> {
        let ok = Command::new("ip").args(["route", "add", "local", SERVICE_RANGE, "dev", "lo"]).status()?.success();
        if !ok {
            bail!("ip route add local {SERVICE_RANGE} dev lo failed (root is needed)");
        }
        let listener =
            tokio::net::TcpListener::bind(("0.0.0.0", u16::try_from(llmserve_operator::build::METRICS_PORT)?)).await?;
        let app = axum::Router::new().route("/status", axum::routing::get(fake_status));
        Ok(FakeRouters(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })))
    }
}

impl Drop for FakeRouters {
    fn drop(&mut self) {
        self.0.abort();
        let _ = Command::new("ip").args(["route", "del", "local", SERVICE_RANGE, "dev", "lo"]).status();
    }
}

/// The API server's requests served (`apiserver_request_total`, all kinds) and CPU seconds.
async fn apiserver_counters(client: &Client) -> anyhow::Result<(f64, f64)> {
    let text = client.request_text(axum::http::Request::get("/metrics").body(Vec::new())?).await?;
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let requests = text.lines().filter(|l| l.starts_with("apiserver_request_total{")).map(value).sum();
    let cpu = text.lines().find(|l| l.starts_with("process_cpu_seconds_total ")).map(value).unwrap_or(0.0);
    Ok((requests, cpu))
}

/// A sum of the operator's counters whose lines start with `prefix`.
fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Live status on or off, and the quiet window to measure (0: none).
#[derive(Debug, Clone, Copy)]
struct Live {
    on: bool,
    steady_seconds: u64,
}

/// What one quiet window saw, per second.
#[derive(Debug, Default, Clone, Copy)]
struct Steady {
    requests: f64,
    cpu: f64,
    reads: f64,
    writes: f64,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn app(name: &str, ns: &str) -> anyhow::Result<LlmApplication> {
    let app = serde_json::json!({
        "apiVersion": "llmserve.dev/v1alpha1",
        "kind": "LlmApplication",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"models": [{
            "modelLoadingConfig": {"modelId": "qwen-0.5b", "modelSource": "Qwen/Qwen2.5-0.5B-Instruct"},
            "acceleratorType": "A10G",
            "deploymentConfig": {"autoscalingConfig": {"minReplicas": 1, "maxReplicas": 2}},
        }]},
    });
    Ok(serde_json::from_value(app)?)
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Baseline: the bench applies each app's children itself (what the operator writes, minus
/// watching, queueing, pruning and status).
async fn baseline(client: &Client, ns: &str, n: usize, concurrency: usize) -> anyhow::Result<Duration> {
    namespace(client, ns).await?;
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..n)
        .map(|i| {
            let (client, apps) = (client.clone(), apps.clone());
            let ns = ns.to_string();
            async move {
                let created = apps.create(&PostParams::default(), &app(&format!("app-{i}"), &ns)?).await?;
                let pp = PatchParams::apply("baseline").force();
                let m = created.spec.models.first().context("the bench's application has one model")?;
                let dep = build::deployment(&created, m);
                let name = dep.metadata.name.clone().context("a built Deployment has a name")?;
                let router = build::router_deployment(&created);
                let rname = router.metadata.name.clone().context("a built Deployment has a name")?;
                let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &ns);
                let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
                let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
                    Api::namespaced(client.clone(), &ns);
                deps.patch(&name, &pp, &Patch::Apply(&dep)).await?;
                svcs.patch(&name, &pp, &Patch::Apply(&build::service(&created, m))).await?;
                hpas.patch(&name, &pp, &Patch::Apply(build::hpa(&created, m).context("autoscaling is on: an HPA")?))
                    .await?;
                deps.patch(&rname, &pp, &Patch::Apply(&router)).await?;
                svcs.patch(&rname, &pp, &Patch::Apply(&build::router_service(&created))).await?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(start.elapsed())
}

async fn with_operator(
    client: &Client,
    kubeconfig: &PathBuf,
    operator: &PathBuf,
    ns: &str,
    n: usize,
    concurrency: usize,
    live: Live,
) -> anyhow::Result<(Duration, f64, Steady)> {
    let Live { on: live, steady_seconds } = live;
    namespace(client, ns).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(operator)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .args(["--namespace", ns, "--watch-namespace", ns, "--leader-election", "false"])
        .arg(format!("--live-status={live}"))
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("LLMSERVE_USAGE_STATS_ENABLED", "0")
        .env("LLMSERVE_CONCURRENCY", concurrency.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start operator")?;
    let pid = child.id();
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    let results: Vec<anyhow::Result<LlmApplication>> = stream::iter(0..n)
        .map(|i| {
            let apps = apps.clone();
            let a = app(&format!("app-{i}"), ns);
            async move { Ok(apps.create(&PostParams::default(), &a?).await?) }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let mut peak = 0.0f64;
    loop {
        peak = peak.max(peak_rss_mib(pid).unwrap_or(0.0));
        let list = apps.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|a| {
                a.status
                    .as_ref()
                    .is_some_and(|s| s.observed_generation == a.metadata.generation && s.router_url.is_some())
            })
            .count();
        if done == n {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("only {done}/{n} applications reconciled after 30 minutes");
        }
        // Listing N custom resources is itself heavy for the API server: poll gently, so the
        // measuring does not slow down what it measures.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = start.elapsed();
    peak = peak.max(peak_rss_mib(pid).unwrap_or(0.0));
    let operator_metrics = || async {
        let answer = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?;
        anyhow::Ok(answer.text().await?)
    };
    if let Ok(body) = operator_metrics().await {
        for l in body.lines().filter(|l| l.starts_with("llmserve_operator_reconcile") && !l.contains("_bucket")) {
            eprintln!("  {l}");
        }
    }
    let mut steady = Steady::default();
    if steady_seconds > 0 {
        // Past the last reconciles and the first round of reads, then nothing from the bench.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (m0, (r0, c0)) = (operator_metrics().await?, apiserver_counters(client).await?);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(steady_seconds)).await;
        let (m1, (r1, c1)) = (operator_metrics().await?, apiserver_counters(client).await?);
        let secs = t0.elapsed().as_secs_f64();
        let reads = |m: &str| counter(m, "llmserve_operator_live_reads_total");
        let writes = |m: &str| counter(m, "llmserve_operator_live_status_writes_total");
        steady = Steady {
            requests: (r1 - r0) / secs,
            cpu: (c1 - c0) / secs,
            reads: (reads(&m1) - reads(&m0)) / secs,
            writes: (writes(&m1) - writes(&m0)) / secs,
        };
        let ok_reads = counter(&m1, "llmserve_operator_live_reads_total{result=\"ok\"}");
        eprintln!("  live status {live}: {steady:?} per second; {ok_reads} reads answered in all");
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok((elapsed, peak, steady))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let operator = match args.operator.clone() {
        Some(operator) => operator,
        None => std::env::current_exe()?.with_file_name("llmserve-operator"),
    };
    let dir = std::env::temp_dir().join(format!("llmserve-bench-{}", std::process::id()));
    let mut cp = Command::new("bash")
        .arg(repo_root().join("tests/harness/control-plane.sh"))
        .arg("up")
        .arg(&dir)
        .arg(std::process::id().to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(cp.stdout.take().context("control plane stdout")?),
        &mut line,
    )?;
    let kubeconfig = PathBuf::from(line.trim().strip_prefix("ready ").context("control plane failed")?);
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("charts/llmserve/crds/llmapplications.yaml"))?)?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch("llmapplications.llmserve.dev", &PatchParams::apply("bench"), &Patch::Apply(&crd))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    println!(
        "| apps | baseline: bench applies children itself (s) | operator: all reconciled, status written (s) | ratio | \
            operator peak RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let _fake = if args.fake_routers { Some(FakeRouters::start().await?) } else { None };
    let mut steady = Vec::new();
    for n in &args.apps {
        let base = baseline(&client, &format!("base-{n}"), *n, args.concurrency).await?;
        let live = Live { on: true, steady_seconds: 0 };
        let (op, rss, _) =
            with_operator(&client, &kubeconfig, &operator, &format!("op-{n}"), *n, args.concurrency, live).await?;
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.1} |",
            base.as_secs_f64(),
            op.as_secs_f64(),
            op.as_secs_f64() / base.as_secs_f64(),
            rss
        );
        if args.steady_seconds > 0 {
            let mut pair = Vec::new();
            for on in [false, true] {
                let (ns, live) = (format!("steady-{n}-{on}"), Live { on, steady_seconds: args.steady_seconds });
                pair.push(with_operator(&client, &kubeconfig, &operator, &ns, *n, args.concurrency, live).await?.2);
            }
            steady.push((*n, pair));
        }
    }
    if !steady.is_empty() {
        println!();
        println!(
            "| apps | live status | API server requests/s | API server CPU (cores) | router reads/s | status writes/s |"
        );
        println!("|---:|---|---:|---:|---:|---:|");
        for (n, pair) in &steady {
            for (s, live) in pair.iter().zip(["off", "on"]) {
                println!("| {n} | {live} | {:.1} | {:.3} | {:.1} | {:.2} |", s.requests, s.cpu, s.reads, s.writes);
            }
        }
    }
    // The harness tears the control plane down once this process exits.
    drop(cp);
    Ok(())
}
