"""Prometheus's HTTP API, and a local Prometheus (Debian's package) scraping given targets."""

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
from pathlib import Path

from llmserve_testing.net import free_port, get
from llmserve_testing.procs import Proc


class PrometheusError(RuntimeError):
    """An answer of the HTTP API whose status is not `success`."""


class PrometheusAPI:
    """Client of the HTTP API (`/api/v1/...`) of the Prometheus at `url`."""

    def __init__(self, url, timeout=30):
        self.url, self.timeout = url.rstrip("/"), timeout

    def answer(self, path, **params):
        """The whole JSON answer of `/api/v1/{path}`; an error answer (HTTP 4xx/5xx) is returned too."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            return json.loads(get(f"{self.url}/api/v1/{path}{query}", timeout=self.timeout)[1])
        except urllib.error.HTTPError as e:
            return {"status": "error", "error": e.read().decode()}

    def data(self, path, **params):
        """The `data` of a successful answer; PrometheusError otherwise."""
        body = self.answer(path, **params)
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus {path} failed: {body}")
        return body["data"]

    def query(self, expr, at=None):
        """The whole answer of an instant query (at `at`, seconds since the epoch, or now)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        return self.answer("query", **params)

    def series(self, expr):
        """The result vector of an instant query; PrometheusError when it fails."""
        return self.data("query", query=expr)["result"]

    def label_values(self, label, match):
        return self.data(f"label/{label}/values", **{"match[]": match})

    def targets(self):
        return self.data("targets", state="active")["activeTargets"]

    def targets_up(self):
        """{scrape pool: health} of the active targets."""
        return {t["scrapePool"]: t["health"] for t in self.targets()}

    def rule_groups(self):
        return self.data("rules")["groups"]


class Prometheus(PrometheusAPI):
    """Prometheus scraping `targets` every second: [(job, url, labels)]. The labels stand in for
    what the operator's ServiceMonitors make the Prometheus Operator attach (namespace, pod,
    llmserve_app). Waits until every target was scraped once; `stop()` removes its data."""

    def __init__(self, targets):
        exe = shutil.which("prometheus")
        assert exe, "prometheus not installed (Debian package `prometheus`; tests/run.sh installs it)"
        self.dir = tempfile.mkdtemp(prefix="llmserve-prom-")
        scrape = [
            {
                "job_name": job,
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "static_configs": [{"targets": [url.removeprefix("http://")], "labels": labels}],
            }
            for job, url, labels in targets
        ]
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape}
        path = Path(self.dir) / "prometheus.yml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        port = free_port()
        argv = [
            exe,
            f"--config.file={path}",
            f"--storage.tsdb.path={self.dir}/data",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        self.proc = Proc("prometheus", argv, port, health="/-/ready")
        super().__init__(self.proc.url)
        # Prometheus applies new targets at most every 5 s; wait for every target's first scrape.
        jobs = {job for job, _, _ in targets}
        deadline = time.time() + 30
        while set(self.targets_up()) != jobs or "unknown" in self.targets_up().values():
            if time.time() > deadline:
                self.stop()
                raise TimeoutError(f"targets not scraped: {self.targets_up()}")
            time.sleep(0.2)

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
