"""The end to end on the assembled cluster (e2e/cluster/cluster.sh), as a user lives it: one test
per phase, run in order on one cluster (conftest.py brings it up and down; once a phase fails, the
later ones are skipped; the summary is printed at the end). As root, from the repository root:

    ~/.cache/llmserve/venv/bin/pytest -v -s e2e/cluster --run-cluster                 # up, phases, summary, down
    ~/.cache/llmserve/venv/bin/pytest -v -s e2e/cluster --run-cluster --keep-cluster  # leaves the cluster and app up
    ~/.cache/llmserve/venv/bin/pytest -v -s e2e/cluster --reuse-cluster               # on a cluster already up

Without --run-cluster (or --reuse-cluster) the phases are skipped.

The phases: install (the chart is installed by cluster.sh; in a namespace that enforces Pod
Security `restricted`, apply Ray's documented example adapted to stories260k, example-app.yaml,
with API keys and TLS at the router, and wait until Ready); serve (OpenAI requests through the
router's Service over HTTPS with a key, streaming and not; keys refused, removed and rate-limited);
isolation (the app's NetworkPolicy against the live pods: only the app's router reaches the models'
API port, only Prometheus their metrics port; nothing enforces NetworkPolicies on this machine, so
that is not tested); scrape (Prometheus scrapes every pod through the
ServiceMonitors the operator made, and evaluates the alert rules); autoscale (load above
targetOngoingRequests scales the HPA 1 -> 2, and back after the load ends; status.serving moves
and agrees with Prometheus); autoscale on new signals (metric ttftP95, then kvCacheUsage, scale
1 -> 2); dashboards (every dashboard query runs against this Prometheus); engine metrics off
(logEngineMetrics: false stops the engine series while the service-level ones go on); delete
(deleting the app removes everything it owned). On a failure, the app's objects and Events are
printed with the summary.
"""

import json
import secrets
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import yaml

from generate import fill, query_panels
from llmserve_testing.net import eventually, get, post_json
from llmserve_testing.paths import DASHBOARDS, reference

HERE = Path(__file__).resolve().parent
APP, NS, MODEL = "demo", "llm", "stories260k"
IMAGE = "llmserve.dev/llmserve-server:e2e"
# Tenants of the app's API keys: team-a sends the traffic, team-b is limited to 3 requests a
# minute, team-c's key is removed from the Secret while the router runs.
TENANTS = ("team-a", "team-b", "team-c")
INSTANCE = f"app.kubernetes.io/instance={APP}"
OWNED_KINDS = [
    "deployments.apps",
    "services",
    "horizontalpodautoscalers.autoscaling",
    "servicemonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "networkpolicies.networking.k8s.io",
    "replicasets.apps",
    "pods",
]
PROMPT = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stream(url, body, timeout=120, finish=None, auth=None):
    """Text of an SSE completion stream, and how many events it had; the choice's last
    `finish_reason` is appended to the list `finish` when one is given. `auth`: the app's
    `Auth`."""
    headers = {"content-type": "application/json", **(auth.headers if auth else {})}
    req = urllib.request.Request(url, json.dumps({**body, "stream": True}).encode(), headers)
    text, events = [], 0
    with urllib.request.urlopen(req, timeout=timeout, context=auth.tls if auth else None) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            for c in json.loads(line[6:]).get("choices", []):
                text.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
                if finish is not None and c.get("finish_reason"):
                    finish.append(c["finish_reason"])
    return "".join(text), events


