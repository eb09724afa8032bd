//! The plan of `hostile_specs.rs`: seeded hostile text, and 200 applications each built to end
//! one way, with the objects to make before them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ApiResource;
use llmserve_operator::build::{
    model_object_name, prometheus_rule_name, prometheus_rule_resource, router_name, service_monitor_resource,
};
use proptest::prelude::Rng;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

const APPS: usize = 200;
/// Where the applications go.
pub const NAMESPACES: [&str; 2] = ["hostile-a", "hostile-b"];
/// Owner name of objects that claim to belong to an LlmApplication that is not there.
const GHOST: &str = "ghost\n\u{202e}🙂 app";

// === seeded text ===

/// Characters that break naive text handling: bidi overrides, joiners, combining marks, control
/// characters (C0, and DEL and C1, which YAML refuses raw), astral-plane emoji, right-to-left
/// scripts. None of them is printable ASCII, which an environment variable's name may hold.
const SPICE: &[&str] = &[
    "\u{202e}",
    "\u{200d}",
    "\u{feff}",
    "\u{301}",
    "\u{0}",
    "\u{7}",
    "\u{1b}[31m",
    "\t",
    "\n",
    "\r\n",
    "🙂",
    "👩\u{200d}💻",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "日本語",
    "עברית",
    "العربية",
    "\u{2028}",
    "\u{7f}\u{85}\u{9b}\u{ffff}",
];
/// Quotes and shell syntax, for free text.
const QUOTES: &str = "\"'`$(){}\\%s";
const ACCELERATORS: &[&str] = &["A10G", "L4", "L40S", "A100-40G", "A100-80G", "H100", "H200", "none"];

