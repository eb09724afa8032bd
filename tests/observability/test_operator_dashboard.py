"""Every panel of the operator dashboard against a real Prometheus scraping the real operator,
which reconciles applications on the real test API server."""

import json
import time

from generate import fill, query_panels
from llmserve_testing import procs
from llmserve_testing.paths import DASHBOARDS
from llmserve_testing.prometheus import Prometheus

VALID = """
apiVersion: llmserve.dev/v1alpha1
kind: LlmApplication
metadata: {name: stories, namespace: default}
spec:
  models:
    - modelLoadingConfig: {modelId: stories, modelSource: /models/stories260k}
"""
# Schema-valid, refused by the operator (two model ids that differ only in punctuation would name
# the same objects): an `invalid` reconcile.
INVALID = """
apiVersion: llmserve.dev/v1alpha1
kind: LlmApplication
metadata: {name: bad-name, namespace: default}
spec:
  models:
    - modelLoadingConfig: {modelId: a.b, modelSource: /models/m}
    - modelLoadingConfig: {modelId: a-b, modelSource: /models/m}
"""


def test_every_operator_panel_has_data(control_plane):
    cp = control_plane  # the LlmApplication CRD is Established
    cp.kubectl("create", "namespace", "llmserve-system")
    args = ["--namespace=llmserve-system", "--usage-interval-seconds=1", "--log-format=text"]
    with (
        procs.operator("operator", cp.kubeconfig, *args) as op,
        Prometheus([("operator", op.url, {"namespace": "llmserve-system", "pod": "llmserve-operator-0"})]) as prom,
    ):
        # Scraped once before any reconcile, so the rates see every one of them.
        deadline = time.time() + 30
        while prom.targets_up().get("operator") != "up" and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        cp.kubectl("apply", "-f", "-", stdin=VALID)
        cp.kubectl("apply", "-f", "-", stdin=INVALID)
        time.sleep(3)
        cp.kubectl("apply", "-f", "-", stdin=VALID.replace("/models/stories260k", "/models/stories260k-v2"))
        time.sleep(6)
        d = json.loads((DASHBOARDS / "llmserve-operator.json").read_text())
        failures = []
        print("\n| panel | query | series |\n|---|---|---:|")
        for p in query_panels(d):
            for t in p["targets"]:
                expr = fill(t["expr"])
                res = prom.query(expr)
                n = len(res["data"]["result"]) if res["status"] == "success" else -1
                print(f"| {p['title']} | {t['refId']} | {n} |")
                if n <= 0:
                    failures.append(f"{p['title']}: {res.get('error') or 'no series'}: {expr}")
        assert not failures, "\n".join(failures)
        reconciles = prom.query("llmserve_operator_reconciles_total")["data"]["result"]
        results = {r["metric"]["result"]: float(r["value"][1]) for r in reconciles}
        assert results["success"] > 0 and results["invalid"] > 0, results
        usage = prom.query("llmserve_usage_applications")["data"]["result"]
        apps = {r["metric"]["kind"]: float(r["value"][1]) for r in usage}
        assert apps == {"applications": 2.0, "models": 3.0}, apps
