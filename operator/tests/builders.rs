//! Pure builders, validation, status and usage, from YAML fixtures; no cluster. The generated
//! alert rules are checked and unit-tested by Prometheus's own `promtool` (Debian package).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use llmserve_operator::build;
use llmserve_operator::crd::{AuthStatus, LlmApplication};
use llmserve_operator::status::{self, Cond, reasons, types};
use llmserve_operator::{usage, validate};

fn fixture(name: &str) -> LlmApplication {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut app: LlmApplication = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    app.metadata.namespace = Some("team-a".into());
    app.metadata.uid = Some("0000-uid".into());
    app
}

fn args_of(d: &Deployment) -> Vec<String> {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).map(|i| args[i + 1].clone())
}

#[test]
fn ray_example_deployment() {
    let app = fixture("ray-example.yaml");
    let m = &app.spec.models[0];
    let d = build::deployment(&app, m);
    assert_eq!(d.metadata.name.as_deref(), Some("ray-example--qwen-0-5b"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("team-a"));
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("LlmApplication", "ray-example", Some(true))
    );
    let labels = d.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["llmserve.dev/model-id"], "qwen-0.5b");
    assert_eq!(labels["app.kubernetes.io/instance"], "ray-example");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "llmserve-operator");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, None, "the HPA owns replicas of an autoscaled model");
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(llmserve_operator::crd::DEFAULT_IMAGE));
    let args = args_of(&d);
    assert_eq!(flag(&args, "--model").as_deref(), Some("Qwen/Qwen2.5-0.5B-Instruct"));
    assert_eq!(flag(&args, "--served-model-name").as_deref(), Some("qwen-0.5b"));
    assert_eq!(flag(&args, "--device").as_deref(), Some("cuda"));
    assert!(args.contains(&"--disable-engine-metrics".to_string()));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(res.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(pod.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"], "NVIDIA-A10G");
    assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("nvidia.com/gpu"));
    // Probes on /health, a named port, locked-down security.
    for p in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe] {
        assert_eq!(p.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/health"));
    }
    assert_eq!(c.ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
}

#[test]
fn ray_example_service_hpa_monitor_router() {
    let app = fixture("ray-example.yaml");
    let m = &app.spec.models[0];

    let s = build::service(&app, m);
    let ports: BTreeMap<_, _> =
        s.spec.as_ref().unwrap().ports.as_ref().unwrap().iter().map(|p| (p.name.clone().unwrap(), p.port)).collect();
    assert_eq!(ports, BTreeMap::from([("http".into(), 8000), ("metrics".into(), 9090)]));
    assert_eq!(s.spec.as_ref().unwrap().selector.as_ref().unwrap()["llmserve.dev/model-id"], "qwen-0.5b");

    let h = build::hpa(&app, m).expect("autoscaling config gives an HPA");
    let hs = h.spec.unwrap();
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(1), 2));
    assert_eq!(hs.scale_target_ref.name, "ray-example--qwen-0-5b");
    let metric = &hs.metrics.unwrap()[0];
    assert_eq!(metric.type_, "Pods");
    let pods = metric.pods.as_ref().unwrap();
    assert_eq!(pods.metric.name, "llmserve_ongoing_requests");
    assert_eq!(pods.target.average_value.as_ref().unwrap().0, "2");
    let b = hs.behavior.unwrap();
    assert_eq!(b.scale_up.unwrap().stabilization_window_seconds, Some(30));
    assert_eq!(b.scale_down.unwrap().stabilization_window_seconds, Some(600));

    let sm = build::service_monitor(&app, Some(m));
    assert_eq!(sm.types.as_ref().unwrap().kind, "ServiceMonitor");
    assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm.data["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm.data["spec"]["selector"]["matchLabels"]["llmserve.dev/model-id"], "qwen-0.5b");
    let relabel = &sm.data["spec"]["endpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "llmserve_app", "the dashboards' application label");
    assert_eq!(relabel["sourceLabels"][0], "__meta_kubernetes_service_label_app_kubernetes_io_instance");
    let svc = build::service(&app, m);
    assert_eq!(
        svc.metadata.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
        "ray-example",
        "the label the relabeling reads"
    );

    let r = build::router_deployment(&app);
    assert_eq!(r.metadata.name.as_deref(), Some("ray-example-router"));
    let args = args_of(&r);
    assert_eq!(flag(&args, "--backend-service").as_deref(), Some("qwen-0.5b=ray-example--qwen-0-5b"));
    assert_eq!(flag(&args, "--namespace").as_deref(), Some("team-a"));
    let pod = r.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("ray-example-router"));
    let role = build::router_role(&app);
    let rule = &role.rules.as_ref().unwrap()[0];
    assert_eq!(
        (rule.resources.as_deref(), rule.verbs.as_slice()),
        (Some(&["endpointslices".to_string()][..]), &["get".to_string(), "list".into(), "watch".into()][..])
    );
    let binding = build::router_role_binding(&app);
    assert_eq!(binding.subjects.as_ref().unwrap()[0].name, "ray-example-router");
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    assert_eq!(flag(&args, "--route-prefix").as_deref(), Some("/"));
    assert_eq!(build::router_url(&app), "http://ray-example-router.team-a.svc:8000");
    assert_eq!(build::router_service(&app).spec.unwrap().selector.unwrap()["app.kubernetes.io/component"], "router");
}

