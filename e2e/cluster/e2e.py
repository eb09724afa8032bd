#!/usr/bin/env python3
"""The end-to-end test on the assembled cluster (e2e/cluster/cluster.sh), as a user lives it.

    sudo python3 e2e/cluster/e2e.py            # cluster up, scenario, summary, cluster down
    sudo python3 e2e/cluster/e2e.py --keep     # leaves the cluster (and the app) up afterwards
    sudo python3 e2e/cluster/e2e.py --reuse    # runs on a cluster already up

The scenario: the chart is installed (cluster.sh); apply Ray's documented example adapted to
stories260k (example-app.yaml); wait until Ready; OpenAI requests through the router's Service,
streaming and not; Prometheus scrapes every pod through the ServiceMonitors the operator made;
every dashboard query runs against it; load above targetOngoingRequests scales the HPA 1 -> 2 and
back after the load ends; logEngineMetrics: false stops the engine series while the service-level
ones go on; deleting the app removes everything it owned. Exits non-zero on the first failure,
after printing what it saw.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "dashboards"))
from generate import fill, query_panels  # noqa: E402
APP, NS, MODEL = "demo", "default", "stories260k"
INSTANCE = f"app.kubernetes.io/instance={APP}"
OWNED_KINDS = ["deployments.apps", "services", "horizontalpodautoscalers.autoscaling",
               "servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com",
               "serviceaccounts", "roles.rbac.authorization.k8s.io", "rolebindings.rbac.authorization.k8s.io",
               "replicasets.apps", "pods"]


class Failed(Exception):
    pass


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise Failed(msg)


class Cluster:
    def __init__(self, env):
        self.env = env
        self.k = env["K"]
        self.prom = env["PROMETHEUS_URL"]

    def kubectl(self, *args, stdin=None, check_rc=True):
        p = subprocess.run([self.k, *args], input=stdin, capture_output=True, text=True,
                           env={**os.environ, "KUBECONFIG": self.env["KUBECONFIG"]})
        if check_rc and p.returncode != 0:
            raise Failed(f"kubectl {' '.join(args)}: {p.stderr.strip()}")
        return p

    def get(self, *args):
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def prometheus(self, path):
        """The `data` of an answer of Prometheus's HTTP API."""
        with urllib.request.urlopen(f"{self.prom}/api/v1/{path}", timeout=10) as r:
            body = json.load(r)
        check(body["status"] == "success", f"Prometheus {path} failed: {body}")
        return body["data"]

    def query(self, expr):
        return self.prometheus("query?" + urllib.parse.urlencode({"query": expr}))["result"]

    def targets(self):
        return self.prometheus("targets?state=active")["activeTargets"]


def eventually(what, fn, timeout, every=2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            got = fn()
            if got:
                return got
        except (Failed, urllib.error.URLError, OSError, KeyError, ValueError) as e:
            last = e
        time.sleep(every)
    raise Failed(f"timed out after {timeout}s: {what}" + (f" (last error: {last})" if last else ""))


def post(url, body, timeout=60):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def stream(url, body, timeout=120):
    """Text of an SSE completion stream, and how many events it had."""
    req = urllib.request.Request(url, json.dumps({**body, "stream": True}).encode(), {"content-type": "application/json"})
    text, events = [], 0
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            for c in json.loads(line[6:]).get("choices", []):
                text.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(text), events


class Load:
    """Closed-loop streaming clients through the router, each one request after another."""

    def __init__(self, url, clients):
        self.url, self.stop_flag, self.ok, self.errors = url, threading.Event(), 0, 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, i):
        while not self.stop_flag.is_set():
            try:
                stream(self.url, {"model": MODEL, "prompt": f"Once upon a time {i}", "max_tokens": 400,
                                  "temperature": 0.8, "seed": i})
                with self.lock:
                    self.ok += 1
            except Exception:  # noqa: BLE001 - counted, the HPA check is what decides
                with self.lock:
                    self.errors += 1
                time.sleep(0.5)

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