/// Seeded choices and strings (proptest's regex generation on a ChaCha generator).
pub struct Gen {
    runner: TestRunner,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        let mut bytes = [0u8; 32];
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64).to_le_bytes());
        }
        Gen { runner: TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)) }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.runner.rng().next_u64() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }

    /// A string matching `pattern`.
    fn re(&mut self, pattern: &str) -> String {
        proptest::string::string_regex(pattern).unwrap().new_tree(&mut self.runner).unwrap().current()
    }

    /// `s` with a hostile character or two put in somewhere.
    fn spiced(&mut self, s: &str) -> String {
        let mut chars: Vec<String> = s.chars().map(String::from).collect();
        for _ in 0..1 + self.below(2) {
            let at = self.below(chars.len() + 1);
            chars.insert(at, self.pick(SPICE).to_string());
        }
        chars.concat()
    }

    /// Free text: arbitrary Unicode, sometimes long, always with something hostile in it.
    fn text(&mut self, max: usize) -> String {
        let base = match self.below(4) {
            0 => self.re(&format!("\\PC{{0,{max}}}")),
            1 => self.re(&format!("[\\s\\S]{{0,{max}}}")),
            2 => format!("{}{QUOTES}", self.re("[a-zA-Z0-9 ]{0,20}")),
            _ => self.re("[a-zA-Z0-9 ]{0,20}"),
        };
        self.spiced(&base)
    }

    /// A DNS-1035 label without `--`, often the full 63 characters.
    fn app_name(&mut self) -> String {
        let s = match self.below(4) {
            0 => self.re("[a-z][a-z0-9]{62}"),
            1 => self.re("[a-z]([a-z0-9]{1,7}-){7}[a-z0-9]{8}"),
            _ => self.re("[a-z]([a-z0-9]|-[a-z0-9]){0,20}"),
        };
        s.get(..63.min(s.len())).unwrap().trim_end_matches('-').to_string()
    }

    /// A model id the CRD admits: up to 128 characters, some ending in punctuation.
    fn model_id(&mut self) -> String {
        match self.below(4) {
            0 => self.re("[A-Za-z0-9][A-Za-z0-9._:/-]{127}"),
            1 => self.re("[A-Za-z0-9][A-Za-z0-9._:/-]{0,20}[._:/-]"),
            _ => self.re("[A-Za-z0-9][A-Za-z0-9._:/-]{0,40}"),
        }
    }

    fn model_source(&mut self) -> String {
        match self.below(3) {
            // `[^\s]` of the CRD is RE2's ASCII whitespace; anything else goes.
            0 => format!("/{}", self.re("[^\\s]{0,80}")),
            1 => self.re("pvc://[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(/[^\\s]{0,60})?"),
            _ => self.re("[A-Za-z0-9][A-Za-z0-9._-]{0,30}(/[A-Za-z0-9._-]{1,30})?"),
        }
    }

    /// An image: the API server takes any text (even with whitespace at an end).
    fn image(&mut self) -> String {
        self.text(60)
    }

    fn env(&mut self) -> Value {
        let mut names = BTreeSet::new();
        let vars: Vec<Value> = (0..self.below(6))
            .filter_map(|_| {
                let name = self.re("[A-Za-z_][A-Za-z0-9_]{0,30}");
                names.insert(name.clone()).then(|| json!({"name": name, "value": self.text(200)}))
            })
            .collect();
        json!(vars)
    }

    /// A valid model, with random valid text in every free-form field.
    fn model(&mut self, id: &str) -> Value {
        let mut m = json!({"modelLoadingConfig": {"modelId": id}});
        if self.chance(60) {
            m["modelLoadingConfig"]["modelSource"] = json!(self.model_source());
        }
        if self.chance(60) {
            m["acceleratorType"] = json!(self.pick(ACCELERATORS));
        }
        match self.below(3) {
            0 => {}
            1 => m["deploymentConfig"] = json!({"numReplicas": 1 + self.below(4)}),
            _ => m["deploymentConfig"] = self.autoscaling(),
        }
        if self.chance(40) {
            m["engineKwargs"] = json!({
                "maxModelLen": 1 + self.below(100_000), "dtype": self.pick(&["auto", "float16", "bfloat16"]),
                "blockSize": self.pick(&[8, 16, 32, 64, 128]), "gpuMemoryUtilization": 0.5,
            });
        }
        if self.chance(60) {
            m["env"] = self.env();
        }
        if self.chance(40) {
            m["image"] = json!(self.image());
        }
        if self.chance(20) {
            // What is set replaces what acceleratorType implies, key by key.
            let (cpu, memory) = (format!("{}m", 1 + self.below(999)), format!("{}Mi", 1 + self.below(999)));
            m["resources"] =
                json!({"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}});
        }
        if self.chance(30) {
            m["slo"] = json!({"ttftP95Seconds": 1.5, "queueLengthMax": self.below(1000)});
        }
        if self.chance(30) {
            m["logEngineMetrics"] = json!(self.chance(50));
        }
        m
    }

    fn autoscaling(&mut self) -> Value {
        let min = 1 + self.below(3);
        let max = min + self.below(4);
        json!({"autoscalingConfig": {
            "minReplicas": min, "maxReplicas": max, "initialReplicas": min + self.below(max - min + 1),
            "targetOngoingRequests": 0.5 + self.below(100) as f64,
        }})
    }

    /// A valid application of `models` (ids with distinct slugs).
    fn app(&mut self, ns: &str, name: &str, ids: &[String]) -> Value {
        let annotations: BTreeMap<String, String> =
            (0..self.below(3)).map(|_| (self.re("[a-z]{1,8}\\.example/[a-z]{1,10}"), self.text(300))).collect();
        let models: Vec<Value> = ids.iter().map(|id| self.model(id)).collect();
        let mut app = json!({
            "apiVersion": "llmserve.dev/v1alpha1", "kind": "LlmApplication",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": {"models": models},
        });
        if self.chance(30) {
            app["spec"]["image"] = json!(self.image());
        }
        if self.chance(40) {
            app["spec"]["routePrefix"] = json!(self.re("/[A-Za-z0-9._~/-]{0,127}"));
        }
        if self.chance(30) {
            app["spec"]["router"] = json!({"replicas": 1 + self.below(3)});
        }
        if self.chance(30) {
            app["spec"]["router"]["policy"] = json!(self.pick(&["leastOutstanding", "prefixHash", "kvAware"]));
            if self.chance(50) {
                app["spec"]["router"]["prefixChars"] = json!(1 + self.below(1_000_000));
            }
            if self.chance(50) {
                app["spec"]["router"]["loadFactor"] = json!(1.0 + self.below(9900) as f64 / 100.0);
            }
        }
        if self.chance(30) {
            app["spec"]["auth"] = self.auth();
        }
        if self.chance(30) {
            app["spec"]["observability"] = json!({"enabled": self.chance(50)});
        }
        app
    }

    /// API keys from a Secret of any valid name, often with limits for tenants of any valid name.
    fn auth(&mut self) -> Value {
        let secret = self.re("[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,3}");
        let mut auth = json!({"apiKeys": {"secretRef": {"name": secret}}});
        if self.chance(60) {
            let default = self.limits();
            let tenants: BTreeMap<String, Value> =
                (0..self.below(4)).map(|_| (self.re("[-._a-zA-Z0-9]{1,40}"), self.limits())).collect();
            auth["limits"] = json!({"default": default, "tenants": tenants});
        }
        auth
    }

    /// One tenant's limits, each set or not.
    fn limits(&mut self) -> Value {
        let mut l = json!({});
        for key in ["requestsPerMinute", "tokensPerMinute", "concurrentRequests"] {
            if self.chance(50) {
                l[key] = json!(1 + self.below(4_294_967_295));
            }
        }
        l
    }

    /// 1 to 3 model ids with distinct slugs.
    fn model_ids(&mut self) -> Vec<String> {
        let mut slugs = BTreeSet::new();
        (0..1 + self.below(3))
            .map(|_| self.model_id())
            .filter(|id| slugs.insert(llmserve_operator::build::slug(id)))
            .collect()
    }
}

// === what each application is built to do ===

#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The API server refuses the create with a message naming this.
    Refused(String),
    /// `InvalidSpec` naming this field.
    InvalidSpec(String),
    /// `NameConflict` naming this object (`Kind name`) and this owner.
    NameConflict(String, &'static str),
    /// `ApplyFailed` on this model Deployment.
    ApplyFailed(String),
    /// Every child applied, status caught up.
    Served,
}

impl Expect {
    pub fn label(&self) -> &'static str {
        match self {
            Expect::Refused(_) => "refused",
            Expect::InvalidSpec(_) => "InvalidSpec",
            Expect::NameConflict(..) => "NameConflict",
            Expect::ApplyFailed(_) => "ApplyFailed",
            Expect::Served => "served",
        }
    }
}

