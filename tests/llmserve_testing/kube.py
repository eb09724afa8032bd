"""kubectl against the test control plane (etcd + kube-apiserver) or the assembled cluster."""

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from llmserve_testing.paths import CLUSTER, CRD, ROOT
from llmserve_testing.prometheus import PrometheusAPI


class Kubectl:
    """Runs `kubectl` (the binary at `exe`) on `kubeconfig`."""

    def __init__(self, exe, kubeconfig):
        self.exe, self.kubeconfig = str(exe), str(kubeconfig)

    def kubectl(self, *args, stdin=None, check=True):
        """kubectl's stdout; with `check`, a RuntimeError with its stderr when it fails."""
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        r = subprocess.run([self.exe, *args], input=stdin, env=env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def get(self, *args):
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply_crd(self, path=CRD):
        """Applies a CRD and waits until it is Established."""
        self.kubectl("apply", "--server-side", "-f", str(path))
        name = yaml.safe_load(Path(path).read_text())["metadata"]["name"]
        self.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


class ControlPlane(Kubectl):
    """etcd + kube-apiserver through tests/harness/control-plane.sh, stopped by `stop()` (and with
    this process: the script watches its pid)."""

    SCRIPT = ROOT / "tests/harness/control-plane.sh"

    def __init__(self):
        out = subprocess.run(["bash", str(self.SCRIPT), "bin"], check=True, capture_output=True, text=True).stdout
        self.bin = Path(out.strip())
        self.dir = tempfile.mkdtemp(prefix="llmserve-cp-")
        argv = ["bash", str(self.SCRIPT), "up", self.dir, str(os.getpid())]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            if line.startswith("ready "):
                super().__init__(self.bin / "kubectl", line.split(" ", 1)[1].strip())
                break
        else:
            raise RuntimeError("the control plane did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster(Kubectl):
    """The single-node cluster of e2e/cluster/cluster.sh, from the env file `cluster.sh up` writes
    (`export NAME=value` lines: K, KUBECONFIG, PROMETHEUS_URL, RELEASE_NS, ...)."""

    SCRIPT = CLUSTER / "cluster.sh"

    def __init__(self, state=None):
        state = Path(state or os.environ.get("LLMSERVE_CLUSTER_DIR", "/tmp/llmserve-cluster"))
        self.env = dict(re.findall(r"^export (\w+)=(.*)$", (state / "env").read_text(), re.M))
        super().__init__(self.env["K"], self.env["KUBECONFIG"])
        self.prometheus = PrometheusAPI(self.env["PROMETHEUS_URL"], timeout=10)

    @classmethod
    def up(cls):
        """`cluster.sh up` (its output goes to ours); True when the cluster came up."""
        return subprocess.run(["bash", str(cls.SCRIPT), "up"]).returncode == 0

    @classmethod
    def down(cls):
        subprocess.run(["bash", str(cls.SCRIPT), "down"])