def scenario(c, summary):
    app_yaml = (HERE / "example-app.yaml").read_text()
    # === apply the example and wait until Ready ===
    c.kubectl("apply", "-f", "-", stdin=app_yaml)
    t0 = time.time()
    eventually("the LlmApplication to be Ready", lambda: c.kubectl(
        "get", "llmapp", APP, "-n", NS, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout == "True", 240)
    summary["ready_after_s"] = round(time.time() - t0, 1)
    log(f"LlmApplication Ready after {summary['ready_after_s']} s")
    print(c.kubectl("get", "llmapp", "-n", NS).stdout, flush=True)

    # === OpenAI requests through the router's Service ===
    svc = c.get("service", f"{APP}-router", "-n", NS)
    base = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    summary["openai_url"] = base + "/v1"
    eventually("the router to list the model", lambda: MODEL in urllib.request.urlopen(base + "/v1/models", timeout=5).read().decode(), 60)
    prompt = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}
    status, body = post(base + "/v1/completions", prompt)
    check(status == 200, f"completion through the router: {status} {body}")
    plain = json.loads(body)["choices"][0]["text"]
    streamed, events = stream(base + "/v1/completions", prompt)
    # The image computes what llama2.c's run.c computes for the same weights (greedy).
    ref = (ROOT.parent / "shared" / "models" / "stories260k" / "reference" / "once_upon_a_time.txt").read_text()
    check(len(plain) > 20 and ref.startswith(prompt["prompt"] + plain), f"greedy text differs from llama2.c's: {plain!r} vs {ref[:120]!r}")
    check(streamed == plain, f"streamed text differs from the plain one: {streamed!r} vs {plain!r}")
    status, body = post(base + "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Lily saw a dog"}], "max_tokens": 32})
    check(status == 200 and json.loads(body)["choices"][0]["message"]["content"], f"chat through the router: {status} {body}")
    status, body = post(base + "/v1/completions", {"model": "no-such-model", "prompt": "x"})
    check(status == 404 and json.loads(body)["error"]["code"] == "model_not_found", f"unknown model: {status} {body}")
    status, body = post(base + "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1})
    check(status == 400 and "error" in json.loads(body), f"bad request: {status} {body}")
    log(f"router answers: llama2.c's greedy text {plain[:40]!r}..., the same over {events} SSE events; 404 and 400 in OpenAI's envelope")
    summary["requests"] = 5

    # === Prometheus scrapes every pod through the operator's ServiceMonitors ===
    sms = [s["metadata"]["name"] for s in c.get("servicemonitors.monitoring.coreos.com", "-n", NS, "-l", INSTANCE)["items"]]
    check(sorted(sms) == sorted([f"{APP}-router", f"{APP}-{MODEL}"]), f"ServiceMonitors: {sms}")
    pods = {p["metadata"]["name"] for p in c.get("pods", "-n", NS, "-l", INSTANCE)["items"]}

    def scraped():
        up = {t["labels"].get("pod"): t for t in c.targets() if t["scrapePool"].startswith(f"serviceMonitor/{NS}/{APP}-")}
        return up if set(up) >= pods and all(t["health"] == "up" for t in up.values()) else None
    up = eventually(f"Prometheus to scrape every pod of {APP} through its ServiceMonitors", scraped, 90)
    log(f"Prometheus scrapes {len(up)} pods: " + ", ".join(f"{p} ({t['scrapePool']})" for p, t in sorted(up.items())))
    release_ns = c.env["RELEASE_NS"]
    operator = [t["labels"].get("pod") for t in c.targets()
                if t["scrapePool"].startswith(f"serviceMonitor/{release_ns}/llmserve/") and t["health"] == "up"]
    check(operator, "Prometheus scrapes the operator through the chart's ServiceMonitor")
    summary["pods_scraped"] = sorted(up) + operator

    # === the alert rules: the app's SLO PrometheusRule (the operator's) and the chart's static
    # rules, loaded by Prometheus through prometheus-operator and evaluated without error ===
    def rule_groups():
        groups = {g["name"]: g["rules"] for g in c.prometheus("rules")["groups"]}
        wanted = {f"llmserve.{NS}.{APP}.slo", "llmserve.static"}
        # Loaded, and evaluated without error (health "ok", not "err" or "unknown").
        if wanted <= set(groups) and all(rule["health"] == "ok" for g in wanted for rule in groups[g]):
            return {g: len(groups[g]) for g in sorted(wanted)}
        return None
    summary["rule_groups"] = eventually("Prometheus to load the SLO and static alert rules", rule_groups, 120)
    log(f"Prometheus evaluates rule groups {summary['rule_groups']}")

    # === HPA 1 -> 2 under load, and back ===
    hpa_name = f"{APP}-{MODEL}"
    timeline, reasons = [], []

    def sample():
        h = c.get("hpa", hpa_name, "-n", NS)
        cur = [m.get("pods", {}).get("current", {}).get("averageValue") for m in h.get("status", {}).get("currentMetrics") or []]
        active = [x["reason"] for x in h["status"].get("conditions", []) if x["type"] == "ScalingActive"]
        reasons.append(active[0] if active else None)
        row = (round(time.time() - t_load, 1), h["status"].get("currentReplicas"), h["status"].get("desiredReplicas"),
               cur[0] if cur and cur[0] is not None else (active[0] if active else None), sum(ready(p) for p in model_pods(c)))
        if not timeline or row[1:] != timeline[-1][1:]:
            timeline.append(row)
        return row

    t_load = time.time()
    with Load(base + "/v1/completions", clients=8) as load:
        eventually("the HPA to scale to 2 with both replicas Ready",
                   lambda: (lambda r: r[1] == 2 and r[4] == 2)(sample()), 240)
        log(f"scaled up after {timeline[-1][0]} s of load")
        t_up = time.time()
        while time.time() - t_up < 15:  # both replicas serve for a while
            sample()
            time.sleep(2)
        served_under_load = load.ok
    t_stop = time.time()
    eventually("the HPA to scale back to 1 after the load", lambda: (lambda r: r[1] == 1 and r[4] == 1)(sample()), 300)
    log(f"scaled down {round(time.time() - t_stop, 1)} s after the load ended")
    summary["requests"] += served_under_load
    # Once the adapter has the metric, every sync finds it (a relist interval below the scrape
    # interval loses it every other sync).
    seen = reasons[reasons.index("ValidMetricFound"):] if "ValidMetricFound" in reasons else []
    check(seen and all(r == "ValidMetricFound" for r in seen), f"the HPA lost its metric between syncs: {reasons}")
    summary["load_errors"] = load.errors
    summary["hpa_timeline"] = timeline
    per_pod = c.query(f'sum by (pod) (increase(llmserve_http_requests_total{{namespace="{NS}",route="/v1/completions"}}[10m]))')
    summary["served_per_pod"] = {r["metric"]["pod"]: round(float(r["value"][1])) for r in per_pod}
    check(sum(1 for v in summary["served_per_pod"].values() if v > 0) >= 2,
          f"the router spread the load over both model replicas: {summary['served_per_pod']}")

    # === every dashboard query against this Prometheus ===
    summary["series"] = {r["metric"].get("job", "?"): int(r["value"][1]) for r in c.query('count by (job) ({job=~".+"})')}
    check(all(summary["series"].get(j) for j in (f"{APP}-router", f"{APP}-{MODEL}")), f"series scraped per job: {summary['series']}")
    summary["dashboards"] = dashboards(c)
    empty = {name: e for name, (_, _, e) in summary["dashboards"].items() if e}
    check(not empty, f"dashboard panels without data: {empty}")

    # === logEngineMetrics: false stops the engine series; the service-level ones go on ===
    before = {p["metadata"]["name"] for p in model_pods(c)}
    check(c.query(f'{{__name__=~"vllm:.+",namespace="{NS}",pod=~"{"|".join(before)}"}}'), f"engine series from {before} before the change")
    c.kubectl("patch", "llmapp", APP, "-n", NS, "--type", "json", "-p",
              '[{"op": "replace", "path": "/spec/models/0/logEngineMetrics", "value": false}]')

    def rolled():
        ps = model_pods(c)
        new = [p for p in ps if p["metadata"]["name"] not in before]
        return new if new and len(new) == len(ps) and all(ready(p) for p in new) and all(
            "--disable-engine-metrics" in p["spec"]["containers"][0]["args"] for p in new) else None
    new = [p["metadata"]["name"] for p in eventually("the replicas to roll to logEngineMetrics: false", rolled, 180)]
    for _ in range(5):
        post(base + "/v1/completions", prompt)
    sel = f'namespace="{NS}",pod=~"{"|".join(new)}"'
    eventually("the new replicas' service-level series in Prometheus",
               lambda: c.query(f'llmserve_http_requests_total{{{sel},route="/v1/completions"}}'), 90)
    engine = c.query(f'{{__name__=~"vllm:.+",{sel}}}')
    check(not engine, f"engine series still scraped from {new}: {[r['metric']['__name__'] for r in engine][:5]}")
    service = {r["metric"]["__name__"] for r in c.query(f'{{__name__=~"llmserve_http_.+",{sel}}}')}
    log(f"logEngineMetrics: false on {new}: no vllm:* series, service-level series go on: {sorted(service)}")
    summary["engine_off"] = {"pods": new, "service_series": sorted(service)}

    # === delete the app: everything it owned goes ===
    uid = c.get("llmapp", APP, "-n", NS)["metadata"]["uid"]
    owned = []
    for kind in OWNED_KINDS:
        for o in c.get(kind, "-n", NS)["items"]:
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", [])):
                owned.append(f"{kind}/{o['metadata']['name']}")
    check(len(owned) >= 8, f"the app owns its objects: {owned}")
    c.kubectl("delete", "llmapp", APP, "-n", NS, "--wait=true", "--timeout=60s")

    def gone():
        left = [o for o in owned if c.kubectl("get", o, "-n", NS, "--ignore-not-found", "-o", "name", check_rc=False).stdout.strip()]
        left += [p["metadata"]["name"] for p in c.get("pods", "-n", NS, "-l", INSTANCE)["items"]]
        summary["left"] = left
        return not left
    eventually("everything the app owned to be deleted", gone, 120)
    log(f"deleted: {len(owned)} owned objects gone ({', '.join(sorted({o.split('/')[0].split('.')[0] for o in owned}))}), no pods left")
    summary["deleted"] = len(owned)


def dashboards(c):
    """Runs every panel query of every shipped dashboard; returns {dashboard: (with data, panels, empty)}."""
    out = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        with_data, empty = 0, []
        panels = query_panels(d)
        for p in panels:
            n = 0
            for t in p.get("targets", []):
                n += len(c.query(fill(t["expr"], interval="5m")))
            if n:
                with_data += 1
            else:
                empty.append(p["title"])
        out[path.stem] = (with_data, len(panels), empty)
        log(f"dashboard {path.stem}: {with_data}/{len(panels)} panels with data" + (f"; empty: {empty}" if empty else ""))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    ap.add_argument("--reuse", action="store_true", help="run on the cluster already up (cluster.sh up)")
    args = ap.parse_args()
    state = Path(os.environ.get("LLMSERVE_CLUSTER_DIR", "/tmp/llmserve-cluster"))
    t_start = time.time()
    if not args.reuse and subprocess.run(["bash", str(HERE / "cluster.sh"), "up"]).returncode != 0:
        log("FAILED: the cluster did not come up (see above)")
        if not args.keep:
            subprocess.run(["bash", str(HERE / "cluster.sh"), "down"])
        sys.exit(1)
    env = dict(re.findall(r"^export (\w+)=(.*)$", (state / "env").read_text(), re.M))
    c = Cluster(env)
    summary = {"cluster_up_s": round(time.time() - t_start)}
    ok = False
    try:
        scenario(c, summary)
        ok = True
    except Failed as e:
        log(f"FAILED: {e}")
        for what in (["get", "llmapp,deploy,pods,hpa,servicemonitors", "-n", NS, "-o", "wide"],
                     ["get", "events", "-n", NS, "--sort-by=.lastTimestamp"]):
            print(c.kubectl(*what, check_rc=False).stdout[-3000:], flush=True)
    finally:
        print_summary(summary, ok, time.time() - t_start)
        if not args.keep:
            subprocess.run(["bash", str(HERE / "cluster.sh"), "down"])
    sys.exit(0 if ok else 1)


def print_summary(s, ok, seconds):
    print("\n==== cluster e2e summary ====")
    print(f"result: {'PASSED' if ok else 'FAILED'} in {seconds:.0f} s (cluster up in {s.get('cluster_up_s')} s, app Ready in {s.get('ready_after_s')} s)")
    print(f"OpenAI URL: {s.get('openai_url')}")
    print(f"pods scraped through ServiceMonitors: {', '.join(s.get('pods_scraped', [])) or '-'}")
    print(f"requests served: {s.get('requests', 0)} ({s.get('load_errors', 0)} load errors); per model pod: {s.get('served_per_pod', {})}")
    print(f"series scraped, by job: {s.get('series', {})}")
    print(f"alert rule groups loaded (rules): {s.get('rule_groups', {})}")
    for name, (n, total, empty) in (s.get("dashboards") or {}).items():
        print(f"dashboard {name}: {n}/{total} panels with data" + (f" (empty: {', '.join(empty)})" if empty else ""))
    if s.get("hpa_timeline"):
        print("HPA over time (s since load start: current/desired replicas, ongoing requests per pod, Ready pods):")
        for t, cur, des, metric, rdy in s["hpa_timeline"]:
            print(f"  {t:6.1f}s  {cur}/{des}  {metric}  ready={rdy}")
    if s.get("engine_off"):
        print(f"logEngineMetrics false: pods {s['engine_off']['pods']} export {len(s['engine_off']['service_series'])} service-level metric names and no vllm:*")
    if "deleted" in s:
        print(f"delete: {s['deleted']} owned objects removed")
    if s.get("left"):
        print(f"left after delete: {s['left']}")


if __name__ == "__main__":
    main()
