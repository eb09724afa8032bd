"""Processes for the observability tests: real llmserve-server and llmserve-router binaries, the
operator on the real test API server, and Prometheus (Debian's package) scraping them."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = (ROOT.parent / "shared" / "models" / "stories260k").resolve()
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/llmserve/target"))


def binary(name):
    env = f"LLMSERVE_{name.removeprefix('llmserve-').upper()}_BIN"
    path = Path(os.environ.get(env, TARGET / "debug" / name))
    assert path.is_file(), f"{path} not built (cargo build -p {name}, or set {env})"
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_ok(url, seconds=60):
    deadline = time.time() + seconds
    while True:
        try:
            if get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{url} not ready in {seconds} s")
        time.sleep(0.1)


class Proc:
    """A child process on a free port, stopped on exit."""

    def __init__(self, name, argv, port, health="/health", env=None):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"llmserve-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        if health:
            try:
                wait_ok(self.url + health)
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"{name} did not start; log: {Path(self.log.name).read_text()[-2000:]}")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def server(name, model, *extra):
    port = free_port()
    argv = [binary("llmserve-server"), "--model", str(MODEL), "--served-model-name", model, "--port", str(port), "--log-format", "text", *extra]
    return Proc(name, argv, port, env={"RUST_LOG": "warn"})


def router(name, backends, *extra):
    port = free_port()
    argv = [binary("llmserve-router"), "--port", str(port), "--log-format", "text", *extra]
    for model, url in backends:
        argv += ["--backend", f"{model}={url}"]
    return Proc(name, argv, port, env={"RUST_LOG": "warn"})


class Prometheus:
    """Prometheus scraping `targets` every second: [(job, url, labels)]. The labels stand in for
    what the operator's ServiceMonitors make the Prometheus Operator attach (namespace, pod,
    llmserve_app)."""

    def __init__(self, targets):
        exe = shutil.which("prometheus")
        assert exe, "prometheus not installed (Debian package `prometheus`; tests/run.sh installs it)"
        self.dir = tempfile.mkdtemp(prefix="llmserve-prom-")
        scrape = []
        for job, url, labels in targets:
            scrape.append({
                "job_name": job, "scrape_interval": "1s", "scrape_timeout": "900ms",
                "static_configs": [{"targets": [url.removeprefix("http://")], "labels": labels}],
            })
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape}
        path = Path(self.dir) / "prometheus.yml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        port = free_port()
        self.proc = Proc("prometheus", [exe, f"--config.file={path}", f"--storage.tsdb.path={self.dir}/data",
                                        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], port, health="/-/ready")
        self.url = self.proc.url
        # Prometheus applies new targets at most every 5 s; wait for every target's first scrape.
        deadline = time.time() + 30
        while set(self.targets_up()) != {job for job, _, _ in targets} or "unknown" in self.targets_up().values():
            if time.time() > deadline:
                raise TimeoutError(f"targets not scraped: {self.targets_up()}")
            time.sleep(0.2)

    def query(self, expr):
        q = urllib.parse.urlencode({"query": expr})
        try:
            status, body = get(f"{self.url}/api/v1/query?{q}", timeout=30)
        except urllib.error.HTTPError as e:
            return {"status": "error", "error": e.read().decode()}
        return json.loads(body)

    def query_at(self, expr, t):
        q = urllib.parse.urlencode({"query": expr, "time": f"{t:.3f}"})
        return json.loads(get(f"{self.url}/api/v1/query?{q}", timeout=30)[1])

    def label_values(self, label, match):
        q = urllib.parse.urlencode({"match[]": match})
        return json.loads(get(f"{self.url}/api/v1/label/{label}/values?{q}")[1])["data"]

    def targets_up(self):
        data = json.loads(get(f"{self.url}/api/v1/targets")[1])["data"]["activeTargets"]
        return {t["scrapePool"]: t["health"] for t in data}

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ControlPlane:
    """etcd + kube-apiserver through tests/harness/control-plane.sh (torn down with this process)."""

    def __init__(self):
        script = ROOT / "tests/harness/control-plane.sh"
        self.bin = Path(subprocess.run(["bash", str(script), "bin"], check=True, capture_output=True, text=True).stdout.strip())
        self.dir = tempfile.mkdtemp(prefix="llmserve-cp-")
        self.proc = subprocess.Popen(["bash", str(script), "up", self.dir, str(os.getpid())], stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            if line.startswith("ready "):
                self.kubeconfig = line.split(" ", 1)[1].strip()
                break
        else:
            raise RuntimeError("the control plane did not start")

    def kubectl(self, *args, stdin=None):
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        r = subprocess.run([str(self.bin / "kubectl"), *args], input=stdin, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