class Load:
    """Closed-loop streaming clients through the router, each one request after another; `failures`
    keeps what went wrong (the first 20)."""

    def __init__(self, url, clients, max_tokens=400, pause=0.5, auth=None):
        self.url, self.stop_flag, self.ok, self.errors, self.auth = url, threading.Event(), 0, 0, auth
        self.max_tokens, self.pause, self.failures = max_tokens, pause, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, i):
        while not self.stop_flag.is_set():
            try:
                body = {
                    "model": MODEL,
                    "prompt": f"Once upon a time {i}",
                    "max_tokens": self.max_tokens,
                    "temperature": 0.8,
                    "seed": i,
                    "ignore_eos": True,
                }
                finish = []
                stream(self.url, body, finish=finish, auth=self.auth)
                if finish != ["length"]:  # with ignore_eos, only a complete stream ends by length
                    raise RuntimeError(f"the stream ended with finish_reason {finish}, not length")
                with self.lock:
                    self.ok += 1
            except Exception as e:  # counted; each test decides what it tolerates
                with self.lock:
                    self.errors += 1
                    if len(self.failures) < 20:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
                time.sleep(self.pause)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=150)


class Auth:
    """How a client reaches the app's router: its TLS certificate pinned (the host reaches the
    Service by ClusterIP, with no DNS to check a name against, so the name is not checked) and a
    tenant's key."""

    def __init__(self, cert, key):
        self.tls = ssl.create_default_context(cafile=str(cert))
        self.tls.check_hostname = False
        self.key = key
        self.headers = {"authorization": f"Bearer {key}"}

    def post(self, url, body, key=None):
        headers = {"authorization": f"Bearer {key}"} if key else self.headers
        return post_json(url, body, headers=headers, context=self.tls)

    def get(self, url):
        return get(url, headers=self.headers, context=self.tls)


def self_signed(directory, names):
    """A self-signed certificate for `names` (DNS); returns (cert, key) paths."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={names[0]}", "-addext"]
        + [f"subjectAltName={san}"],
        check=True,
        capture_output=True,
    )
    return cert, key


def model_pods(c):
    pods = c.get("pods", "-n", NS, "-l", f"{INSTANCE},app.kubernetes.io/component=model")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod):
    return any(x["type"] == "Ready" and x["status"] == "True" for x in pod.get("status", {}).get("conditions", []))


@pytest.fixture(scope="module")
def app(cluster, summary):
    """The cluster, the summary, and what one phase hands to the next (`base`: the router's URL).
    At the end, after a failed phase, the app's objects and Events go into the summary."""
    state = SimpleNamespace(c=cluster, summary=summary, base=None, auth=None, keys={})
    yield state
    if "failed" in summary:
        summary["diagnostics"] = []
        for what in (
            ["get", "llmapp,deploy,pods,hpa,servicemonitors", "-n", NS, "-o", "wide"],
            ["get", "events", "-n", NS, "--sort-by=.lastTimestamp"],
        ):
            summary["diagnostics"] += [f"$ kubectl {' '.join(what)}", cluster.kubectl(*what, check=False)[-3000:]]


def test_install(app, tmp_path):
    c, summary = app.c, app.summary
    # The app's namespace enforces Pod Security `restricted`: the API server refuses any pod of
    # ours that breaks it, and (proof that it is on) a pod asking for privilege.
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": labels}}
    c.kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
    container = {"name": "c", "image": IMAGE, "securityContext": {"privileged": True}}
    privileged = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged", "namespace": NS}}
    privileged["spec"] = {"containers": [container]}
    with pytest.raises(RuntimeError, match='PodSecurity "restricted'):
        c.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(privileged))
    # API keys (one tenant per entry) and the router's certificate, as Secrets in that namespace.
    app.keys = {t: secrets.token_urlsafe(24) for t in TENANTS}
    c.kubectl(
        "create",
        "secret",
        "generic",
        f"{APP}-keys",
        "-n",
        NS,
        *[f"--from-literal={t}={k}" for t, k in app.keys.items()],
    )
    cert, key = self_signed(tmp_path, [f"{APP}-router.{NS}.svc", f"{APP}-router.{NS}.svc.cluster.local"])
    c.kubectl("create", "secret", "tls", f"{APP}-tls", "-n", NS, f"--cert={cert}", f"--key={key}")
    app.auth = Auth(cert, app.keys["team-a"])
    spec = yaml.safe_load((HERE / "example-app.yaml").read_text())
    spec["metadata"]["namespace"] = NS
    spec["spec"]["tls"] = {"secretName": f"{APP}-tls"}
    spec["spec"]["auth"] = {
        "apiKeys": {"secretRef": {"name": f"{APP}-keys"}},
        "limits": {"tenants": {"team-b": {"requestsPerMinute": 3}}},
    }
    c.kubectl("apply", "-f", "-", stdin=json.dumps(spec))
    t0 = time.time()
    ready_status = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    eventually(
        "the LlmApplication to be Ready",
        lambda: c.kubectl("get", "llmapp", APP, "-n", NS, "-o", ready_status) == "True",
        240,
    )
    summary["ready_after_s"] = round(time.time() - t0, 1)
    log(f"LlmApplication Ready after {summary['ready_after_s']} s")
    table = c.kubectl("get", "llmapp", "-n", NS)
    print(table, flush=True)
    assert "apiKeys" in table.splitlines()[1], f"the AUTH column says the app asks for keys: {table}"