#[test]
fn full_fixture_engine_kwargs_pvc_and_overrides() {
    let app = fixture("full.yaml");
    let (big, small) = (&app.spec.models[0], &app.spec.models[1]);

    let d = build::deployment(&app, big);
    let args = args_of(&d);
    assert_eq!(flag(&args, "--model").as_deref(), Some("/model-volume/llama-3-8b"));
    for (f, v) in [
        ("--max-model-len", "8192"),
        ("--max-num-seqs", "128"),
        ("--max-num-batched-tokens", "4096"),
        ("--tensor-parallel-size", "1"),
        ("--gpu-memory-utilization", "0.85"),
        ("--dtype", "bfloat16"),
        ("--block-size", "16"),
    ] {
        assert_eq!(flag(&args, f).as_deref(), Some(v), "{f}");
    }
    assert!(args.contains(&"--enable-prefix-caching".into()));
    assert!(!args.contains(&"--disable-engine-metrics".into()));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/llmserve-server:1.2.3"));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1", "GPUs follow tensorParallelSize");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "24Gi", "user resources override");
    let env: BTreeMap<_, _> =
        c.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.value.clone().unwrap())).collect();
    assert_eq!(env["RUST_LOG"], "debug", "user env replaces the default");
    let vols = pod.volumes.as_ref().unwrap();
    assert_eq!(
        vols.iter().find(|v| v.name == "model").unwrap().persistent_volume_claim.as_ref().unwrap().claim_name,
        "weights"
    );
    assert!(!vols.iter().any(|v| v.name == "dshm"), "shared memory only between tensor-parallel ranks");
    assert_eq!(pod.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"], "NVIDIA-H100-80GB-HBM3");
    let h = build::hpa(&app, big).unwrap().spec.unwrap();
    assert_eq!(h.metrics.unwrap()[0].pods.as_ref().unwrap().target.average_value.as_ref().unwrap().0, "1500m");

    let d = build::deployment(&app, small);
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    assert!(build::hpa(&app, small).is_none(), "a fixed replica count has no HPA");
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(pod.node_selector.is_none());
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/llmserve-server:cpu"));
    assert!(!c.resources.as_ref().unwrap().limits.as_ref().unwrap().contains_key("nvidia.com/gpu"));
    assert_eq!(flag(&args_of(&d), "--device").as_deref(), Some("cpu"));

    let r = build::router_deployment(&app);
    assert_eq!(r.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(flag(&args_of(&r), "--route-prefix").as_deref(), Some("/llm"));
    assert_eq!(build::router_url(&app), "http://full-router.team-a.svc:8000/llm");
}

#[test]
fn each_autoscaling_metric_becomes_its_pods_metric_and_target() {
    let cases = [
        ("{}", "llmserve_ongoing_requests", "2"),
        ("{metric: ongoingRequests, targetOngoingRequests: 3.5}", "llmserve_ongoing_requests", "3500m"),
        ("{metric: waitingRequests, targetWaitingRequests: 4}", "llmserve_waiting_requests", "4"),
        ("{metric: kvCacheUsage, targetKvCacheUsage: 0.8}", "llmserve_kv_cache_usage", "800m"),
        ("{metric: ttftP95, targetTtftP95Seconds: 0.25}", "llmserve_ttft_p95_seconds", "250m"),
        // Only an object stored before the CRD's rules lacks its target: a documented fallback.
        ("{metric: kvCacheUsage}", "llmserve_kv_cache_usage", "800m"),
    ];
    for (config, name, target) in cases {
        let mut app = fixture("ray-example.yaml");
        let mut auto: serde_yaml::Mapping = serde_yaml::from_str(config).unwrap();
        auto.insert("maxReplicas".into(), 4.into());
        auto.insert("upscaleDelaySeconds".into(), 5.into());
        auto.insert("downscaleDelaySeconds".into(), 90.into());
        let dc = app.spec.models[0].deployment_config.as_mut().unwrap();
        dc.autoscaling_config = Some(serde_yaml::from_value(auto.into()).unwrap());
        let hs = build::hpa(&app, &app.spec.models[0]).unwrap().spec.unwrap();
        let metrics = hs.metrics.unwrap();
        assert_eq!(metrics.len(), 1, "{config}");
        let pods = metrics[0].pods.as_ref().unwrap();
        assert_eq!((metrics[0].type_.as_str(), pods.metric.name.as_str()), ("Pods", name), "{config}");
        assert_eq!(pods.target.type_, "AverageValue", "{config}: a per-replica average");
        assert_eq!(pods.target.average_value.as_ref().unwrap().0, target, "{config}");
        assert_eq!((hs.min_replicas, hs.max_replicas), (Some(1), 4), "{config}");
        let b = hs.behavior.unwrap();
        assert_eq!(b.scale_up.unwrap().stabilization_window_seconds, Some(5), "{config}");
        assert_eq!(b.scale_down.unwrap().stabilization_window_seconds, Some(90), "{config}");
    }
    // Every name the HPA asks for is one the chart's prometheus-adapter rules serve.
    let path = format!("{}/../charts/llmserve/prometheus-adapter-values.yaml", env!("CARGO_MANIFEST_DIR"));
    let values: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let served: Vec<&str> =
        values["rules"]["custom"].as_sequence().unwrap().iter().map(|r| r["name"]["as"].as_str().unwrap()).collect();
    assert_eq!(
        served,
        [
            build::ONGOING_REQUESTS_METRIC,
            build::WAITING_REQUESTS_METRIC,
            build::KV_CACHE_USAGE_METRIC,
            build::TTFT_P95_METRIC
        ]
    );
}

// === the router's routing and auth settings ===

#[test]
fn router_flags_and_role_follow_the_routing_and_auth_settings() {
    let app = fixture("keys.yaml");
    let args = args_of(&build::router_deployment(&app));
    let tail = &args[args.iter().position(|a| a == "--backend-service").unwrap() + 2..];
    assert_eq!(
        tail,
        [
            "--routing-policy",
            "prefixHash",
            "--prefix-chars",
            "512",
            "--load-factor",
            "1.5",
            "--api-keys-secret",
            "keys.api-keys",
            "--tenant-limits",
            concat!(
                r#"{"default":{"requestsPerMinute":60,"tokensPerMinute":100000},"#,
                r#""tenants":{"batch_jobs.v2":{},"team-a":{"concurrentRequests":4}}}"#
            ),
        ]
    );
    assert_eq!(args, args_of(&build::router_deployment(&app)), "deterministic");
    let rules = build::router_role(&app).rules.unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    let secrets = &rules[1];
    assert_eq!(secrets.api_groups.as_deref(), Some(&["".to_string()][..]));
    assert_eq!(secrets.resources.as_deref(), Some(&["secrets".to_string()][..]));
    assert_eq!(secrets.resource_names.as_deref(), Some(&["keys.api-keys".to_string()][..]), "that Secret only");
    assert_eq!(secrets.verbs, ["get", "list", "watch"]);
    assert_eq!(app.spec.auth_status(), llmserve_operator::crd::AuthStatus::ApiKeys);

    // Nothing set: the argument list and the Role an app had before these settings existed (and
    // the shutdown delay every router gets).
    let plain = fixture("ray-example.yaml");
    assert_eq!(
        args_of(&build::router_deployment(&plain)),
        [
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--route-prefix",
            "/",
            "--namespace",
            "team-a",
            "--endpoint-port",
            "http",
            "--metrics-port",
            "9090",
            "--shutdown-delay-seconds",
            "5",
            "--backend-service",
            "qwen-0.5b=ray-example--qwen-0-5b",
        ]
    );
    let rules = build::router_role(&plain).rules.unwrap();
    assert_eq!(rules.len(), 1, "no Secret without API keys: {rules:?}");
    assert_eq!(plain.spec.auth_status(), llmserve_operator::crd::AuthStatus::None);

    // Only what is set becomes a flag.
    let mut some = fixture("keys.yaml");
    let router = some.spec.router.as_mut().unwrap();
    (router.policy, router.prefix_chars) = (Some(llmserve_operator::crd::RoutingPolicy::KvAware), None);
    some.spec.auth.as_mut().unwrap().limits = None;
    let args = args_of(&build::router_deployment(&some));
    assert_eq!(flag(&args, "--routing-policy").as_deref(), Some("kvAware"));
    assert_eq!(flag(&args, "--load-factor").as_deref(), Some("1.5"));
    assert!(!args.iter().any(|a| a == "--prefix-chars" || a == "--tenant-limits"), "{args:?}");
}

// === isolation: TLS, the metrics port, identities, the NetworkPolicy ===

#[test]
fn tls_mounts_the_secret_and_the_router_speaks_https_everywhere_it_is_named() {
    let mut app = fixture("ray-example.yaml");
    assert_eq!(build::router_url(&app), "http://ray-example-router.team-a.svc:8000");
    app.spec.tls = Some(llmserve_operator::crd::TlsConfig { secret_name: "router-cert".into() });
    let d = build::router_deployment(&app);
    let args = args_of(&d);
    assert_eq!(flag(&args, "--tls-cert-file").as_deref(), Some("/etc/llmserve/tls/tls.crt"));
    assert_eq!(flag(&args, "--tls-key-file").as_deref(), Some("/etc/llmserve/tls/tls.key"));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let vol = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "tls").expect("a tls volume");
    assert_eq!(vol.secret.as_ref().unwrap().secret_name.as_deref(), Some("router-cert"));
    let c = &pod.containers[0];
    let mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "tls").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), (build::TLS_PATH, Some(true)));
    for probe in [&c.readiness_probe, &c.liveness_probe] {
        assert_eq!(probe.as_ref().unwrap().http_get.as_ref().unwrap().scheme.as_deref(), Some("HTTPS"));
    }
    let svc = build::router_service(&app).spec.unwrap();
    let protocols: Vec<_> = svc.ports.unwrap().iter().map(|p| p.app_protocol.clone().unwrap()).collect();
    assert_eq!(protocols, ["https", "http"], "the API port says https; metrics stay plain");
    assert_eq!(build::router_url(&app), "https://ray-example-router.team-a.svc:8000");

    let plain = fixture("ray-example.yaml");
    let pod = build::router_deployment(&plain).spec.unwrap().template.spec.unwrap();
    assert!(!pod.volumes.unwrap().iter().any(|v| v.name == "tls"));
    assert_eq!(pod.containers[0].readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().scheme, None);
}

