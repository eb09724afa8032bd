"""The Helm chart: lint, snapshot, server-side dry runs on the real test API server, RBAC proven
by running the operator as the chart's ServiceAccount (and failing without any one rule on
applications), watching all namespaces (a ClusterRole) and one (a Role there), and the
prometheus-adapter rule against real Prometheus and real servers."""

import asyncio
import copy
import json
import os
import re
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from llmserve_testing import procs
from llmserve_testing.net import get
from llmserve_testing.paths import CHART, ROOT, RULES
from llmserve_testing.prometheus import Prometheus

HERE = Path(__file__).parent
SNAPSHOT = HERE / "snapshot-default.yaml"
NS = "llmserve-system"
MONITORING = [
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
]


def helm_run(*args):
    exe = (
        Path(
            subprocess.run(
                ["bash", str(ROOT / "tests/harness/helm.sh")], check=True, capture_output=True, text=True
            ).stdout.strip()
        )
        / "helm"
    )
    return subprocess.run([str(exe), *args], capture_output=True, text=True)


def helm(*args):
    r = helm_run(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def render(*extra, release="llmserve", namespace=NS):
    return helm("template", release, str(CHART), "--namespace", namespace, *MONITORING, *extra)


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def test_lint():
    out = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out
    helm("lint", str(CHART), "--strict", "-f", str(HERE / "values-all.yaml"))


def test_snapshot_of_the_default_render():
    text = render()
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.read_text() == text, (
        "the chart renders differently: review, then UPDATE_SNAPSHOT=1 pytest tests/chart -k snapshot"
    )


def test_bad_values_are_refused_with_a_clear_message():
    r = helm_run("template", "x", str(CHART), "--set", "operator.concurrency=0")
    assert r.returncode != 0 and "/operator/concurrency" in r.stderr, r.stderr
    for bad in ('{"Team_/x": "a"}', '{"team": "a,b=c"}', '{"team": "-a"}', '{"team": 1}'):
        r = helm_run("template", "x", str(CHART), "--set-json", f"networkPolicy.prometheus.podSelector={bad}")
        assert r.returncode != 0 and "/networkPolicy/prometheus/podSelector" in r.stderr, (bad, r.stderr)


def test_network_policy_values_become_the_operators_flags():
    def flags(*extra):
        names = ("--network-policy=", "--metrics-namespace-selector=", "--metrics-pod-selector=")
        return [a for a in operator_args(render(*extra)) if a.startswith(names)]

    assert flags() == [
        "--network-policy=true",
        "--metrics-namespace-selector=kubernetes.io/metadata.name=monitoring",
        "--metrics-pod-selector=app.kubernetes.io/name=prometheus",
    ]
    # Keys sorted; Helm merges maps into the defaults, so a default key set to null is dropped, and
    # an empty map selects everything.
    values = {
        "enabled": False,
        "prometheus": {
            "namespaceSelector": {"team": "obs", "example.com/tier": "a-1", "kubernetes.io/metadata.name": None},
            "podSelector": {"app.kubernetes.io/name": None},
        },
    }
    assert flags("--set-json", f"networkPolicy={json.dumps(values)}") == [
        "--network-policy=false",
        "--metrics-namespace-selector=example.com/tier=a-1,team=obs",
        "--metrics-pod-selector=",
    ]


def test_the_render_is_locked_down():
    d = {(x["kind"], x["metadata"]["name"]): x for x in docs(render())}
    dep = d[("Deployment", "llmserve")]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    watching = {(x["kind"], x["metadata"]["name"]): x for x in docs(render("--set", "operator.watchNamespace=team-a"))}
    for role in [x for x in [*d.values(), *watching.values()] if x["kind"] in ("ClusterRole", "Role")]:
        for rule in role["rules"]:
            wild = "*" in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert not wild, f"{role['kind']} {role['metadata']['name']} has a wildcard: {rule}"
    # Watching one namespace, the ClusterRole's rules are a Role there instead.
    assert watching[("Role", "llmserve-applications")]["metadata"]["namespace"] == "team-a"
    assert watching[("Role", "llmserve-applications")]["rules"] == d[("ClusterRole", "llmserve")]["rules"]
    assert ("ClusterRole", "llmserve") not in watching and ("ClusterRoleBinding", "llmserve") not in watching
    cms = [x for (k, n), x in d.items() if k == "ConfigMap" and "dashboard" in n]
    assert len(cms) == 2 and all(x["metadata"]["labels"]["grafana_dashboard"] == "1" for x in cms)
    rule = d[("PrometheusRule", "llmserve")]
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == re.findall(r"- alert: (\w+)", RULES.read_text())
    adapter = yaml.safe_load(d[("ConfigMap", "llmserve-prometheus-adapter")]["data"]["config.yaml"])
    assert [r["name"]["as"] for r in adapter["rules"]] == list(adapter_rules()), "the ConfigMap holds every rule"


# === against the real API server ===


@pytest.fixture(scope="module")
def cluster(control_plane):
    """The control plane with the chart's CRD (the fixture applies it) and the Prometheus Operator's."""
    cp = control_plane
    crds = cp.bin.parent / "crds"
    for kind in ("servicemonitors", "prometheusrules"):
        cp.apply_crd(crds / f"monitoring.coreos.com_{kind}.yaml")
    for ns in (NS, "team-a", "monitoring"):
        cp.kubectl("create", "namespace", ns)
    return cp


@pytest.mark.parametrize("values", ["default", "all"])
def test_server_side_dry_run(cluster, values):
    text = render() if values == "default" else render("-f", str(HERE / "values-all.yaml"))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        out = cluster.kubectl("apply", "--dry-run=server", "-f", f.name)
    print(out)
    assert out.count("(server dry run)") == len(docs(text))


APP = """
apiVersion: llmserve.dev/v1alpha1
kind: LlmApplication
metadata: {name: shop}
spec:
  models:
    - modelLoadingConfig: {modelId: chat, modelSource: /models/chat}
      deploymentConfig:
        autoscalingConfig: {minReplicas: 1, maxReplicas: 3, initialReplicas: 2}
      slo: {ttftP95Seconds: 1}
    - modelLoadingConfig: {modelId: extra, modelSource: /models/extra}
  auth:
    apiKeys: {secretRef: {name: shop-keys}}
"""


def sa_kubeconfig(cp, sa, namespace=NS):
    token = cp.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").strip()
    kc = yaml.safe_load(Path(cp.kubeconfig).read_text())
    kc["users"] = [{"name": sa, "user": {"token": token}}]
    kc["contexts"][0]["context"]["user"] = sa
    path = Path(tempfile.mkdtemp(prefix="llmserve-sa-")) / "kubeconfig"
    path.write_text(yaml.safe_dump(kc))
    return str(path)


def operator_args(rendered, *overrides):
    """The operator's flags from the rendered Deployment (run_operator picks the metrics port),
    each `--flag=value` of `overrides` in place of the chart's."""
    dep = next(d for d in docs(rendered) if d["kind"] == "Deployment")
    args = list(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    names = {o.split("=", 1)[0] for o in overrides}
    return [a for a in args if a.split("=", 1)[0] not in names] + list(overrides)


def watch_operator(op, deadline, what, check):
    """Waits until `check()` holds; None then, else what went wrong: the operator exited, met a
    forbidden error (the first one it logged), or time ran out."""
    while time.time() < deadline:
        log = op.log_text()
        if op.process.poll() is not None:
            return f"the operator exited: {log[-1500:]}"
        if "forbidden" in log:
            line = next(x for x in log.splitlines() if "forbidden" in x)
            m = re.search(r'cannot (\w+) resource \\*"([\w/.]+)\\*"', line)
            if m:
                return f"forbidden: cannot {m.group(1)} {m.group(2)}"
            # RBAC's escalation check: a Role may grant only what its writer holds.
            m = re.search(r"applying (\w+ [\w.-]+) failed: .*attempting to grant RBAC permissions", line)
            if m:
                return f"forbidden: cannot grant in {m.group(1)} what it does not hold"
            return "forbidden: " + line[:400]
        try:
            if check():
                return None
        except RuntimeError:
            pass
        time.sleep(0.3)
    return f"timed out waiting for {what}"


def has(cp, ns, kind, name):
    return cp.kubectl("get", kind, name, "-n", ns, "--ignore-not-found", "-o", "name").strip() != ""


def scenario(cp, ns, op, timeout):
    """The operator's write path in `ns` (which exists): apply an app, change it (prune a model,
    turn observability off). Returns None on success, else what went wrong."""
    cp.kubectl("apply", "-n", ns, "-f", "-", stdin=APP)
    deadline = time.time() + timeout
    children = [
        ("deployment", "shop--chat"),
        ("deployment", "shop--extra"),
        ("service", "shop--chat"),
        ("hpa", "shop--chat"),
        ("servicemonitor", "shop--chat"),
        ("servicemonitor", "shop-router"),
        ("prometheusrule", "shop-slo"),
        ("serviceaccount", "shop-router"),
        ("serviceaccount", "shop-models"),
        ("networkpolicy", "shop-models"),
        ("role", "shop-router"),
        ("rolebinding", "shop-router"),
    ]
    err = watch_operator(op, deadline, "every child", lambda: all(has(cp, ns, k, n) for k, n in children))
    err = err or watch_operator(
        op,
        deadline,
        "status",
        lambda: (
            "Applied" in cp.kubectl("get", "events", "-n", ns, "-o", "jsonpath={.items[*].reason}")
            and cp.kubectl("get", "llmapp", "shop", "-n", ns, "-o", "jsonpath={.status.observedGeneration}") == "1"
        ),
    )
    if err:
        return err
    app = yaml.safe_load(APP)
    app["spec"]["models"] = app["spec"]["models"][:1]
    app["spec"]["observability"] = {"enabled": False}
    cp.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(app))
    gone = [
        ("deployment", "shop--extra"),
        ("servicemonitor", "shop--chat"),
        ("servicemonitor", "shop-router"),
        ("prometheusrule", "shop-slo"),
    ]
    return watch_operator(op, deadline, "pruning", lambda: not any(has(cp, ns, k, n) for k, n in gone))


def policy_off(cp, ns, op, timeout):
    """The rest of the write path, for an operator started with `--network-policy=false` after
    `scenario`: it deletes the app's NetworkPolicy. None on success, else what went wrong."""
    deadline = time.time() + timeout
    return watch_operator(
        op, deadline, "the NetworkPolicy deleted", lambda: not has(cp, ns, "networkpolicy", "shop-models")
    )


def run_operator(name, kubeconfig, args, namespace=NS):
    """The operator with the chart's flags, its metrics on a free port instead; not waited for."""
    args = [a for a in args if not a.startswith("--metrics-addr")]
    env = {"POD_NAMESPACE": namespace, "POD_NAME": "llmserve-0", "RUST_LOG": "info,kube=warn"}
    return procs.operator(name, kubeconfig, *args, env=env, health=None)


def write_path(cp, ns, kubeconfig, rendered, name, timeout, namespace=NS):
    """`scenario`, then `policy_off`, each with an operator of its own (no leader election)."""
    args = operator_args(rendered, "--leader-election=false")
    with run_operator(name, kubeconfig, args, namespace) as op:
        err = scenario(cp, ns, op, timeout)
    if err:
        return err
    args = operator_args(rendered, "--leader-election=false", "--network-policy=false")
    with run_operator(f"{name}-off", kubeconfig, args, namespace) as op:
        return policy_off(cp, ns, op, timeout)


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def rbac_docs(rendered, namespace=None):
    """The render's ServiceAccount, Roles, ClusterRoles and bindings; with `namespace`, those in it."""
    return [
        d for d in docs(rendered) if d["kind"] in RBAC_KINDS and namespace in (None, d["metadata"].get("namespace"))
    ]


def apply_docs(cp, ds):
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump_all(ds))
    time.sleep(1)  # the authorizer's informer catches up