def test_serve(app):
    """OpenAI requests through the router's Service, in HTTPS with a tenant's key: the official
    client, raw streams, the keys refused, removed and rate-limited."""
    c, summary, auth = app.c, app.summary, app.auth
    svc = c.get("service", f"{APP}-router", "-n", NS)
    app.base = base = f"https://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    summary["openai_url"] = base + "/v1"
    eventually("the router to list the model", lambda: MODEL in auth.get(base + "/v1/models")[1].decode(), 60)
    with httpx.Client(verify=auth.tls) as http:
        client = openai.OpenAI(base_url=base + "/v1", api_key=auth.key, http_client=http, max_retries=0)
        plain = client.completions.create(**PROMPT).choices[0].text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="not-a-key", http_client=http, max_retries=0).models.list()
    streamed, events = stream(base + "/v1/completions", PROMPT, auth=auth)
    # The image computes what llama2.c's run.c computes for the same weights (greedy).
    ref = reference("once_upon_a_time.txt")
    assert len(plain) > 20 and ref.startswith(PROMPT["prompt"] + plain), (
        f"greedy text differs from llama2.c's: {plain!r} vs {ref[:120]!r}"
    )
    assert streamed == plain, f"streamed text differs from the plain one: {streamed!r} vs {plain!r}"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Lily saw a dog"}], "max_tokens": 32}
    status, body = auth.post(base + "/v1/chat/completions", chat)
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"], (
        f"chat through the router: {status} {body}"
    )
    status, body = auth.post(base + "/v1/completions", {"model": "no-such-model", "prompt": "x"})
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found", f"unknown model: {status} {body}"
    status, body = auth.post(base + "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1})
    assert status == 400 and "error" in json.loads(body), f"bad request: {status} {body}"
    # Without a key, or over HTTP on the HTTPS port, nothing is served.
    status, body = post_json(base + "/v1/completions", PROMPT, context=auth.tls)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", f"no key: {status} {body}"
    with pytest.raises(httpx.HTTPError):
        httpx.post(base.replace("https://", "http://") + "/v1/completions", json=PROMPT, timeout=10)
    # team-b's limit: 3 requests a minute, then 429 with OpenAI's headers.
    short = {**PROMPT, "max_tokens": 2}
    answers = [auth.post(base + "/v1/completions", short, key=app.keys["team-b"]) for _ in range(4)]
    assert [s for s, _ in answers] == [200, 200, 200, 429], f"team-b over its limit: {answers}"
    assert json.loads(answers[3][1])["error"]["code"] == "rate_limit_exceeded", answers[3]
    # A key removed from the Secret stops working without a restart of the router.
    assert auth.post(base + "/v1/completions", short, key=app.keys["team-c"])[0] == 200
    patch = json.dumps([{"op": "remove", "path": "/data/team-c"}])
    c.kubectl("patch", "secret", f"{APP}-keys", "-n", NS, "--type", "json", "-p", patch)
    t_removed = time.time()
    eventually(
        "team-c's removed key to be refused",
        lambda: auth.post(base + "/v1/completions", short, key=app.keys["team-c"])[0] == 401,
        30,
        every=0.5,
    )
    summary["key_removed_s"] = round(time.time() - t_removed, 2)
    log(
        f"router answers over HTTPS with a key: llama2.c's greedy text {plain[:40]!r}... through the OpenAI client, "
        f"the same over {events} SSE events; 404, 400, 401 and 429 in OpenAI's envelope; a removed key refused after "
        f"{summary['key_removed_s']} s"
    )
    summary["requests"] = 10


def selects(selector, labels):
    """Whether a NetworkPolicy label selector (`matchLabels` only, which is all the operator
    writes; an empty one selects everything) selects an object with `labels`."""
    assert not selector.get("matchExpressions"), selector
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def test_isolation(app):
    """The app's NetworkPolicy, as the API server stored it, against the live pods: it selects the
    app's model pods and nothing else in the namespace, lets the app's router pods (only) to the API
    port, and the Prometheus that prometheus-operator runs here (only) to the metrics port, whose
    scrapes test_scrape then proves. Nothing here enforces NetworkPolicies (see cluster.sh), so the
    packets themselves are not tested."""
    c, summary = app.c, app.summary
    policy = c.get("networkpolicy", f"{APP}-models", "-n", NS)
    assert policy["metadata"]["ownerReferences"][0]["name"] == APP
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    pods = {p["metadata"]["name"]: p["metadata"].get("labels", {}) for p in c.get("pods", "-n", NS)["items"]}
    models = {p["metadata"]["name"] for p in model_pods(c)}
    routers = {n for n, lb in pods.items() if lb.get("app.kubernetes.io/component") == "router"}
    assert models and routers, pods
    assert {n for n, lb in pods.items() if selects(spec["podSelector"], lb)} == models, "the policy selects the models"
    api, metrics = spec["ingress"]
    assert [p["port"] for p in api["ports"]] == ["http"] and [p["port"] for p in metrics["ports"]] == ["metrics"]
    (peer,) = api["from"]
    assert "namespaceSelector" not in peer, "the router's pods of this namespace"
    assert {n for n, lb in pods.items() if selects(peer["podSelector"], lb)} == routers
    # The metrics peer: pods matching its pod selector in namespaces matching its namespace selector.
    (peer,) = metrics["from"]
    namespaces = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in c.get("namespaces")["items"]}
    admitted = [
        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in c.get("pods", "-A")["items"]
        if selects(peer["namespaceSelector"], namespaces[p["metadata"]["namespace"]])
        and selects(peer["podSelector"], p["metadata"].get("labels", {}))
    ]
    assert admitted == ["monitoring/prometheus-e2e-0"], f"only Prometheus reaches the metrics port: {admitted}"
    # The model pods' metrics port serves nothing else (what the policy opens to Prometheus).
    ip = c.get("pod", sorted(models)[0], "-n", NS)["status"]["podIP"]
    assert get(f"http://{ip}:9090/metrics")[0] == 200
    status, body = post_json(f"http://{ip}:9090/v1/completions", {**PROMPT, "max_tokens": 2})
    assert status == 404, f"the metrics port serves the API: {status} {body}"
    summary["isolation"] = {"models": sorted(models), "api_from": sorted(routers), "metrics_from": admitted}
    log(
        f"NetworkPolicy {APP}-models: models {sorted(models)} take the API from {sorted(routers)}, "
        f"metrics from {admitted}"
    )