#[test]
fn metrics_have_their_own_port_and_replicas_their_own_tokenless_identity() {
    let mut app = fixture("ray-example.yaml");
    let model = &app.spec.models[0];
    let d = build::deployment(&app, model);
    assert_eq!(flag(&args_of(&d), "--metrics-port").as_deref(), Some("9090"));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let ports: Vec<_> =
        pod.containers[0].ports.as_ref().unwrap().iter().map(|p| (p.name.clone().unwrap(), p.container_port)).collect();
    assert_eq!(ports, [("http".to_string(), 8000), ("metrics".to_string(), 9090)]);
    let svc = build::service(&app, model).spec.unwrap();
    let targets: Vec<_> = svc.ports.unwrap().iter().map(|p| (p.port, p.target_port.clone().unwrap())).collect();
    assert_eq!(targets, [(8000, IntOrString::String("http".into())), (9090, IntOrString::String("metrics".into()))]);
    assert_eq!(pod.service_account_name.as_deref(), Some("ray-example-models"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let sa = build::models_service_account(&app);
    assert_eq!(
        (sa.metadata.name.as_deref(), sa.automount_service_account_token),
        (Some("ray-example-models"), Some(false))
    );

    // The cache and /tmp are bounded; a model may set its own cache bound.
    let limits = |d: &Deployment| -> BTreeMap<String, String> {
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.empty_dir.as_ref()?.size_limit.as_ref()?.0.clone())))
            .collect()
    };
    assert_eq!(limits(&d), BTreeMap::from([("cache".into(), "20Gi".into()), ("tmp".into(), "1Gi".into())]));
    app.spec.models[0].cache_size_limit = Some("500M".into());
    assert_eq!(limits(&build::deployment(&app, &app.spec.models[0]))["cache"], "500M");
}

