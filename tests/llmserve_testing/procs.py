"""llmserve's processes (server, router, operator) on free ports, logging to a file, stopped on exit."""

import os
import subprocess
import tempfile
from pathlib import Path

from llmserve_testing.net import free_port, wait_ok
from llmserve_testing.paths import MODEL, binary


class Proc:
    """A child process serving on `port`, its output in a log file. With `health`, waits until that
    path answers 200 (failing with the log's tail if it does not). A context manager that stops it."""

    def __init__(self, name, argv, port, health="/health", env=None, unset=(), seconds=60):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.NamedTemporaryFile(prefix=f"llmserve-{name}-", suffix=".log", delete=False).name)
        environ = {k: v for k, v in os.environ.items() if k not in unset}
        with self.log.open("w") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**environ, **(env or {})})
        if health:
            self.wait_ready(health, seconds)

    def wait_ready(self, health="/health", seconds=60):
        try:
            wait_ok(self.url + health, seconds, alive=lambda: self.process.poll() is None)
        except (TimeoutError, ProcessLookupError) as e:
            self.stop()
            raise RuntimeError(f"{self.name} did not start ({e}); log: {self.log_text()[-2000:]}") from None

    def log_text(self):
        return self.log.read_text()

    def stop(self):
        """SIGTERM, then SIGKILL after 15 s; returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def server(name, *extra, model=MODEL, served_model_name=None, rust_log="warn", profile="debug", **kw):
    """llmserve-server on `model` (stories260k by default); `rust_log=None` keeps RUST_LOG as it is."""
    port = free_port()
    argv = [binary("llmserve-server", profile), "--model", str(model)]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    argv += ["--port", str(port), "--log-format", "text", *extra]
    env = {**kw.pop("env", {}), **({"RUST_LOG": rust_log} if rust_log else {})}
    return Proc(name, argv, port, env=env, **kw)


def router(name, backends, *extra, rust_log="warn", profile="debug", **kw):
    """llmserve-router in front of `backends`: [(model, url)]; `rust_log=None` keeps RUST_LOG as it is."""
    port = free_port()
    argv = [binary("llmserve-router", profile), "--port", str(port), "--log-format", "text", *extra]
    for model, url in backends:
        argv += ["--backend", f"{model}={url}"]
    env = {**kw.pop("env", {}), **({"RUST_LOG": rust_log} if rust_log else {})}
    return Proc(name, argv, port, env=env, **kw)


def operator(name, kubeconfig, *args, env=None, **kw):
    """llmserve-operator on `kubeconfig`, its metrics and probes on a free port (`--metrics-addr`)."""
    port = free_port()
    argv = [binary("llmserve-operator"), f"--metrics-addr=127.0.0.1:{port}", *args]
    env = {"KUBECONFIG": kubeconfig, "RUST_LOG": "warn", **(env or {})}
    return Proc(name, argv, port, health=kw.pop("health", "/readyz"), env=env, **kw)