def test_scrape(app):
    """Prometheus scrapes every pod through the operator's ServiceMonitors, and the operator through
    the chart's; it loads the app's SLO PrometheusRule (the operator's) and the chart's static rules
    through prometheus-operator, and evaluates them without error."""
    c, summary, prom = app.c, app.summary, app.c.prometheus
    sms = [
        s["metadata"]["name"] for s in c.get("servicemonitors.monitoring.coreos.com", "-n", NS, "-l", INSTANCE)["items"]
    ]
    assert sorted(sms) == sorted([f"{APP}-router", f"{APP}--{MODEL}"]), f"ServiceMonitors: {sms}"
    pods = {p["metadata"]["name"] for p in c.get("pods", "-n", NS, "-l", INSTANCE)["items"]}

    def scraped():
        up = {
            t["labels"].get("pod"): t
            for t in prom.targets()
            if t["scrapePool"].startswith(f"serviceMonitor/{NS}/{APP}-")
        }
        return up if set(up) >= pods and all(t["health"] == "up" for t in up.values()) else None

    up = eventually(f"Prometheus to scrape every pod of {APP} through its ServiceMonitors", scraped, 90)
    log(f"Prometheus scrapes {len(up)} pods: " + ", ".join(f"{p} ({t['scrapePool']})" for p, t in sorted(up.items())))
    release_ns = c.env["RELEASE_NS"]
    operator = [
        t["labels"].get("pod")
        for t in prom.targets()
        if t["scrapePool"].startswith(f"serviceMonitor/{release_ns}/llmserve/") and t["health"] == "up"
    ]
    assert operator, "Prometheus scrapes the operator through the chart's ServiceMonitor"
    summary["pods_scraped"] = sorted(up) + operator

    def rule_groups():
        groups = {g["name"]: g["rules"] for g in prom.rule_groups()}
        wanted = {f"llmserve.{NS}.{APP}.slo", "llmserve.static"}
        # Loaded, and evaluated without error (health "ok", not "err" or "unknown").
        if wanted <= set(groups) and all(rule["health"] == "ok" for g in wanted for rule in groups[g]):
            return {g: len(groups[g]) for g in sorted(wanted)}
        return None

    summary["rule_groups"] = eventually("Prometheus to load the SLO and static alert rules", rule_groups, 120)
    log(f"Prometheus evaluates rule groups {summary['rule_groups']}")