#[test]
fn the_network_policy_admits_the_router_to_the_api_and_prometheus_to_metrics_only() {
    let app = fixture("ray-example.yaml");
    let peers = build::MetricsPeers::monitoring_prometheus();
    let np = build::network_policy(&app, &peers);
    assert_eq!(np.metadata.name.as_deref(), Some("ray-example-models"));
    let spec = np.spec.unwrap();
    let models = spec.pod_selector.unwrap().match_labels.unwrap();
    assert_eq!(models["app.kubernetes.io/instance"], "ray-example");
    assert_eq!(models["app.kubernetes.io/component"], "model");
    assert!(!models.contains_key("llmserve.dev/model-id"), "every model of the app");
    // Every model pod is selected by the policy's selector, the router's pods are not.
    let model_pod =
        build::deployment(&app, &app.spec.models[0]).spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert!(models.iter().all(|(k, v)| model_pod.get(k) == Some(v)));
    let router_pod = build::router_deployment(&app).spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert!(!models.iter().all(|(k, v)| router_pod.get(k) == Some(v)));
    assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);

    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 2);
    let port = |r: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
        r.ports.as_ref().unwrap().iter().map(|p| p.port.clone().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(port(&rules[0]), [IntOrString::String("http".into())]);
    let from = &rules[0].from.as_ref().unwrap()[0];
    assert!(from.namespace_selector.is_none(), "the app's own namespace");
    let routers = from.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert!(routers.iter().all(|(k, v)| router_pod.get(k) == Some(v)), "the app's router pods");
    assert!(!routers.iter().all(|(k, v)| model_pod.get(k) == Some(v)));

    assert_eq!(port(&rules[1]), [IntOrString::String("metrics".into())]);
    let from = &rules[1].from.as_ref().unwrap();
    assert_eq!(from.len(), 1, "one peer: those pods in those namespaces, not either");
    assert_eq!(from[0].namespace_selector.as_ref().unwrap().match_labels.as_ref(), Some(&peers.namespaces));
    assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels.as_ref(), Some(&peers.pods));

    // Empty label sets select everything of their kind.
    let any = build::network_policy(&app, &build::MetricsPeers::default()).spec.unwrap().ingress.unwrap();
    let peer = &any[1].from.as_ref().unwrap()[0];
    assert_eq!(peer.namespace_selector.as_ref().unwrap().match_labels, None);
    assert_eq!(peer.pod_selector.as_ref().unwrap().match_labels, None);
}