def rule_name(rule):
    return f"{','.join(rule['apiGroups']) or 'core'} {','.join(rule['resources'])} [{','.join(rule['verbs'])}]"


def each_rule_is_needed(role, attempt):
    """Runs `attempt(i, cut)` for each rule of `role`, `cut` being `role` without rule `i`; each
    attempt must meet a forbidden error."""
    print(f"\n| {role['kind']} {role['metadata']['name']}: rule removed | what the operator met |\n|---|---|")
    for i, rule in enumerate(role["rules"]):
        cut = copy.deepcopy(role)
        del cut["rules"][i]
        err = attempt(i, cut)
        print(f"| {rule_name(rule)} | {(err or 'nothing').splitlines()[0][:160]} |")
        assert err is not None, f"the operator did not need {rule_name(rule)} of {role['kind']}"
        assert err.startswith("forbidden"), f"without {rule_name(rule)}, not a forbidden error: {err}"


def granted(cp, kubeconfig, namespace):
    """What the API server lets the user of `kubeconfig` do in `namespace` (a SelfSubjectRulesReview):
    every (apiGroup, resource, resourceName, verb) and every (nonResourceURL, verb)."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    args = ("--kubeconfig", kubeconfig, "create", "--validate=false", "-f", "-", "-o", "json")
    out = cp.kubectl(*args, stdin=yaml.safe_dump(review))
    status = yaml.safe_load(out)["status"]
    rules = {
        (g, r, n, v)
        for rule in status.get("resourceRules", [])
        for g in rule.get("apiGroups", [""])
        for r in rule.get("resources", [])
        for n in rule.get("resourceNames", ["*"])
        for v in rule["verbs"]
    }
    return rules | {
        (u, v) for rule in status.get("nonResourceRules", []) for u in rule["nonResourceURLs"] for v in rule["verbs"]
    }


def cluster_wide(cp, kubeconfig):
    """What the chart grants `kubeconfig`'s user in a namespace it has no Role in, that is
    cluster-wide, beyond what every authenticated user may do (a ServiceAccount bound to nothing)."""
    if not has(cp, NS, "serviceaccount", "nobody"):
        cp.kubectl("create", "serviceaccount", "nobody", "-n", NS)
    return granted(cp, kubeconfig, "team-a") - granted(cp, sa_kubeconfig(cp, "nobody"), "team-a")


def full_run(cp, ns, kubeconfig, rendered, namespace, release):
    """The write path with the operator as the chart runs it (leader election and usage data on):
    no forbidden error anywhere, the usage data and the Lease written with the chart's Role, the
    NetworkPolicy admitting the chart's Prometheus; then the policy deleted with it off."""
    with run_operator("operator", kubeconfig, operator_args(rendered), namespace) as op:
        err = scenario(cp, ns, op, timeout=60)
        assert err is None, f"{err}\n{op.log_text()[-3000:]}"
        metrics = get(f"{op.url}/metrics")[1].decode()
        assert 'llmserve_operator_reconcile_errors_total{reason="forbidden"} 0' in metrics
        assert "llmserve_usage_applications" in metrics, "usage data was written with the chart's Role"
        assert cp.kubectl("get", "configmap", "llmserve-usage-stats", "-n", namespace, "-o", "name").strip()
        lease = cp.kubectl("get", "lease", release, "-n", namespace, "-o", "jsonpath={.spec.holderIdentity}")
        assert lease == "llmserve-0"
    policy = cp.get("networkpolicy", "shop-models", "-n", ns)
    prometheus = policy["spec"]["ingress"][1]["from"][0]
    assert prometheus == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }, "the chart's networkPolicy.prometheus reaches the policy"
    args = operator_args(rendered, "--network-policy=false")
    with run_operator("operator-off", kubeconfig, args, namespace) as op:
        err = policy_off(cp, ns, op, timeout=30)
        assert err is None, f"{err}\n{op.log_text()[-3000:]}"