def test_autoscale(app):
    """Load above targetOngoingRequests: the HPA goes 1 -> 2, both replicas serve, and back to 1."""
    c, summary = app.c, app.summary
    hpa_name = f"{APP}--{MODEL}"
    timeline, reasons = [], []

    def sample():
        h = c.get("hpa", hpa_name, "-n", NS)
        metrics = h.get("status", {}).get("currentMetrics") or []
        cur = [m.get("pods", {}).get("current", {}).get("averageValue") for m in metrics]
        active = [x["reason"] for x in h["status"].get("conditions", []) if x["type"] == "ScalingActive"]
        reasons.append(active[0] if active else None)
        row = (
            round(time.time() - t_load, 1),
            h["status"].get("currentReplicas"),
            h["status"].get("desiredReplicas"),
            cur[0] if cur and cur[0] is not None else (active[0] if active else None),
            sum(ready(p) for p in model_pods(c)),
        )
        if not timeline or row[1:] != timeline[-1][1:]:
            timeline.append(row)
        return row

    t_load = time.time()
    with Load(app.base + "/v1/completions", clients=8, auth=app.auth) as load:
        summary["hpa_timeline"] = timeline
        eventually(
            "the HPA to scale to 2 with both replicas Ready", lambda: (lambda r: r[1] == 2 and r[4] == 2)(sample()), 240
        )
        log(f"scaled up after {timeline[-1][0]} s of load")
        t_up = time.time()
        while time.time() - t_up < 15:  # both replicas serve for a while
            sample()
            time.sleep(2)
        summary["live_status"] = live_status_under_load(c)
        served_under_load = load.ok
    t_stop = time.time()
    # One client streams without pause while a replica goes away: nothing it sends may be lost.
    with Load(app.base + "/v1/completions", clients=1, max_tokens=32, pause=0, auth=app.auth) as steady:
        eventually(
            "the HPA to scale back to 1 after the load", lambda: (lambda r: r[1] == 1 and r[4] == 1)(sample()), 300
        )
        time.sleep(5)  # past the drained replica's exit
    log(f"scaled down {round(time.time() - t_stop, 1)} s after the load ended; {steady.ok} streams during it")
    summary["scale_down_streams"] = (steady.ok, steady.errors)
    assert steady.ok > 0 and steady.errors == 0, f"requests lost while scaling 2 -> 1: {steady.failures}"
    summary["requests"] = summary.get("requests", 0) + served_under_load
    # Once the adapter has the metric, every sync finds it (a relist interval below the scrape
    # interval loses it every other sync).
    seen = reasons[reasons.index("ValidMetricFound") :] if "ValidMetricFound" in reasons else []
    assert seen and all(r == "ValidMetricFound" for r in seen), f"the HPA lost its metric between syncs: {reasons}"
    summary["load_errors"] = load.errors
    per_pod = c.prometheus.series(
        f'sum by (pod) (increase(llmserve_http_requests_total{{namespace="{NS}",route="/v1/completions"}}[10m]))'
    )
    summary["served_per_pod"] = {r["metric"]["pod"]: round(float(r["value"][1])) for r in per_pod}
    assert sum(1 for v in summary["served_per_pod"].values() if v > 0) >= 2, (
        f"the router spread the load over both model replicas: {summary['served_per_pod']}"
    )