#[test]
fn metrics_selector_flags_parse_labels_and_refuse_nonsense() {
    use llmserve_operator::run::parse_labels;
    assert_eq!(parse_labels("").unwrap(), BTreeMap::new());
    assert_eq!(
        parse_labels("kubernetes.io/metadata.name=monitoring, app=prom").unwrap(),
        BTreeMap::from([("app".into(), "prom".into()), ("kubernetes.io/metadata.name".into(), "monitoring".into())])
    );
    assert_eq!(parse_labels("empty=").unwrap()["empty"], "");
    for bad in ["novalue", "=v", "k=v v", "Bad_Prefix/k=v", "k=é", "/k=v", "k/=v", &format!("k={}", "v".repeat(64))] {
        assert!(parse_labels(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn tenant_limits_json_holds_only_what_is_set() {
    use llmserve_operator::crd::{TenantLimits, TenantLimitsConfig};
    assert_eq!(build::tenant_limits_json(&TenantLimitsConfig::default()), None);
    let empty_default = TenantLimitsConfig { default: Some(TenantLimits::default()), ..Default::default() };
    assert_eq!(build::tenant_limits_json(&empty_default), None, "an empty default limits nothing");
    let tenants_only = TenantLimitsConfig {
        default: None,
        tenants: BTreeMap::from([(
            "a".into(),
            TenantLimits { tokens_per_minute: Some(4_294_967_296), ..Default::default() },
        )]),
    };
    assert_eq!(
        build::tenant_limits_json(&tenants_only).as_deref(),
        Some(r#"{"tenants":{"a":{"tokensPerMinute":4294967296}}}"#)
    );
}

#[test]
fn status_reports_auth_from_what_was_applied() {
    let observed =
        |auth| status::Observed { models: vec![], scale_reasons: vec![], router_url: "http://r".into(), auth };
    let now = t("2026-01-01T00:00:00Z");
    let on = status::next_status(None, &[], Some(1), Some(observed(AuthStatus::ApiKeys)), now.clone());
    assert_eq!(on.auth, Some(AuthStatus::ApiKeys));
    let kept = status::next_status(Some(&on), &[], Some(2), None, now.clone());
    assert_eq!(kept.auth, Some(AuthStatus::ApiKeys), "a spec not applied keeps what the router has");
    let off = status::next_status(Some(&kept), &[], Some(3), Some(observed(AuthStatus::None)), now);
    assert_eq!(off.auth, Some(AuthStatus::None));
    assert_eq!(serde_json::to_value(&off).unwrap()["auth"], "none", "the AUTH column's value");
}

#[test]
fn a_change_of_desired_replicas_is_a_scale_event_with_its_reason() {
    let model = |desired| llmserve_operator::crd::ModelStatus {
        model_id: "m".into(),
        replicas: 1,
        ready_replicas: 1,
        desired_replicas: desired,
        last_scale: None,
    };
    let observed = |desired, reason: &str| status::Observed {
        models: vec![model(desired)],
        scale_reasons: vec![reason.into()],
        router_url: "http://r".into(),
        auth: AuthStatus::None,
    };
    let first =
        status::next_status(None, &[], Some(1), Some(observed(1, "spec: numReplicas")), t("2026-01-01T00:00:00Z"));
    assert_eq!(first.models[0].last_scale, None, "a model seen for the first time has no event");
    let why = "HorizontalPodAutoscaler: llmserve_ttft_p95_seconds 840m per pod, target 500m";
    let up = status::next_status(Some(&first), &[], Some(1), Some(observed(2, why)), t("2026-01-01T00:01:00.25Z"));
    let event = up.models[0].last_scale.clone().expect("a scale event");
    assert_eq!((event.from, event.to, event.reason.as_str()), (1, 2, why));
    assert_eq!(event.time, "2026-01-01T00:01:00Z");
    // The HPA reports the metrics it scaled on a moment after scaling: the reason follows them
    // for a while, then stays.
    let why_later = "HorizontalPodAutoscaler: llmserve_ttft_p95_seconds 910m per pod, target 500m";
    let settled = status::next_status(Some(&up), &[], Some(1), Some(observed(2, why_later)), t("2026-01-01T00:01:20Z"));
    let event = settled.models[0].last_scale.clone().expect("the same event");
    assert_eq!(
        (event.from, event.to, event.reason.as_str(), event.time.as_str()),
        (1, 2, why_later, "2026-01-01T00:01:00Z")
    );
    let same = status::next_status(Some(&settled), &[], Some(1), Some(observed(2, "other")), t("2026-01-01T00:05:00Z"));
    assert_eq!(same.models[0].last_scale, Some(event), "an unchanged count keeps the last event");
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "a--m"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "a--m"},
            "maxReplicas": 3,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": "llmserve_kv_cache_usage"},
                "target": {"type": "AverageValue", "averageValue": "500m"},
            }}],
        },
        "status": {"desiredReplicas": 2, "currentMetrics": [{"type": "Pods", "pods": {
            "metric": {"name": "llmserve_kv_cache_usage"},
            "current": {"averageValue": "730m"},
        }}]},
    }))
    .unwrap();
    assert_eq!(
        status::scale_reason(Some(&hpa)),
        "HorizontalPodAutoscaler: llmserve_kv_cache_usage 730m per pod, target 500m"
    );
    assert_eq!(status::scale_reason(None), "spec: numReplicas");
}

