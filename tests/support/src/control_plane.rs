//! A real etcd + kube-apiserver, one per test binary, started on first use.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::{crd_path, eventually, repo_root};

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

/// An admin client for this test's runtime.
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = control_plane();
    let kc = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

/// Applies a CRD and waits until it is established.
pub async fn apply_crd(client: &Client, crd: CustomResourceDefinition) {
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
    let yaml = std::fs::read_to_string(crd_path()).unwrap();
    apply_crd(client, serde_yaml::from_str(&yaml).unwrap()).await;
}

/// Installs one of prometheus-operator's CRDs (`servicemonitors`, `prometheusrules`), fetched by
/// the harness at a pinned version.
pub async fn install_monitoring_crd(client: &Client, plural: &str) {
    let path = control_plane().bin.parent().unwrap().join(format!("crds/monitoring.coreos.com_{plural}.yaml"));
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