def test_rbac_is_exactly_what_the_operator_needs(cluster):
    cp = cluster
    rendered = render()
    rbac = rbac_docs(rendered)
    apply_docs(cp, rbac)
    kubeconfig = sa_kubeconfig(cp, "llmserve")
    cp.kubectl("create", "namespace", "rbac-full")
    full_run(cp, "rbac-full", kubeconfig, rendered, NS, "llmserve")

    # Each ClusterRole rule is needed: without it the same write path meets a forbidden error.
    def attempt(i, cut):
        apply_docs(cp, [cut])
        ns = f"rbac-cut-{i}"
        cp.kubectl("create", "namespace", ns)
        return write_path(cp, ns, kubeconfig, rendered, f"operator-cut{i}", timeout=30)

    role = next(d for d in rbac if d["kind"] == "ClusterRole")
    try:
        each_rule_is_needed(role, attempt)
    finally:
        apply_docs(cp, [role])


def test_rbac_watching_one_namespace_is_a_role_there(cluster):
    """With operator.watchNamespace, the operator works with a Role in that namespace (and the one
    in its own), usage data on or off, each rule of it needed, and nothing cluster-wide granted."""
    cp = cluster
    release, namespace = "llmserve-ns", "llmserve-ns-system"
    cp.kubectl("create", "namespace", namespace)

    def watching(ns, *extra):
        """The chart watching `ns` (created here)."""
        cp.kubectl("create", "namespace", ns)
        return render("--set", f"operator.watchNamespace={ns}", *extra, release=release, namespace=namespace)

    rendered = watching("rbac-ns-full")
    rbac = rbac_docs(rendered)
    apply_docs(cp, rbac)
    assert [d for d in rbac if "namespace" not in d["metadata"]] == [], "nothing cluster-wide is rendered"
    kubeconfig = sa_kubeconfig(cp, release, namespace)
    assert cluster_wide(cp, kubeconfig) == set()
    full_run(cp, "rbac-ns-full", kubeconfig, rendered, namespace, release)

    # Each rule of the Role in the watched namespace is needed; each attempt watches a namespace of
    # its own, holding the Role without that rule.
    def attempt_role(i, cut):
        ns = f"rbac-ns-cut-{i}"
        r = watching(ns)
        cut["metadata"]["namespace"] = ns
        apply_docs(cp, [cut, *(d for d in rbac_docs(r, ns) if d["kind"] == "RoleBinding")])
        return write_path(cp, ns, kubeconfig, r, f"operator-ns-cut{i}", timeout=30, namespace=namespace)

    each_rule_is_needed(
        next(d for d in rbac if d["kind"] == "Role" and d["metadata"]["namespace"] != namespace), attempt_role
    )

    # Usage data off: the same, and the operator still works.
    rendered = watching("rbac-ns-no-usage", "--set", "usageStats.enabled=false")
    assert [d for d in rbac_docs(rendered) if "namespace" not in d["metadata"]] == []
    apply_docs(cp, rbac_docs(rendered))
    assert cluster_wide(cp, kubeconfig) == set()
    err = write_path(cp, "rbac-ns-no-usage", kubeconfig, rendered, "operator-ns-no-usage", 60, namespace=namespace)
    assert err is None, err


