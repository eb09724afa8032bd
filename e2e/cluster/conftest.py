"""pytest set-up of the cluster end to end (test_cluster.py): one cluster for the run, brought up by
`cluster.sh up` and always taken down by `cluster.sh down`; the phases run in order, and once one
fails the later ones are skipped; the summary is printed at the end of the run, passed or not.
The phases run only when asked (--run-cluster or --reuse-cluster): a plain `pytest .` must not
assemble a Kubernetes node on the machine."""

import time

import pytest

from llmserve_testing.kube import Cluster

SUMMARY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("llmserve cluster end to end")
    group.addoption("--run-cluster", action="store_true", help="run the cluster end to end (as root: cluster.sh up)")
    group.addoption("--keep-cluster", action="store_true", help="leave the cluster (and the app) up afterwards")
    group.addoption("--reuse-cluster", action="store_true", help="run on the cluster already up (cluster.sh up)")


@pytest.fixture(scope="module")
def summary(request):
    """What the phases saw, printed at the end; `failed` names the phase that failed, if one did."""
    s = {"started": time.time()}
    request.config.stash[SUMMARY] = s
    return s


@pytest.fixture(scope="module")
def cluster(request, summary):
    """The cluster of cluster.sh (up unless --reuse-cluster; down at the end unless --keep-cluster)."""
    keep = request.config.getoption("--keep-cluster", default=False)
    reuse = request.config.getoption("--reuse-cluster", default=False)
    try:
        if not reuse and not Cluster.up():
            pytest.fail("the cluster did not come up (see cluster.sh's output)", pytrace=False)
        summary["cluster_up_s"] = round(time.time() - summary["started"])
        yield Cluster()
    finally:
        summary.setdefault("seconds", time.time() - summary["started"])
        if not keep:
            Cluster.down()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    s = item.config.stash.get(SUMMARY, None)
    if report.failed and s is not None:
        s.setdefault("failed", item.name)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    option = item.config.getoption
    if not (option("--run-cluster", default=False) or option("--reuse-cluster", default=False)):
        pytest.skip("the cluster end to end assembles a Kubernetes node here, as root: pass --run-cluster")
    s = item.config.stash.get(SUMMARY, {})
    if "failed" in s:
        pytest.skip(f"{s['failed']} failed: the later phases do not run")


def pytest_terminal_summary(terminalreporter, config):
    s = config.stash.get(SUMMARY, None)
    if s is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("cluster e2e summary")
    for line in s.get("diagnostics", []):
        write(line)
    ok = "failed" not in s and "seconds" in s
    result, seconds = "PASSED" if ok else "FAILED", s.get("seconds", 0)
    up, ready = s.get("cluster_up_s"), s.get("ready_after_s")
    write(f"result: {result} in {seconds:.0f} s (cluster up in {up} s, app Ready in {ready} s)")
    if "failed" in s:
        write(f"failed phase: {s['failed']}")
    write(f"OpenAI URL: {s.get('openai_url')}")
    write(f"pods scraped through ServiceMonitors: {', '.join(s.get('pods_scraped', [])) or '-'}")
    write(
        f"requests served: {s.get('requests', 0)} ({s.get('load_errors', 0)} load errors); "
        f"per model pod: {s.get('served_per_pod', {})}"
    )
    write(f"series scraped, by job: {s.get('series', {})}")
    if s.get("live_status"):
        ls = s["live_status"]
        write(
            f"status.serving under load: {ls['requestsPerSecond']} req/s (Prometheus "
            f"{ls['prometheusRequestsPerSecond']}), {ls['outputTokensPerSecond']} tok/s, "
            f"TTFT p95 {ls.get('ttftP95Seconds')} s, KV {ls.get('kvCachePercent')} %"
        )
    for metric, got in (s.get("new_signals") or {}).items():
        write(
            f"HPA on {metric}: {got['value']} per pod, 2 replicas after {got['scaled_up_s']} s; "
            f"lastScale: {got.get('lastScale')}"
        )
    if "isolation" in s:
        write(f"NetworkPolicy (selectors against the live pods; not enforced here): {s['isolation']}")
    if "tenants" in s:
        write(f"requests by tenant: {s['tenants']}; a removed key refused after {s.get('key_removed_s')} s")
    write(f"alert rule groups loaded (rules): {s.get('rule_groups', {})}")
    for name, (n, total, empty) in (s.get("dashboards") or {}).items():
        write(f"dashboard {name}: {n}/{total} panels with data" + (f" (empty: {', '.join(empty)})" if empty else ""))
    if s.get("hpa_timeline"):
        write("HPA over time (s since load start: current/desired replicas, ongoing requests per pod, Ready pods):")
        for t, cur, des, metric, rdy in s["hpa_timeline"]:
            write(f"  {t:6.1f}s  {cur}/{des}  {metric}  ready={rdy}")
    if s.get("engine_off"):
        off = s["engine_off"]
        write(
            f"logEngineMetrics false: pods {off['pods']} export {len(off['service_series'])} "
            "service-level metric names and no vllm:*"
        )
    for key, what in (("scale_down_streams", "scaling 2 -> 1"), ("rollout_streams", "the rollout")):
        if key in s:
            write(f"streams during {what}: {s[key][0]} complete, {s[key][1]} lost")
    if "deleted" in s:
        write(f"delete: {s['deleted']} owned objects removed")
    if s.get("left"):
        write(f"left after delete: {s['left']}")