#[test]
fn validation_catches_what_the_schema_cannot() {
    assert!(validate::validate(&fixture("ray-example.yaml")).is_empty());
    assert!(validate::validate(&fixture("full.yaml")).is_empty());

    // Long names are shortened with a hash, not refused.
    let mut app = fixture("ray-example.yaml");
    app.metadata.name = Some("a".repeat(63));
    app.spec.models[0].model_loading_config.model_id = format!("org/{}", "m".repeat(124));
    assert!(validate::validate(&app).is_empty());
    // Names the CRD refuses today, stored before it did.
    for name in ["a--b", "Upper", &"a".repeat(64)] {
        let mut app = fixture("ray-example.yaml");
        app.metadata.name = Some(name.into());
        let p = validate::validate(&app);
        assert!(p.iter().any(|p| p.field == "metadata.name"), "{name}: {p:?}");
    }

    let mut app = fixture("ray-example.yaml");
    let mut twin = app.spec.models[0].clone();
    twin.model_loading_config.model_id = "Qwen-0.5B".into();
    app.spec.models.push(twin);
    let p = validate::validate(&app);
    assert!(
        p.iter().any(|p| p.field == "spec.models[1].modelLoadingConfig.modelId" && p.message.contains("same objects")),
        "{p:?}"
    );

    // `<app>--router` is no router's name.
    let mut app = fixture("ray-example.yaml");
    app.spec.models[0].model_loading_config.model_id = "router".into();
    assert!(validate::validate(&app).is_empty());

    let mut app = fixture("ray-example.yaml");
    app.spec.models[0].model_loading_config.model_id = "🙂".into();
    let p = validate::validate(&app);
    assert!(p.iter().any(|p| p.message.contains("no ASCII letter or digit")), "{p:?}");

    let mut app = fixture("ray-example.yaml");
    app.spec.models[0].accelerator_type = None;
    app.spec.models[0].engine_kwargs =
        Some(llmserve_operator::crd::EngineKwargs { tensor_parallel_size: Some(2), ..Default::default() });
    let p = validate::validate(&app);
    assert!(p.iter().any(|p| p.field.ends_with("tensorParallelSize")), "{p:?}");
}

fn t(s: &str) -> Time {
    Time(s.parse().unwrap())
}

