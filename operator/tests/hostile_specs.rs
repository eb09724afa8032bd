//! 200 LlmApplications with hostile text in every free-form field, against the `llmserve-operator`
//! binary and a real API server (no kubelet, no controller-manager).
//!
//! Every application is built to end one way, and the test holds the operator to it: refused by
//! the API server naming the field; `InvalidSpec` from `validate.rs`; `NameConflict` on an object
//! made beforehand outside llmserve or owned by another LlmApplication; `ApplyFailed` where the API
//! server refuses a child; or served, with every child applied and status caught up. Names that met
//! under the old single-hyphen scheme (`a` + `b-c`, `a-b` + `c`) and 63-character names are among
//! the served. Throughout: the operator never exits or panics, nothing is owned by two
//! applications, what was made outside llmserve is untouched, and every status message and Event
//! note is one line.
//!
//! The text comes from a seeded generator: the seed is printed, and `LLMSERVE_HOSTILE_SEED=N`
//! replays a run.

mod hostile_plan;
mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hostile_plan::{Case, Expect, Gen, KINDS, NAMESPACES, plan, resource_of};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use llmserve_operator::build::{model_object_name, prometheus_rule_name, router_name};
use llmserve_operator::crd::LlmApplication;
use llmserve_test_support::process::free_port;
use serde_json::json;
use support::*;

/// How long every accepted application gets to reach what it was built for.
const SETTLE: Duration = Duration::from_secs(150);

// === the operator process ===

