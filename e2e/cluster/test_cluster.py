"""The end to end on the assembled cluster (e2e/cluster/cluster.sh), as a user lives it: one test
per phase, run in order on one cluster (conftest.py brings it up and down; once a phase fails, the
later ones are skipped; the summary is printed at the end). As root, from the repository root:

    ~/.cache/llmserve/venv/bin/pytest -v -s e2e/cluster --run-cluster                 # up, phases, summary, down
    ~/.cache/llmserve/venv/bin/pytest -v -s e2e/cluster --run-cluster --keep-cluster  # leaves the cluster and app up
    ~/.cache/llmserve/venv/bin/pytest -v -s e2e/cluster --reuse-cluster               # on a cluster already up

Without --run-cluster (or --reuse-cluster) the phases are skipped.

The phases: install (the chart is installed by cluster.sh; apply Ray's documented example adapted
to stories260k, example-app.yaml, and wait until Ready); serve (OpenAI requests through the
router's Service, streaming and not); scrape (Prometheus scrapes every pod through the
ServiceMonitors the operator made, and evaluates the alert rules); autoscale (load above
targetOngoingRequests scales the HPA 1 -> 2, and back after the load ends); dashboards (every
dashboard query runs against this Prometheus); engine metrics off (logEngineMetrics: false stops
the engine series while the service-level ones go on); delete (deleting the app removes
everything it owned). On a failure, the app's objects and Events are printed with the summary.
"""

import json
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from generate import fill, query_panels
from llmserve_testing.net import eventually, get, post_json
from llmserve_testing.paths import DASHBOARDS, reference

HERE = Path(__file__).resolve().parent
APP, NS, MODEL = "demo", "default", "stories260k"
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
    "replicasets.apps",
    "pods",
]
PROMPT = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stream(url, body, timeout=120, finish=None):
    """Text of an SSE completion stream, and how many events it had; the choice's last
    `finish_reason` is appended to the list `finish` when one is given."""
    req = urllib.request.Request(
        url, json.dumps({**body, "stream": True}).encode(), {"content-type": "application/json"}
    )
    text, events = [], 0
    with urllib.request.urlopen(req, timeout=timeout) as r:
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

    def __init__(self, url, clients, max_tokens=400, pause=0.5):
        self.url, self.stop_flag, self.ok, self.errors = url, threading.Event(), 0, 0
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
                stream(self.url, body, finish=finish)
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


def model_pods(c):
    pods = c.get("pods", "-n", NS, "-l", f"{INSTANCE},app.kubernetes.io/component=model")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod):
    return any(x["type"] == "Ready" and x["status"] == "True" for x in pod.get("status", {}).get("conditions", []))


@pytest.fixture(scope="module")
def app(cluster, summary):
    """The cluster, the summary, and what one phase hands to the next (`base`: the router's URL).
    At the end, after a failed phase, the app's objects and Events go into the summary."""
    state = SimpleNamespace(c=cluster, summary=summary, base=None)
    yield state
    if "failed" in summary:
        summary["diagnostics"] = []
        for what in (
            ["get", "llmapp,deploy,pods,hpa,servicemonitors", "-n", NS, "-o", "wide"],
            ["get", "events", "-n", NS, "--sort-by=.lastTimestamp"],
        ):
            summary["diagnostics"] += [f"$ kubectl {' '.join(what)}", cluster.kubectl(*what, check=False)[-3000:]]


def test_install(app):
    c, summary = app.c, app.summary
    c.kubectl("apply", "-f", "-", stdin=(HERE / "example-app.yaml").read_text())
    t0 = time.time()
    ready_status = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    eventually(
        "the LlmApplication to be Ready",
        lambda: c.kubectl("get", "llmapp", APP, "-n", NS, "-o", ready_status) == "True",
        240,
    )
    summary["ready_after_s"] = round(time.time() - t0, 1)
    log(f"LlmApplication Ready after {summary['ready_after_s']} s")
    print(c.kubectl("get", "llmapp", "-n", NS), flush=True)