def live_status_under_load(c):
    """The app's `status.serving` (the operator's copy of the router's last-minute figures) moves
    under load and agrees with Prometheus's view of the same minute: requests per second within a
    factor of 2 (the two windows are not aligned: the router reads every 5 s, the operator every
    15 s and writes at most every 30 s; Prometheus scrapes every 5 s)."""

    def agreeing():
        serving = c.get("llmapp", APP, "-n", NS).get("status", {}).get("serving")
        if not serving or serving["requestsPerSecond"] <= 0 or not serving.get("ttftP95Seconds"):
            return None
        prom = c.prometheus.series(f'sum(rate(llmserve_router_requests_total{{namespace="{NS}"}}[1m]))')
        prom_rps = float(prom[0]["value"][1]) if prom else 0.0
        if not 0.5 <= serving["requestsPerSecond"] / max(prom_rps, 1e-9) <= 2.0:
            return None
        return {**serving, "prometheusRequestsPerSecond": round(prom_rps, 2)}

    figures = eventually("status.serving to move and agree with Prometheus", agreeing, 120, every=5)
    model = figures["models"][0]
    assert model["modelId"] == MODEL and model["readyReplicas"] >= 1 and figures["outputTokensPerSecond"] > 0, figures
    table = c.kubectl("get", "llmapp", APP, "-n", NS)
    log(
        f"status.serving under load: {figures['requestsPerSecond']} req/s (Prometheus "
        f"{figures['prometheusRequestsPerSecond']}), {figures['outputTokensPerSecond']} tok/s, TTFT p95 "
        f"{figures['ttftP95Seconds']} s, KV {figures.get('kvCachePercent')} %\n{table}"
    )
    return figures