/// `llmserve-operator` watching every namespace, its output in a file; killed when dropped.
struct Operator {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start() -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_llmserve-operator"))
            .env("KUBECONFIG", &control_plane().kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .args(["--leader-election", "false", "--usage-stats", "false", "--log-format", "text"])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Operator { child, log, _dir: dir }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the end of the operator's output, if it exited or panicked.
    fn assert_healthy(&mut self) {
        let exited = self.child.try_wait().unwrap();
        let out = self.output();
        let tail: String =
            out.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        assert!(exited.is_none(), "the operator exited ({exited:?}):\n{tail}");
        assert!(!out.contains("panicked"), "the operator panicked:\n{tail}");
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === checks ===

fn condition(app: &LlmApplication, type_: &str) -> Option<(String, String, String)> {
    let c = app.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// (namespace, kind, name) of every object of the children's kinds: its controller's uid, and how
/// many LlmApplications its owner references name.
type Objects = BTreeMap<(String, String, String), (Option<String>, usize)>;

async fn objects(client: &Client) -> Objects {
    let mut all = Objects::new();
    for ns in NAMESPACES {
        for kind in KINDS {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource_of(kind));
            for o in api.list_metadata(&ListParams::default()).await.unwrap().items {
                let refs = o.metadata.owner_references.clone().unwrap_or_default();
                let controller = refs.iter().find(|r| r.controller == Some(true)).map(|r| r.uid.clone());
                let apps = refs.iter().filter(|r| r.kind == "LlmApplication").count();
                all.insert((ns.into(), kind.to_string(), o.name_any()), (controller, apps));
            }
        }
    }
    all
}

/// The children a served `app` must have: (kind, name).
fn children(app: &LlmApplication) -> Vec<(&'static str, String)> {
    let name = app.name_any();
    let observe = app.spec.observability_enabled();
    let mut out = Vec::new();
    for m in &app.spec.models {
        let n = model_object_name(&name, m.model_id());
        out.extend([("Deployment", n.clone()), ("Service", n.clone())]);
        if m.autoscaling().is_some() {
            out.push(("HorizontalPodAutoscaler", n.clone()));
        }
        if observe {
            out.push(("ServiceMonitor", n));
        }
    }
    let r = router_name(&name);
    for kind in ["Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"] {
        out.push((kind, r.clone()));
    }
    if observe {
        out.extend([("ServiceMonitor", r), ("PrometheusRule", prometheus_rule_name(&name))]);
    }
    out
}

/// `None` when `app` shows what `expect` says, else what is missing.
fn unmet(expect: &Expect, app: &LlmApplication, objects: &Objects) -> Option<String> {
    let one_line = |m: &str| !m.contains('\n') && !m.contains('\r') && m.len() <= 1024;
    for c in app.status.iter().flat_map(|s| &s.conditions) {
        assert!(
            one_line(&c.message),
            "{}: {} message is not one bounded line: {:?}",
            app.name_any(),
            c.type_,
            c.message
        );
    }
    let degraded = condition(app, "Degraded");
    let want_degraded = |reason: &str, needles: &[&str]| match &degraded {
        Some((s, r, m)) if s == "True" && r == reason && needles.iter().all(|n| m.contains(n)) => None,
        other => Some(format!("Degraded is {other:?}, want {reason} naming {needles:?}")),
    };
    match expect {
        Expect::Refused(_) => Some("stored, though it should have been refused".into()),
        Expect::InvalidSpec(field) => want_degraded("InvalidSpec", &[field]),
        Expect::NameConflict(object, owner) => want_degraded("NameConflict", &[object, owner]),
        Expect::ApplyFailed(child) => want_degraded("ApplyFailed", &[&format!("applying Deployment {child} failed")]),
        Expect::Served => {
            let Some(st) = app.status.as_ref() else { return Some("no status".into()) };
            if st.observed_generation != app.metadata.generation {
                return Some(format!(
                    "observedGeneration {:?}, conditions {:?}",
                    st.observed_generation, st.conditions
                ));
            }
            // No kubelet: nothing is ever ready, and nothing has failed.
            if condition(app, "Ready").map(|c| c.1) != Some("ReplicasNotReady".into())
                || condition(app, "Degraded").map(|c| c.0) != Some("False".into())
            {
                return Some(format!("conditions {:?}", st.conditions));
            }
            if st.auth != Some(app.spec.auth_status()) {
                return Some(format!("status.auth {:?} for spec.auth {:?}", st.auth, app.spec.auth));
            }
            let uid = app.uid();
            let ns = app.namespace().unwrap();
            let missing: Vec<String> = children(app)
                .into_iter()
                .filter(|(k, n)| objects.get(&(ns.clone(), k.to_string(), n.clone())).map(|o| &o.0) != Some(&uid))
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            (!missing.is_empty()).then(|| format!("children missing or not its own: {missing:?}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_hostile_applications() {
    let seed: u64 = match std::env::var("LLMSERVE_HOSTILE_SEED") {
        Ok(s) => s.parse().expect("LLMSERVE_HOSTILE_SEED is a number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    println!("seed {seed} (replay with LLMSERVE_HOSTILE_SEED={seed})");
    let started = Instant::now();
    let (cases, foreign_objects) = plan(&mut Gen::new(seed));

    let client = client().await;
    install_llmapp_crd(&client).await;
    install_service_monitor_crd(&client).await;
    install_prometheus_rule_crd(&client).await;
    for ns in NAMESPACES {
        namespace(&client, ns).await;
    }
    let mut made = BTreeMap::new();
    for f in &foreign_objects {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), f.ns, &f.resource);
        let obj: DynamicObject = serde_json::from_value(f.body.clone()).unwrap();
        let created = api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("{}: {e}", f.body));
        let key = (f.ns.to_string(), f.body["kind"].as_str().unwrap().to_string(), created.name_any());
        made.insert(key, (created.metadata.resource_version.clone(), created.metadata.owner_references.clone()));
    }
    let mut op = Operator::start();

    // (a) The API server refuses what the schema can tell, naming the field.
    let apps_resource = ApiResource::erase::<LlmApplication>(&());
    let mut accepted = Vec::new();
    for case in &cases {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), case.ns, &apps_resource);
        let obj: DynamicObject = serde_json::from_value(case.app.clone()).unwrap();
        match (api.create(&PostParams::default(), &obj).await, &case.expect) {
            (Err(kube::Error::Api(s)), Expect::Refused(field)) => {
                assert_eq!(s.code, 422, "{}: {s:?}", case.what);
                assert!(
                    s.message.contains(field.as_str()),
                    "{}: the message should name {field}: {}",
                    case.what,
                    s.message
                );
            }
            (Err(e), _) => panic!("{} ({}) was refused: {e}\n{:#}", case.name(), case.what, case.app),
            (Ok(_), Expect::Refused(field)) => {
                panic!("{} ({}) was stored; want {field} refused", case.name(), case.what)
            }
            (Ok(_), _) => accepted.push(case),
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        *counts.entry(case.expect.label()).or_default() += 1;
    }
    println!("{counts:?}; created in {:?}", started.elapsed());

    // (c) Every accepted application reaches what it was built for.
    settle(&client, &accepted, &mut op, seed).await;
    println!("settled in {:?}", started.elapsed());

    // A new spec prunes, and what only carries an app's labels stays: edit every app with decoys
    // beside it, and drop the last model of up to 10 apps.
    let (mut edited, mut dropped) = (0, Vec::new());
    for case in accepted.iter().filter(|c| c.expect == Expect::Served) {
        let models = case.app["spec"]["models"].as_array().unwrap();
        let drop = models.len() > 1 && dropped.len() < 10;
        let patch = if drop {
            let last = models.last().unwrap()["modelLoadingConfig"]["modelId"].as_str().unwrap();
            dropped.push((case.ns, model_object_name(case.name(), last)));
            json!({"spec": {"models": models[..models.len() - 1]}})
        } else if case.decoy {
            json!({"spec": {"router": {"replicas": 4}}})
        } else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), case.ns, &apps_resource);
        api.patch(case.name(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        edited += 1;
    }
    let objects = settle(&client, &accepted, &mut op, seed).await;
    for (ns, name) in &dropped {
        let left: Vec<_> = objects.keys().filter(|(n, _, o)| n == ns && o == name).collect();
        assert!(left.is_empty(), "the dropped model's children are still there: {left:?}");
    }
    println!("{edited} apps edited ({} dropped a model) and settled again in {:?}", dropped.len(), started.elapsed());

    // (d) Nothing is owned by two applications, and what was made beforehand is untouched.
    for (key, (_, apps)) in &objects {
        assert!(*apps <= 1, "{key:?} has {apps} LlmApplication owners");
    }
    for ((ns, kind, name), (rv, owners)) in &made {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource_of(kind));
        let now = api.get(name).await.unwrap_or_else(|e| panic!("{kind} {ns}/{name} is gone: {e}"));
        assert_eq!(&now.metadata.resource_version, rv, "{kind} {ns}/{name} was changed");
        assert_eq!(&now.metadata.owner_references, owners, "{kind} {ns}/{name} changed owners");
    }

    // (e) Every Event note is one line (status messages were checked while settling).
    for ns in NAMESPACES {
        let events = Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
        for e in events.items {
            let note = e.message.unwrap_or_default();
            assert!(!note.contains('\n') && !note.contains('\r') && note.len() <= 1024, "Event note: {note:?}");
        }
    }
    // (b) The operator ran throughout.
    op.assert_healthy();
    println!("done in {:?}", started.elapsed());
}

/// Waits until every case shows what it was built for, failing with the stuck ones after
/// [`SETTLE`]; returns the objects then.
async fn settle(client: &Client, cases: &[&Case], op: &mut Operator, seed: u64) -> Objects {
    let deadline = Instant::now() + SETTLE;
    loop {
        op.assert_healthy();
        let objects = objects(client).await;
        let mut apps = BTreeMap::new();
        for ns in NAMESPACES {
            let api: Api<LlmApplication> = Api::namespaced(client.clone(), ns);
            for a in api.list(&ListParams::default()).await.unwrap().items {
                apps.insert((ns, a.name_any()), a);
            }
        }
        let stuck: Vec<String> = cases
            .iter()
            .filter_map(|case| {
                let why = match apps.get(&(case.ns, case.name().to_string())) {
                    Some(app) => unmet(&case.expect, app, &objects)?,
                    None => "not stored".into(),
                };
                Some(format!("{}/{} ({}, {}): {why}", case.ns, case.name(), case.what, case.expect.label()))
            })
            .collect();
        if stuck.is_empty() {
            return objects;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} applications stuck after {SETTLE:?} (seed {seed}):\n{}",
            stuck.len(),
            cases.len(),
            stuck.join("\n")
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