def test_serve(app):
    """OpenAI requests through the router's Service."""
    c, summary = app.c, app.summary
    svc = c.get("service", f"{APP}-router", "-n", NS)
    app.base = base = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    summary["openai_url"] = base + "/v1"
    eventually("the router to list the model", lambda: MODEL in get(base + "/v1/models")[1].decode(), 60)
    status, body = post_json(base + "/v1/completions", PROMPT)
    assert status == 200, f"completion through the router: {status} {body}"
    plain = json.loads(body)["choices"][0]["text"]
    streamed, events = stream(base + "/v1/completions", PROMPT)
    # The image computes what llama2.c's run.c computes for the same weights (greedy).
    ref = reference("once_upon_a_time.txt")
    assert len(plain) > 20 and ref.startswith(PROMPT["prompt"] + plain), (
        f"greedy text differs from llama2.c's: {plain!r} vs {ref[:120]!r}"
    )
    assert streamed == plain, f"streamed text differs from the plain one: {streamed!r} vs {plain!r}"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Lily saw a dog"}], "max_tokens": 32}
    status, body = post_json(base + "/v1/chat/completions", chat)
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"], (
        f"chat through the router: {status} {body}"
    )
    status, body = post_json(base + "/v1/completions", {"model": "no-such-model", "prompt": "x"})
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found", f"unknown model: {status} {body}"
    status, body = post_json(base + "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1})
    assert status == 400 and "error" in json.loads(body), f"bad request: {status} {body}"
    log(
        f"router answers: llama2.c's greedy text {plain[:40]!r}..., the same over {events} SSE events; "
        "404 and 400 in OpenAI's envelope"
    )
    summary["requests"] = 5


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
    with Load(app.base + "/v1/completions", clients=8) as load:
        summary["hpa_timeline"] = timeline
        eventually(
            "the HPA to scale to 2 with both replicas Ready", lambda: (lambda r: r[1] == 2 and r[4] == 2)(sample()), 240
        )
        log(f"scaled up after {timeline[-1][0]} s of load")
        t_up = time.time()
        while time.time() - t_up < 15:  # both replicas serve for a while
            sample()
            time.sleep(2)
        served_under_load = load.ok
    t_stop = time.time()
    # One client streams without pause while a replica goes away: nothing it sends may be lost.
    with Load(app.base + "/v1/completions", clients=1, max_tokens=32, pause=0) as steady:
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


def test_dashboards(app):
    """Every panel query of every shipped dashboard has data from this Prometheus."""
    c, summary = app.c, app.summary
    series = c.prometheus.series('count by (job) ({job=~".+"})')
    summary["series"] = {r["metric"].get("job", "?"): int(r["value"][1]) for r in series}
    assert all(summary["series"].get(j) for j in (f"{APP}-router", f"{APP}--{MODEL}")), (
        f"series scraped per job: {summary['series']}"
    )
    summary["dashboards"] = dashboards(c)
    # This app asks for no API keys, so the Tenants row has nothing to show, and must show nothing;
    # the keys and that row are proven in tests/observability and the router's tests.
    tenant_panels = {
        p["title"]
        for p in query_panels(json.loads((DASHBOARDS / "llm-serving.json").read_text()))
        if any("llmserve_router_tenant_" in t["expr"] for t in p.get("targets", []))
    }
    assert tenant_panels, "the serving dashboard has a Tenants row"
    empty = {name: [t for t in e if t not in tenant_panels] for name, (_, _, e) in summary["dashboards"].items()}
    empty = {name: e for name, e in empty.items() if e}
    assert not empty, f"dashboard panels without data: {empty}"
    assert tenant_panels <= set(summary["dashboards"]["llm-serving"][2]), "tenant series without API keys"


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
    steady = Load(app.base + "/v1/completions", clients=1, max_tokens=32, pause=0).__enter__()
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
        post_json(app.base + "/v1/completions", PROMPT)
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