def test_autoscale_on_new_signals(app):
    """The HPA follows the signal the spec chooses: with `metric: ttftP95`, then `metric:
    kvCacheUsage`, each with a target the load exceeds, the HPA reads that metric from
    prometheus-adapter (the chart's rules) and scales 1 -> 2; idle, TTFT p95 reads 0 and the model
    goes back to 1; each scale-up is the model's `status.models[].lastScale`, naming the metric.
    The spec returns to ongoingRequests at the end, and the model to one replica."""
    c, summary = app.c, app.summary
    hpa_name = f"{APP}--{MODEL}"
    seen = {}

    def use(metric, target=None):
        # A merge patch replaces the models list whole: the autoscaling config is exactly the
        # original one (ongoingRequests) plus the chosen metric and its target.
        config = {"metric": metric, **(target or {})} if metric != "ongoingRequests" else {}
        patch = {
            "spec": {"models": [{**spec_model, "deploymentConfig": {"autoscalingConfig": {**autoscaling, **config}}}]}
        }
        c.kubectl("patch", "llmapp", APP, "-n", NS, "--type", "merge", "-p", json.dumps(patch))

    spec = c.get("llmapp", APP, "-n", NS)["spec"]
    spec_model = spec["models"][0]
    autoscaling = spec_model["deploymentConfig"]["autoscalingConfig"]

    def scaled_on(name):
        h = c.get("hpa", hpa_name, "-n", NS)
        metrics = h.get("status", {}).get("currentMetrics") or []
        current = [
            m["pods"]["current"]["averageValue"]
            for m in metrics
            if m.get("pods", {}).get("metric", {}).get("name") == name
        ]
        if current and h["status"].get("desiredReplicas") == 2 and sum(ready(p) for p in model_pods(c)) == 2:
            return current[0]
        return None

    def back_to_one():
        h = c.get("hpa", hpa_name, "-n", NS)
        return h["status"].get("currentReplicas") == 1 and len(model_pods(c)) == 1

    for metric, target, name in [
        ("ttftP95", {"targetTtftP95Seconds": 0.001}, "llmserve_ttft_p95_seconds"),
        ("kvCacheUsage", {"targetKvCacheUsage": 0.001}, "llmserve_kv_cache_usage"),
    ]:
        use(metric, target)
        t0 = time.time()
        with Load(app.base + "/v1/completions", clients=4, auth=app.auth):
            value = eventually(f"the HPA to scale to 2 on {name}", lambda n=name: scaled_on(n), 180, every=3)
        seen[metric] = {"value": value, "scaled_up_s": round(time.time() - t0, 1)}

        def scale_event(n=name):
            models = c.get("llmapp", APP, "-n", NS).get("status", {}).get("models") or [{}]
            event = models[0].get("lastScale") or {}
            return event if event.get("to") == 2 and n in event.get("reason", "") else None

        seen[metric]["lastScale"] = eventually(f"status.models[0].lastScale to say 2 on {name}", scale_event, 60)
        log(f"HPA on {metric}: {name} = {value} per pod, 2 replicas after {seen[metric]['scaled_up_s']} s")
        if metric == "ttftP95":
            # Idle, the adapter reports TTFT p95 0 (no request in the window): back to 1.
            eventually("the HPA to scale back to 1 on an idle TTFT", back_to_one, 240, every=3)
    use("ongoingRequests")
    # Idle on ongoingRequests: back to one replica, so the rollout below starts from where it did.
    eventually("the HPA to scale back to 1 on ongoingRequests", back_to_one, 240, every=3)
    summary["new_signals"] = seen


def test_dashboards(app):
    """Every panel query of every shipped dashboard has data from this Prometheus."""
    c, summary = app.c, app.summary
    series = c.prometheus.series('count by (job) ({job=~".+"})')
    summary["series"] = {r["metric"].get("job", "?"): int(r["value"][1]) for r in series}
    assert all(summary["series"].get(j) for j in (f"{APP}-router", f"{APP}--{MODEL}")), (
        f"series scraped per job: {summary['series']}"
    )
    summary["dashboards"] = dashboards(c)
    # The Tenants row included: the app asks for keys, and team-b was rate-limited.
    tenant_panels = {
        p["title"]
        for p in query_panels(json.loads((DASHBOARDS / "llm-serving.json").read_text()))
        if any("llmserve_router_tenant_" in t["expr"] for t in p.get("targets", []))
    }
    assert tenant_panels, "the serving dashboard has a Tenants row"
    empty = {name: e for name, (_, _, e) in summary["dashboards"].items() if e}
    assert not empty, f"dashboard panels without data: {empty}"
    tenants = c.prometheus.series(f'sum by (tenant) (llmserve_router_tenant_requests_total{{namespace="{NS}"}})')
    summary["tenants"] = {r["metric"]["tenant"]: round(float(r["value"][1])) for r in tenants}
    assert {"team-a", "team-b", "team-c"} <= set(summary["tenants"]), f"requests by tenant: {summary['tenants']}"


def dashboards(c):
    """Runs every panel query of every shipped dashboard; returns {dashboard: (with data, panels, empty)}."""
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(path.read_text())
        with_data, empty = 0, []
        panels = query_panels(d)
        for p in panels:
            n = 0
            for t in p.get("targets", []):
                n += len(c.prometheus.series(fill(t["expr"], interval="5m")))
            if n:
                with_data += 1
            else:
                empty.append(p["title"])
        out[path.stem] = (with_data, len(panels), empty)
        log(
            f"dashboard {path.stem}: {with_data}/{len(panels)} panels with data"
            + (f"; empty: {empty}" if empty else "")
        )
    return out