pub struct Case {
    pub ns: &'static str,
    pub app: Value,
    pub expect: Expect,
    /// What was done to it, for failure messages.
    pub what: String,
    /// Objects with its labels but not its own stand beside it.
    pub decoy: bool,
}

impl Case {
    pub fn name(&self) -> &str {
        self.app["metadata"]["name"].as_str().unwrap()
    }
}

/// An object made before the applications: (resource, namespace, body).
pub struct Foreign {
    pub resource: ApiResource,
    pub ns: &'static str,
    pub body: Value,
}

/// Unique valid names per namespace.
struct Names(BTreeMap<&'static str, BTreeSet<String>>);

impl Names {
    fn fresh(&mut self, g: &mut Gen, ns: &'static str) -> String {
        loop {
            let n = g.app_name();
            if self.0.entry(ns).or_default().insert(n.clone()) {
                return n;
            }
        }
    }

    fn take(&mut self, ns: &'static str, name: &str) -> bool {
        self.0.entry(ns).or_default().insert(name.to_string())
    }
}

/// The API resource of one of [`KINDS`].
pub fn resource_of(kind: &str) -> ApiResource {
    match kind {
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "HorizontalPodAutoscaler" => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        "ServiceMonitor" => service_monitor_resource(),
        "PrometheusRule" => prometheus_rule_resource(),
        other => panic!("no resource {other}"),
    }
}

/// Every kind an application's children come in.
pub const KINDS: &[&str] = &[
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ServiceMonitor",
    "PrometheusRule",
];

/// A minimal valid `kind` named `name`, with `labels`, owned by the ghost app or by nobody.
fn foreign(ns: &'static str, kind: &str, name: &str, ghost: bool, labels: Value) -> Foreign {
    let spec = match kind {
        "Deployment" => json!({"spec": {
            "selector": {"matchLabels": {"foreign": "yes"}},
            "template": {"metadata": {"labels": {"foreign": "yes"}},
                         "spec": {"containers": [{"name": "c", "image": "theirs:1"}]}},
        }}),
        "Service" => json!({"spec": {"ports": [{"port": 80}]}}),
        "HorizontalPodAutoscaler" => json!({"spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, "maxReplicas": 2,
        }}),
        "Role" => json!({"rules": []}),
        "RoleBinding" => json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"}}),
        "ServiceMonitor" => json!({"spec": {"selector": {}, "endpoints": []}}),
        "PrometheusRule" => json!({"spec": {"groups": []}}),
        _ => json!({}),
    };
    let resource = resource_of(kind);
    let mut body = json!({
        "apiVersion": resource.api_version, "kind": kind,
        "metadata": {"name": name, "namespace": ns, "labels": labels},
    });
    body.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
    if ghost {
        body["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "llmserve.dev/v1alpha1", "kind": "LlmApplication", "name": GHOST,
            "uid": "00000000-0000-0000-0000-00000000dead", "controller": true,
        }]);
    }
    Foreign { resource, ns, body }
}

