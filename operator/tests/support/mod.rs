//! Test harness: a real etcd + kube-apiserver per test binary, started through
//! `tests/harness/control-plane.sh` (the same script developers and CI use), torn down by that
//! script's watchdog when this process exits.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::{Client, Config};
use llmserve_operator::controller::{self, Context};
use llmserve_operator::metrics::Metrics;

/// A running control plane.
pub struct ControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory of etcd, kube-apiserver and kubectl.
    pub bin: PathBuf,
    _proc: Child,
    _dir: tempfile::TempDir,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The control plane of this test binary, started on first use.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let script = repo_root().join("tests/harness/control-plane.sh");
        let bin = Command::new("bash").arg(&script).arg("bin").output().expect("run control-plane.sh bin");
        assert!(bin.status.success(), "building the control plane failed: {}", String::from_utf8_lossy(&bin.stderr));
        let bin = PathBuf::from(String::from_utf8(bin.stdout).unwrap().trim());
        let dir = tempfile::Builder::new().prefix("llmserve-cp-").tempdir().unwrap();
        let mut proc = Command::new("bash")
            .arg(&script)
            .arg("up")
            .arg(dir.path())
            .arg(std::process::id().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start control plane");
        let stdout = proc.stdout.take().unwrap();
        let mut kubeconfig = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(path) = line.strip_prefix("ready ") {
                kubeconfig = Some(PathBuf::from(path));
                break;
            }
        }
        let kubeconfig = kubeconfig.expect("control plane did not become ready; see its log above");
        ControlPlane { kubeconfig, bin, _proc: proc, _dir: dir }
    })
}

/// A client for this test's runtime.
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = control_plane();
    let kc = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

async fn apply_crd(client: &Client, crd: CustomResourceDefinition) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(&name, &PatchParams::apply("llmserve-tests").force(), &Patch::Apply(&crd)).await.unwrap();
    eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let crd = api.get(&name).await.ok()?;
            let est = crd.status?.conditions?.into_iter().any(|c| c.type_ == "Established" && c.status == "True");
            est.then_some(())
        }
    })
    .await
    .expect("CRD established");
}

/// Installs the checked-in LlmApplication CRD (the file users apply, not the in-memory one).
pub async fn install_llmapp_crd(client: &Client) {
    let yaml = std::fs::read_to_string(repo_root().join("crds/llmapplications.yaml")).unwrap();
    apply_crd(client, serde_yaml::from_str(&yaml).unwrap()).await;
}

/// Installs prometheus-operator's ServiceMonitor CRD, fetched by the harness at a pinned version.
pub async fn install_service_monitor_crd(client: &Client) {
    let path = control_plane().bin.parent().unwrap().join("crds/monitoring.coreos.com_servicemonitors.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    apply_crd(client, serde_yaml::from_str(&yaml).unwrap()).await;
}

/// Creates a namespace for one test.
pub async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// The controller running in this process, watching one namespace; stops when dropped.
pub struct RunningController {
    handle: tokio::task::JoinHandle<()>,
    /// The metrics it records.
    pub metrics: Metrics,
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts the operator's controller on `ns`.
pub fn spawn_controller(client: &Client, ns: &str) -> RunningController {
    let metrics = Metrics::new();
    let reporter = Reporter { controller: "llmserve-operator".into(), instance: Some(format!("test-{ns}")) };
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), reporter));
    let handle = tokio::spawn(controller::run(ctx, Some(ns.to_string()), 16, std::future::pending()));
    RunningController { handle, metrics }
}

/// Polls `f` every 100 ms until it returns `Some`, or `None` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a YAML fixture as JSON, with its name replaced.
pub fn fixture(name: &str, app_name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut v: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["metadata"]["name"] = app_name.into();
    v
}

/// Applies an LlmApplication the way `kubectl apply --server-side` does (strict field validation).
pub async fn apply_app(client: &Client, ns: &str, app: &serde_json::Value) -> Result<llmserve_operator::crd::LlmApplication, kube::Error> {
    let api: Api<llmserve_operator::crd::LlmApplication> = Api::namespaced(client.clone(), ns);
    let mut pp = PatchParams::apply("kubectl").force();
    pp.field_validation = Some(kube::api::ValidationDirective::Strict);
    api.patch(app["metadata"]["name"].as_str().unwrap(), &pp, &Patch::Apply(app)).await
}