# === the prometheus-adapter rule ===


def adapter_rules():
    """{metric name the adapter serves: its rule}, from the values the chart ships."""
    rules = yaml.safe_load((CHART / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    return {r["name"]["as"]: r for r in rules}


def adapter_query(rule, namespace, pods):
    """The query prometheus-adapter sends for the pods of one HPA (its template, filled in)."""
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return rule["metricsQuery"].replace("<<.GroupBy>>", "pod").replace("<<.LabelMatchers>>", matchers)


def per_pod(prom, expr, at):
    """{pod: value} of an instant query."""
    return {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(expr, at=at)["data"]["result"]}


def test_adapter_rule_serves_running_plus_waiting_per_pod():
    rule = adapter_rules()["llmserve_ongoing_requests"]
    with ExitStack() as stack:
        # Two replicas of one model, one busy (1 running, 4 waiting) and one with engine metrics
        # off: the rule must give the first running + waiting, the second its requests in flight.
        busy = stack.enter_context(procs.server("busy", "--max-num-seqs", "1", served_model_name="m"))
        plain = stack.enter_context(
            procs.server("plain", "--disable-engine-metrics", "--max-num-seqs", "1", served_model_name="m")
        )
        common = {"namespace": "team-a", "llmserve_app": "shop"}
        prom = stack.enter_context(
            Prometheus(
                [("busy", busy.url, {**common, "pod": "shop-m-0"}), ("plain", plain.url, {**common, "pod": "shop-m-1"})]
            )
        )
        series_match = rule["seriesQuery"]

        async def load():
            body = {"model": "m", "prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": True}
            async with httpx.AsyncClient(timeout=120) as c:
                await asyncio.gather(
                    *(c.post(f"{busy.url}/v1/completions", json=body) for _ in range(5)),
                    *(c.post(f"{plain.url}/v1/completions", json=body) for _ in range(3)),
                )

        async def measure():
            task = asyncio.create_task(load())
            await asyncio.sleep(2.5)  # a few scrapes while all eight requests are in flight
            t = time.time() - 0.2
            got = {}
            q = adapter_query(rule, "team-a", ["shop-m-0", "shop-m-1"])
            res = prom.query(q, at=t)
            for r in res["data"]["result"]:
                got[r["metric"]["pod"]] = float(r["value"][1])
            direct = prom.query(
                'sum by (pod) (vllm:num_requests_running{pod="shop-m-0"})'
                ' + sum by (pod) (vllm:num_requests_waiting{pod="shop-m-0"})',
                at=t,
            )
            inflight = prom.query(
                'sum by (pod) (llmserve_http_requests_in_flight{pod="shop-m-1", route="/v1/completions"})', at=t
            )
            await task
            return got, direct, inflight

        got, direct, inflight = asyncio.run(measure())
        assert direct["data"]["result"] and inflight["data"]["result"], (got, direct, inflight)
        want_busy = float(direct["data"]["result"][0]["value"][1])
        want_plain = float(inflight["data"]["result"][0]["value"][1])
        print(
            f"\nllmserve_ongoing_requests: {got}; running + waiting of shop-m-0: {want_busy}; "
            f"in flight on shop-m-1: {want_plain}"
        )
        assert sorted(prom.label_values("pod", series_match)) == ["shop-m-0", "shop-m-1"], (
            "the rule's seriesQuery finds both pods"
        )
        assert got == {"shop-m-0": want_busy, "shop-m-1": want_plain}
        assert want_busy == 5.0 and want_plain == 3.0, "every request was ongoing when measured"


def quantile_of_buckets(q, buckets):
    """Prometheus's histogram_quantile of classic buckets {upper bound: cumulative count}."""
    bounds = sorted(buckets)
    total = buckets[float("inf")]
    if total == 0:
        return float("nan")
    rank = q * total
    i = next(i for i, b in enumerate(bounds) if buckets[b] >= rank)
    if bounds[i] == float("inf"):
        return bounds[-2]
    start, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], buckets[bounds[i - 1]])
    return start + (bounds[i] - start) * (rank - below) / (buckets[bounds[i]] - below)