/// A copy of a valid app whose one defect the API server refuses, and what its message names.
fn refused(g: &mut Gen, names: &mut Names, ns: &'static str) -> (Value, String, String) {
    let name = names.fresh(g, ns);
    let ids = g.model_ids();
    let mut app = g.app(ns, &name, &ids);
    let m = g.below(ids.len());
    let model = &mut app["spec"]["models"][m];
    let (what, field) = match g.below(20) {
        0 => {
            let (a, b) = (g.app_name(), g.app_name());
            app["metadata"]["name"] = json!(format!("{}--{}", &a[..a.len().min(30)], &b[..b.len().min(30)]));
            ("a name with --", "metadata.name")
        }
        1 => {
            app["metadata"]["name"] = json!(g.re("[a-z][a-z0-9]{63,120}"));
            ("a name over 63 characters", "metadata.name")
        }
        2 => {
            app["metadata"]["name"] = json!(g.spiced(&name));
            ("a name with Unicode", "metadata.name")
        }
        3 => {
            app["metadata"]["name"] = json!(g.re("[0-9][a-z0-9]{0,10}|[a-z]{1,5}[A-Z][a-z]{0,5}"));
            ("a name no DNS-1035 label", "metadata.name")
        }
        4 => {
            model["modelLoadingConfig"]["modelId"] = json!(g.spiced("model"));
            ("a modelId with Unicode", "modelId")
        }
        5 => {
            model["modelLoadingConfig"]["modelId"] = json!(g.re("[A-Za-z0-9][A-Za-z0-9._:/-]{128,200}"));
            ("a modelId over 128 characters", "modelId")
        }
        6 => {
            model["modelLoadingConfig"]["modelId"] = json!(g.re("[-._:/][A-Za-z0-9]{0,20}"));
            ("a modelId starting in punctuation", "modelId")
        }
        7 => {
            model["modelLoadingConfig"]["modelSource"] = json!(format!("/models/{} x", g.text(20)));
            ("a modelSource with whitespace", "modelSource")
        }
        8 => {
            app["spec"]["routePrefix"] = json!(g.spiced("v1"));
            ("a routePrefix not a path", "routePrefix")
        }
        9 => {
            model["image"] = json!(if g.chance(50) { String::new() } else { "i".repeat(513) });
            ("an empty or overlong image", "image")
        }
        10 => {
            model["acceleratorType"] = json!(g.text(20));
            ("an unknown acceleratorType", "acceleratorType")
        }
        11 => {
            let env: Vec<Value> = (0..65).map(|i| json!({"name": format!("V{i}"), "value": "x"})).collect();
            model["env"] = json!(env);
            ("65 env entries", "env")
        }
        12 => {
            model["loraConfig"] = json!({"dynamicLoraLoadingPath": g.text(40)});
            ("a loraConfig", "loraConfig")
        }
        13 => {
            model["engineKwargs"] = json!({"dtype": g.text(10)});
            ("an unknown dtype", "dtype")
        }
        14 => {
            app["metadata"]["labels"] = json!({"team": g.spiced("a")});
            ("a label value with Unicode", "metadata.labels")
        }
        15 => {
            let twin = app["spec"]["models"][m].clone();
            app["spec"]["models"].as_array_mut().unwrap().push(twin);
            ("a modelId twice", "modelId must be unique")
        }
        16 => {
            app["spec"]["router"] = json!({"policy": g.text(12)});
            ("an unknown routing policy", "spec.router.policy")
        }
        17 => {
            app["spec"]["auth"] = json!({"apiKeys": {"secretRef": {"name": g.spiced("keys")}}});
            ("a Secret name with Unicode", "spec.auth.apiKeys.secretRef.name")
        }
        18 => {
            let tenants = json!({g.spiced("team"): {"concurrentRequests": 1}});
            app["spec"]["auth"] = json!({"apiKeys": {"secretRef": {"name": "keys"}}, "limits": {"tenants": tenants}});
            ("a tenant name with Unicode", "spec.auth.limits.tenants")
        }
        _ => {
            model["engineKwargs"] = json!({"tensorParallelSize": 2});
            ("tensorParallelSize 2", "tensorParallelSize")
        }
    };
    (app, field.to_string(), what.to_string())
}