#[test]
fn conditions_keep_transition_time_when_unchanged() {
    let first = status::merge_conditions(
        &[],
        &[Cond::new(types::READY, false, reasons::REPLICAS_NOT_READY, "waiting")],
        Some(1),
        t("2026-01-01T00:00:00Z"),
    );
    let same = status::merge_conditions(
        &first,
        &[Cond::new(types::READY, false, reasons::REPLICAS_NOT_READY, "still waiting")],
        Some(2),
        t("2026-01-01T00:05:00Z"),
    );
    assert_eq!(same[0].last_transition_time, t("2026-01-01T00:00:00Z"));
    assert_eq!(same[0].message, "still waiting");
    assert_eq!(same[0].observed_generation, Some(2));
    let flipped = status::merge_conditions(
        &same,
        &[Cond::new(types::READY, true, reasons::ALL_REPLICAS_READY, "ok")],
        Some(2),
        t("2026-01-01T00:09:00Z"),
    );
    assert_eq!(flipped[0].last_transition_time, t("2026-01-01T00:09:00Z"));
    // A type not mentioned survives.
    let both = status::merge_conditions(
        &flipped,
        &[Cond::new(types::DEGRADED, false, reasons::AS_EXPECTED, "")],
        Some(2),
        t("2026-01-01T00:10:00Z"),
    );
    assert_eq!(both.len(), 2);
}