def test_engine_metrics_off(app):
    """logEngineMetrics: false stops the engine series; the service-level ones go on."""
    c, summary, prom = app.c, app.summary, app.c.prometheus
    before = {p["metadata"]["name"] for p in model_pods(c)}
    assert prom.series(f'{{__name__=~"vllm:.+",namespace="{NS}",pod=~"{"|".join(before)}"}}'), (
        f"engine series from {before} before the change"
    )
    patch = '[{"op": "replace", "path": "/spec/models/0/logEngineMetrics", "value": false}]'
    steady = Load(app.base + "/v1/completions", clients=1, max_tokens=32, pause=0, auth=app.auth).__enter__()
    c.kubectl("patch", "llmapp", APP, "-n", NS, "--type", "json", "-p", patch)

    def rolled():
        ps = model_pods(c)
        new = [p for p in ps if p["metadata"]["name"] not in before]
        done = (
            new
            and len(new) == len(ps)
            and all(ready(p) for p in new)
            and all("--disable-engine-metrics" in p["spec"]["containers"][0]["args"] for p in new)
        )
        return new if done else None

    try:
        new = [
            p["metadata"]["name"] for p in eventually("the replicas to roll to logEngineMetrics: false", rolled, 180)
        ]
        time.sleep(5)  # past the old replica's exit
    finally:
        steady.__exit__(None, None, None)
    summary["rollout_streams"] = (steady.ok, steady.errors)
    # One client streamed without pause through the rollout: nothing it sent may be lost.
    assert steady.ok > 0 and steady.errors == 0, f"requests lost during the rollout: {steady.failures}"
    for _ in range(5):
        app.auth.post(app.base + "/v1/completions", PROMPT)
    sel = f'namespace="{NS}",pod=~"{"|".join(new)}"'
    eventually(
        "the new replicas' service-level series in Prometheus",
        lambda: prom.series(f'llmserve_http_requests_total{{{sel},route="/v1/completions"}}'),
        90,
    )
    engine = prom.series(f'{{__name__=~"vllm:.+",{sel}}}')
    assert not engine, f"engine series still scraped from {new}: {[r['metric']['__name__'] for r in engine][:5]}"
    service = {r["metric"]["__name__"] for r in prom.series(f'{{__name__=~"llmserve_http_.+",{sel}}}')}
    log(f"logEngineMetrics: false on {new}: no vllm:* series, service-level series go on: {sorted(service)}")
    summary["engine_off"] = {"pods": new, "service_series": sorted(service)}


def test_delete(app):
    """Deleting the app removes everything it owned."""
    c, summary = app.c, app.summary
    uid = c.get("llmapp", APP, "-n", NS)["metadata"]["uid"]
    owned = []
    for kind in OWNED_KINDS:
        for o in c.get(kind, "-n", NS)["items"]:
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", [])):
                owned.append(f"{kind}/{o['metadata']['name']}")
    assert len(owned) >= 8, f"the app owns its objects: {owned}"
    c.kubectl("delete", "llmapp", APP, "-n", NS, "--wait=true", "--timeout=60s")

    def gone():
        left = [
            o for o in owned if c.kubectl("get", o, "-n", NS, "--ignore-not-found", "-o", "name", check=False).strip()
        ]
        left += [p["metadata"]["name"] for p in c.get("pods", "-n", NS, "-l", INSTANCE)["items"]]
        summary["left"] = left
        return not left

    eventually("everything the app owned to be deleted", gone, 120)
    kinds = ", ".join(sorted({o.split("/")[0].split(".")[0] for o in owned}))
    log(f"deleted: {len(owned)} owned objects gone ({kinds}), no pods left")
    summary["deleted"] = len(owned)