def test_adapter_rules_serve_waiting_kv_cache_and_ttft_per_pod():
    rules = adapter_rules()
    pods = ["shop-m-0", "shop-m-1", "shop-m-2"]
    with ExitStack() as stack:
        # One busy replica (short requests answered, then 1 running + 3 waiting), one idle, one with
        # engine metrics off: each rule must give the busy and the idle replica what their raw
        # series say, and the replica without engine metrics nothing (rather than a made-up 0).
        busy = stack.enter_context(procs.server("busy", "--max-num-seqs", "1", served_model_name="m"))
        idle = stack.enter_context(procs.server("idle", served_model_name="m"))
        plain = stack.enter_context(procs.server("plain", "--disable-engine-metrics", served_model_name="m"))
        common = {"namespace": "team-a", "llmserve_app": "shop"}
        prom = stack.enter_context(
            Prometheus(
                [
                    (name, srv.url, {**common, "pod": pod})
                    for name, srv, pod in zip(["busy", "idle", "plain"], [busy, idle, plain], pods, strict=True)
                ]
            )
        )
        for rule in rules.values():
            assert sorted(prom.label_values("pod", rule["seriesQuery"])) == pods, rule["name"]["as"]

        async def measure():
            async with httpx.AsyncClient(timeout=120) as c:
                short = {"model": "m", "prompt": "Once upon a time", "max_tokens": 4}
                for _ in range(12):  # one at a time: first tokens spread over a few buckets
                    r = await c.post(f"{busy.url}/v1/completions", json=short)
                    assert r.status_code == 200, r.text
                long = {**short, "max_tokens": 500, "ignore_eos": True}
                task = asyncio.gather(*(c.post(f"{busy.url}/v1/completions", json=long) for _ in range(4)))
                await asyncio.sleep(2.5)  # a few scrapes while one request runs and three wait
                t = time.time() - 0.2
                got = {name: per_pod(prom, adapter_query(rule, "team-a", pods), t) for name, rule in rules.items()}
                raw = {
                    "waiting": per_pod(prom, 'vllm:num_requests_waiting{namespace="team-a"}', t),
                    "kv": per_pod(prom, 'vllm:kv_cache_usage_perc{namespace="team-a"}', t),
                }
                buckets = prom.query('vllm:time_to_first_token_seconds_bucket{pod="shop-m-0"}', at=t)
                await task
                return got, raw, buckets, t

        got, raw, buckets, t = asyncio.run(measure())
        counts = {float(r["metric"]["le"]): float(r["value"][1]) for r in buckets["data"]["result"]}
        want_ttft = quantile_of_buckets(0.95, counts)
        print(
            f"\nat {t:.1f}: {got}; raw waiting {raw['waiting']}, KV cache {raw['kv']}; "
            f"TTFT p95 from the buckets of shop-m-0 ({counts[float('inf')]:.0f} requests): {want_ttft}"
        )
        assert raw["waiting"]["shop-m-0"] == 3.0 and raw["kv"]["shop-m-0"] > 0, "one request ran and three waited"
        assert set(raw["waiting"]) == set(raw["kv"]) == {"shop-m-0", "shop-m-1"}, "engine metrics of two pods"
        assert got["llmserve_waiting_requests"] == raw["waiting"]
        assert got["llmserve_kv_cache_usage"] == raw["kv"]
        # The servers started within the last minute, so the 1m rate covers every first token
        # since the start, and its quantile is that of the raw cumulative buckets.
        assert counts[float("inf")] == 13.0, "every short request and the running long one observed once"
        ttft = got["llmserve_ttft_p95_seconds"]
        assert set(ttft) == {"shop-m-0", "shop-m-1"}, "no value without engine metrics"
        assert want_ttft > 0 and ttft["shop-m-0"] == pytest.approx(want_ttft, rel=1e-9)
        assert ttft["shop-m-1"] == 0.0, "a replica that served nothing counts as no latency, not NaN"