fn deployment_with(desired: i32, ready: i32, failure: bool) -> Deployment {
    let app = fixture("ray-example.yaml");
    let mut d = build::deployment(&app, &app.spec.models[0]);
    d.metadata.generation = Some(1);
    d.spec.as_mut().unwrap().replicas = Some(desired);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(desired),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        updated_replicas: Some(desired),
        conditions: failure.then(|| {
            vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    d
}

#[test]
fn rollout_conditions_follow_deployments() {
    let ready =
        status::rollout_conditions(&[("m".into(), deployment_with(2, 2, false))], &deployment_with(1, 1, false));
    assert!(ready.iter().any(|c| c.type_ == types::READY && c.status));
    let waiting =
        status::rollout_conditions(&[("m".into(), deployment_with(2, 1, false))], &deployment_with(1, 1, false));
    assert!(waiting.iter().any(|c| c.type_ == types::READY && !c.status && c.message.contains("model m")));
    assert!(waiting.iter().any(|c| c.type_ == types::PROGRESSING && c.status));
    let failed =
        status::rollout_conditions(&[("m".into(), deployment_with(2, 0, true))], &deployment_with(1, 1, false));
    assert!(
        failed.iter().any(|c| c.type_ == types::DEGRADED && c.status && c.message.contains("ProgressDeadlineExceeded"))
    );
    let ms = status::model_status("m", &deployment_with(3, 2, false));
    assert_eq!((ms.replicas, ms.ready_replicas, ms.desired_replicas), (3, 2, 3));
    assert_eq!(status::replicas_summary(&[ms]), "2/3");
}

#[test]
fn usage_report_aggregates_ray_facts() {
    let apps = [fixture("ray-example.yaml"), fixture("full.yaml")];
    let r = usage::collect(&apps);
    assert_eq!((r.num_applications, r.num_models), (2, 3));
    assert!(r.serves_multiple_models && r.serves_multiple_apps);
    let qwen = &r.models[0];
    assert_eq!(
        (qwen.gpu_type.as_str(), qwen.num_gpus, qwen.autoscaling, qwen.min_replicas, qwen.max_replicas),
        ("A10G", 1, true, 1, 2)
    );
    assert_eq!(qwen.architecture, "unknown");
    let llama = &r.models[1];
    assert_eq!(
        (llama.architecture.as_str(), llama.tensor_parallel_size, llama.num_gpus, llama.initial_replicas),
        ("LlamaForCausalLM", 1, 1, 3)
    );
    assert_eq!((llama.lora, llama.lora_initial_adapters), (false, 0));
    let stories = &r.models[2];
    assert_eq!(
        (stories.gpu_type.as_str(), stories.num_gpus, stories.autoscaling, stories.min_replicas),
        ("none", 0, false, 3)
    );

    let m = llmserve_operator::metrics::Metrics::new();
    usage::export(&m, &r);
    let text = m.render();
    let info = concat!(
        r#"llmserve_usage_info{accelerator_type="A10G",architecture="unknown",autoscaling="true","#,
        r#"lora="false",tensor_parallel_size="1"} 1"#
    );
    assert!(text.contains(info), "{text}");
    assert!(text.contains(r#"llmserve_usage_applications{kind="models"} 3"#));
}

#[test]
fn checked_in_crd_is_fresh() {
    let path = llmserve_test_support::crd_path();
    let on_disk = std::fs::read_to_string(&path).expect("the chart's CRD exists");
    assert!(
        on_disk == llmserve_operator::crd_yaml(),
        "{} is stale: run `cargo run -p llmserve-operator --bin crdgen > charts/llmserve/crds/llmapplications.yaml`",
        path.display()
    );
}

// === alerts ===

fn promtool(args: &[&str], dir: &std::path::Path) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package `prometheus`) on PATH");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn generated_alerts_fire_when_slos_break_and_stay_quiet_otherwise() {
    let app = fixture("slo.yaml");
    let rule = build::prometheus_rule(&app);
    assert_eq!(rule.metadata.name.as_deref(), Some("shop-slo"));
    assert_eq!(rule.metadata.owner_references.as_ref().unwrap()[0].name, "shop");
    let mut groups = build::rule_groups(&app);
    let names: Vec<(String, String)> = groups[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["labels"]["model"].as_str().unwrap().to_string(), r["alert"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(names.iter().filter(|(m, _)| m == "chat").count(), 5, "every SLO of chat: {names:?}");
    assert_eq!(
        names.iter().filter(|(m, _)| m == "quiet").map(|(_, a)| a.as_str()).collect::<Vec<_>>(),
        ["LlmserveErrorRateHigh"],
        "engine metrics off: only the error rate"
    );

    let readme =
        std::fs::read_to_string(format!("{}/../README.md", env!("CARGO_MANIFEST_DIR"))).unwrap().to_lowercase();
    for r in groups[0]["rules"].as_array_mut().unwrap() {
        let a = r["annotations"].take();
        assert!(
            a["summary"].as_str().is_some_and(|s| !s.is_empty())
                && a["description"].as_str().is_some_and(|s| !s.is_empty())
        );
        let anchor = a["runbook_url"].as_str().unwrap().rsplit('#').next().unwrap().to_string();
        assert!(readme.contains(&format!("#### {anchor}")), "README has no runbook heading for {anchor}");
        r.as_object_mut().unwrap().remove("annotations"); // promtool compares them verbatim; checked above
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slo-rules.yaml"),
        serde_yaml::to_string(&serde_json::json!({"groups": groups})).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        format!("{}/tests/fixtures/slo-alerts.test.yaml", env!("CARGO_MANIFEST_DIR")),
        dir.path().join("slo-alerts.test.yaml"),
    )
    .unwrap();
    promtool(&["check", "rules", "slo-rules.yaml"], dir.path());
    let out = promtool(&["test", "rules", "slo-alerts.test.yaml"], dir.path());
    println!("{out}");

    // The full rule (annotations included) is valid too.
    std::fs::write(
        dir.path().join("full.yaml"),
        serde_yaml::to_string(&serde_json::json!({"groups": build::rule_groups(&app)})).unwrap(),
    )
    .unwrap();
    promtool(&["check", "rules", "full.yaml"], dir.path());
}

// === the binaries accept what the operator writes ===

/// The container's command and arguments, as the binary's `argv`.
fn argv(d: &Deployment) -> Vec<String> {
    let c = &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect()
}

/// Every argument list the operator generates is parsed by the serving and routing binaries' own
/// parsers, so a flag one side renames or drops fails here, not in a crash-looping pod.
#[test]
fn generated_argument_lists_parse_with_the_binaries_own_parsers() {
    use clap::Parser;
    for file in ["ray-example.yaml", "full.yaml", "slo.yaml", "keys.yaml"] {
        let app = fixture(file);
        for model in &app.spec.models {
            let argv = argv(&build::deployment(&app, model));
            assert_eq!(argv[0], "llmserve-server");
            if let Err(e) = llmserve_server::args::Args::try_parse_from(&argv) {
                panic!("{file}: llmserve-server refuses {argv:?}: {e}");
            }
        }
        let argv = argv(&build::router_deployment(&app));
        assert_eq!(argv[0], "llmserve-router");
        let args = llmserve_router::args::Args::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{file}: llmserve-router refuses {argv:?}: {e}"));
        // The flags' values the router checks after parsing, the way it checks them.
        if let Some(json) = &args.tenant_limits {
            llmserve_router::tenants::LimitsConfig::parse(json)
                .unwrap_or_else(|e| panic!("{file}: llmserve-router refuses --tenant-limits {json}: {e}"));
        }
        assert!(args.prefix_chars >= 1 && args.load_factor >= 1.0, "{file}: {argv:?}");
        if file == "keys.yaml" {
            let limits = llmserve_router::tenants::LimitsConfig::parse(args.tenant_limits.as_deref().unwrap()).unwrap();
            assert_eq!(limits.default.requests_per_minute, Some(60));
            assert_eq!(limits.tenants["team-a"].concurrent_requests, Some(4));
            assert_eq!((args.routing_policy.as_str(), args.prefix_chars, args.load_factor), ("prefixHash", 512, 1.5));
            assert_eq!(
                (args.api_keys_secret.as_deref(), args.namespace.as_deref()),
                (Some("keys.api-keys"), Some("team-a"))
            );
        }
    }
}
