"""The Helm chart: lint, snapshot, server-side dry runs on the real test API server, RBAC proven
by running the operator as the chart's ServiceAccount (and failing without any one ClusterRole
rule), and the prometheus-adapter rule against real Prometheus and real servers."""

import asyncio
import copy
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


def render(*extra):
    return helm("template", "llmserve", str(CHART), "--namespace", NS, *MONITORING, *extra)


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
    for kind in ("ClusterRole", "Role"):
        for rule in d[(kind, "llmserve")]["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], f"{kind} has a wildcard: {rule}"
    cms = [x for (k, n), x in d.items() if k == "ConfigMap" and "dashboard" in n]
    assert len(cms) == 2 and all(x["metadata"]["labels"]["grafana_dashboard"] == "1" for x in cms)
    rule = d[("PrometheusRule", "llmserve")]
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == re.findall(r"- alert: (\w+)", RULES.read_text())
    adapter = yaml.safe_load(d[("ConfigMap", "llmserve-prometheus-adapter")]["data"]["config.yaml"])
    assert adapter["rules"][0]["name"]["as"] == "llmserve_ongoing_requests"


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


def sa_kubeconfig(cp, sa):
    token = cp.kubectl("create", "token", sa, "-n", NS, "--duration=1h").strip()
    kc = yaml.safe_load(Path(cp.kubeconfig).read_text())
    kc["users"] = [{"name": sa, "user": {"token": token}}]
    kc["contexts"][0]["context"]["user"] = sa
    path = Path(tempfile.mkdtemp(prefix="llmserve-sa-")) / "kubeconfig"
    path.write_text(yaml.safe_dump(kc))
    return str(path)


def operator_args(rendered, leader_election=True):
    """The operator's flags from the rendered Deployment (run_operator picks the metrics port)."""
    dep = next(d for d in docs(rendered) if d["kind"] == "Deployment")
    args = list(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    if not leader_election:
        args = [a for a in args if not a.startswith("--leader-election")] + ["--leader-election=false"]
    return args


def scenario(cp, ns, op, timeout):
    """The operator's whole write path: apply an app, change it (prune a model, turn observability
    off). Returns None on success, else what went wrong."""
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("apply", "-n", ns, "-f", "-", stdin=APP)
    deadline = time.time() + timeout

    def wait(what, check):
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

    def has(kind, name):
        return cp.kubectl("get", kind, name, "-n", ns, "--ignore-not-found", "-o", "name").strip() != ""

    children = [
        ("deployment", "shop--chat"),
        ("deployment", "shop--extra"),
        ("service", "shop--chat"),
        ("hpa", "shop--chat"),
        ("servicemonitor", "shop--chat"),
        ("servicemonitor", "shop-router"),
        ("prometheusrule", "shop-slo"),
        ("serviceaccount", "shop-router"),
        ("role", "shop-router"),
        ("rolebinding", "shop-router"),
    ]
    err = wait("every child", lambda: all(has(k, n) for k, n in children))
    err = err or wait(
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
    return wait(
        "pruning",
        lambda: (
            not any(
                has(k, n)
                for k, n in [
                    ("deployment", "shop--extra"),
                    ("servicemonitor", "shop--chat"),
                    ("servicemonitor", "shop-router"),
                    ("prometheusrule", "shop-slo"),
                ]
            )
        ),
    )


def run_operator(name, kubeconfig, args):
    """The operator with the chart's flags, its metrics on a free port instead; not waited for."""
    args = [a for a in args if not a.startswith("--metrics-addr")]
    env = {"POD_NAMESPACE": NS, "POD_NAME": "llmserve-0", "RUST_LOG": "info,kube=warn"}
    return procs.operator(name, kubeconfig, *args, env=env, health=None)


def test_rbac_is_exactly_what_the_operator_needs(cluster):
    cp = cluster
    rendered = render()
    rbac = [
        d
        for d in docs(rendered)
        if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    cp.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    kubeconfig = sa_kubeconfig(cp, "llmserve")
    with run_operator("operator", kubeconfig, operator_args(rendered)) as op:
        err = scenario(cp, "rbac-full", op, timeout=60)
        assert err is None, f"{err}\n{op.log_text()[-3000:]}"
        metrics = get(f"{op.url}/metrics")[1].decode()
        assert 'llmserve_operator_reconcile_errors_total{reason="forbidden"} 0' in metrics
        assert "llmserve_usage_applications" in metrics, "usage data was written with the chart's Role"
        assert cp.kubectl("get", "configmap", "llmserve-usage-stats", "-n", NS, "-o", "name").strip()
        assert cp.kubectl("get", "lease", "llmserve", "-n", NS, "-o", "jsonpath={.spec.holderIdentity}") == "llmserve-0"

    # Each ClusterRole rule is needed: without it the same scenario meets a forbidden error.
    role = next(d for d in rbac if d["kind"] == "ClusterRole")
    print("\n| ClusterRole rule removed | what the operator met |\n|---|---|")
    try:
        for i, rule in enumerate(role["rules"]):
            cut = copy.deepcopy(role)
            del cut["rules"][i]
            cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(cut))
            time.sleep(1)  # the authorizer's informer catches up
            with run_operator(f"operator-cut{i}", kubeconfig, operator_args(rendered, leader_election=False)) as op:
                err = scenario(cp, f"rbac-cut-{i}", op, timeout=30)
            name = f"{','.join(rule['apiGroups']) or 'core'} {','.join(rule['resources'])} [{','.join(rule['verbs'])}]"
            print(f"| {name} | {(err or 'nothing').splitlines()[0][:160]} |")
            assert err is not None, f"the operator did not need {name}"
    finally:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(role))


# === the prometheus-adapter rule ===


def adapter_query(rule, namespace, pods):
    """The query prometheus-adapter sends for the pods of one HPA (its template, filled in)."""
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return rule["metricsQuery"].replace("<<.GroupBy>>", "pod").replace("<<.LabelMatchers>>", matchers)


def test_adapter_rule_serves_running_plus_waiting_per_pod():
    rule = yaml.safe_load((CHART / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"][0]
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