/// Every application of one run, and the objects to make before them.
pub fn plan(g: &mut Gen) -> (Vec<Case>, Vec<Foreign>) {
    let mut names = Names(BTreeMap::new());
    let mut cases = Vec::new();
    let mut objects = Vec::new();
    let ns = |i: usize| NAMESPACES[i % NAMESPACES.len()];
    let mut i = 0;

    // Names that met under `<app>-<slug>`: `a` + `b-c` and `a-b` + `c`; `x` + `y-router` and `x-y`.
    while cases.len() < 24 {
        let n = ns(i);
        i += 1;
        let (a, b, c) = (g.re("[a-z][a-z0-9]{0,8}"), g.re("[a-z0-9]{1,8}"), g.re("[a-z0-9]{1,8}"));
        let (first, second, id1, id2) = if g.chance(50) {
            (a.clone(), format!("{a}-{b}"), format!("{b}-{c}"), c)
        } else {
            (a.clone(), format!("{a}-{b}"), format!("{b}-router"), g.model_id())
        };
        if !(names.take(n, &first) && names.take(n, &second)) {
            continue;
        }
        for (app, id) in [(first, id1), (second, id2)] {
            let body = g.app(n, &app, &[id]);
            cases.push(Case {
                ns: n,
                app: body,
                expect: Expect::Served,
                what: "a name that met once".into(),
                decoy: false,
            });
        }
    }
    // Two 63-character names with one long head: their routers are shortened, and still differ.
    while cases.len() < 34 {
        let n = ns(i);
        i += 1;
        let head = g.re("[a-z][a-z0-9]{57}");
        let (first, second) = (format!("{head}{}", g.re("[a-z0-9]{5}")), format!("{head}{}", g.re("[a-z0-9]{5}")));
        if !(names.take(n, &first) && names.take(n, &second)) {
            continue;
        }
        for app in [first, second] {
            let ids = g.model_ids();
            let body = g.app(n, &app, &ids);
            cases.push(Case {
                ns: n,
                app: body,
                expect: Expect::Served,
                what: "a 63-character name".into(),
                decoy: false,
            });
        }
    }
    for _ in 0..32 {
        let n = ns(i);
        i += 1;
        let (app, field, what) = refused(g, &mut names, n);
        cases.push(Case { ns: n, app, expect: Expect::Refused(field), what, decoy: false });
    }
    // Two ids the CRD's uniqueness rule lets through, with one slug.
    for _ in 0..12 {
        let n = ns(i);
        i += 1;
        let name = names.fresh(g, n);
        let (p, q) = (g.re("[a-z][a-z0-9]{0,10}"), g.re("[a-z0-9]{1,10}"));
        let ids = [format!("{p}-{q}"), format!("{}/{}", p.to_uppercase(), q)];
        let body = g.app(n, &name, &ids);
        let expect = Expect::InvalidSpec("spec.models[1].modelLoadingConfig.modelId".into());
        cases.push(Case { ns: n, app: body, expect, what: "two ids with one slug".into(), decoy: false });
    }
    // A child the API server refuses though the CRD admits it.
    for _ in 0..16 {
        let n = ns(i);
        i += 1;
        let name = names.fresh(g, n);
        let ids = g.model_ids();
        let mut app = g.app(n, &name, &ids);
        let m = g.below(ids.len());
        let model = &mut app["spec"]["models"][m];
        let what = match g.below(6) {
            0 => {
                model["env"] = json!([{"name": g.spiced("VAR"), "value": "1"}]);
                "an env name with Unicode"
            }
            1 => {
                model["env"] = json!([{"name": "A=B", "value": "1"}]);
                "an env name with ="
            }
            2 => {
                model["env"] = json!([{"name": "TWICE", "value": g.text(10)}, {"name": "TWICE", "value": "2"}]);
                "an env name twice"
            }
            3 => {
                model["resources"] = json!({"requests": {"cpu": g.text(10)}});
                "a quantity that is text"
            }
            4 => {
                model["resources"] = json!({"limits": {g.spiced("gpu"): "1"}});
                "a resource name with Unicode"
            }
            _ => {
                model["resources"] = json!({"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "1"}});
                "a request above its limit"
            }
        };
        // Earlier models apply; this one's Deployment is refused.
        let expect = Expect::ApplyFailed(model_object_name(&name, &ids[m]));
        cases.push(Case { ns: n, app, expect, what: what.into(), decoy: false });
    }
    // An object at a name the app wants, made outside llmserve or owned by another LlmApplication.
    for _ in 0..20 {
        let n = ns(i);
        i += 1;
        let name = names.fresh(g, n);
        let ids = g.model_ids();
        let mut app = g.app(n, &name, &ids);
        let model = model_object_name(&name, &ids[0]);
        let router = router_name(&name);
        let (kind, at) = match g.below(8) {
            0 => ("Deployment", model),
            1 => ("Service", model),
            2 => {
                app["spec"]["models"][0]["deploymentConfig"] = g.autoscaling();
                ("HorizontalPodAutoscaler", model)
            }
            3 => ("Deployment", router),
            4 => ("Service", router),
            5 => ("ServiceAccount", router),
            6 => {
                app["spec"]["observability"] = json!({"enabled": true});
                ("ServiceMonitor", model)
            }
            _ => {
                app["spec"]["observability"] = json!({"enabled": true});
                ("PrometheusRule", prometheus_rule_name(&name))
            }
        };
        let ghost = g.chance(50);
        objects.push(foreign(n, kind, &at, ghost, json!({})));
        let owner = if ghost { "LlmApplication ghost" } else { "made outside llmserve" };
        let expect = Expect::NameConflict(format!("{kind} {at}"), owner);
        let what = format!("a {} {kind} at its name", if ghost { "ghost-owned" } else { "foreign" });
        cases.push(Case { ns: n, app, expect, what, decoy: false });
    }
    while cases.len() < APPS {
        let n = ns(i);
        i += 1;
        let name = names.fresh(g, n);
        let ids = g.model_ids();
        let app = g.app(n, &name, &ids);
        // Objects with the app's labels but not its children: pruning must leave them be. No app
        // name has `--`, so neither has this name, and no child of any app is named so.
        let decoy = format!("{}-decoy", name[..name.len().min(40)].trim_end_matches('-'));
        let with_decoy = g.chance(15) && names.take(n, &decoy);
        if with_decoy {
            let labels = json!({
                "app.kubernetes.io/instance": name, "app.kubernetes.io/managed-by": "llmserve-operator",
                "app.kubernetes.io/component": "model",
            });
            let kind = g.pick(&["Deployment", "Service", "ServiceMonitor"]);
            objects.push(foreign(n, kind, &decoy, g.chance(50), labels));
        }
        cases.push(Case { ns: n, app, expect: Expect::Served, what: "random valid text".into(), decoy: with_decoy });
    }
    (cases, objects)
}
