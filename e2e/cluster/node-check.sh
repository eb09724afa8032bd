#!/usr/bin/env bash
# First step of the cluster end to end (issue 7, in progress): proves that a real kubelet with
# containerd and runc runs pods on this machine. As root: builds what it needs (e2e/cluster/build.sh,
# Debian's runc and CNI plugins), starts etcd + kube-apiserver (the test harness), containerd 2.x
# and a kubelet on a CNI bridge, imports a pause image written without a container engine
# (e2e/cluster/oci.py), runs a pause pod and then the serving image from a Deployment (scheduler
# and controller-manager in the loop), sends it an OpenAI completion over the pod network, and
# tears everything down (also on failure): processes, mounts, network namespaces, the bridge,
# kubelet's iptables chains.
#
#   sudo bash e2e/cluster/node-check.sh
#
# What this machine needs, found the hard way (a Firecracker VM, kernel 6.18, cgroup v1):
#   - kubelet `failCgroupV1: false` (Kubernetes 1.35 refuses cgroup v1 otherwise), cgroupfs driver;
#   - containerd `restrict_oom_score_adj = true`: the VM denies lowering oom_score_adj, and runc
#     then dies with "can't get final child's PID from pipe: EOF" for every pod sandbox;
#   - runc with seccomp (Debian's 1.1.5 has libseccomp); a runc built without it refuses the
#     RuntimeDefault profile containerd gives sandboxes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
command -v runc >/dev/null && [[ -x /usr/lib/cni/bridge ]] || {
  echo "[node-check] installing runc and containernetworking-plugins from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc containernetworking-plugins >/dev/null
}
B="$(bash "$ROOT/e2e/cluster/build.sh")"
CP_BIN="$(bash "$ROOT/tests/harness/build-control-plane.sh" | tail -1)"
W="$(mktemp -d /tmp/llmserve-node-XXXXXX)"
BRIDGE=llmserve0
netns_before="$(ls /run/netns 2>/dev/null || true)"
pids=()

teardown() {
  set +e
  local ctr="$B/ctr --address $W/containerd.sock -n k8s.io"
  [[ -n "${kubelet_pid:-}" ]] && kill "$kubelet_pid" 2>/dev/null && wait "$kubelet_pid" 2>/dev/null
  for t in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks kill -s SIGKILL "$t"; done
  sleep 1
  for t in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks delete "$t"; done
  for c in $($ctr containers ls -q 2>/dev/null); do $ctr containers delete "$c"; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  pkill -f "containerd-shim-runc-v2 .*-address $W/containerd.sock" 2>/dev/null
  sleep 1
  grep -o " $W[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  for n in $(ls /run/netns 2>/dev/null); do
    grep -qx "$n" <<<"$netns_before" || { umount "/run/netns/$n" 2>/dev/null; rm -f "/run/netns/$n"; }
  done
  ip link del "$BRIDGE" 2>/dev/null
  iptables -D INPUT -j KUBE-FIREWALL 2>/dev/null; iptables -D OUTPUT -j KUBE-FIREWALL 2>/dev/null
  iptables -F KUBE-FIREWALL 2>/dev/null; iptables -X KUBE-FIREWALL 2>/dev/null
  for t in mangle nat filter; do
    for chain in KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do iptables -t $t -X $chain 2>/dev/null; ip6tables -t $t -X $chain 2>/dev/null; done
  done
  rm -rf "$W"
  echo "[node-check] torn down" >&2
}
trap teardown EXIT

# === control plane (etcd + kube-apiserver, the harness's) ===
sleep infinity & watch=$!; pids+=("$watch")
bash "$ROOT/tests/harness/control-plane.sh" up "$W/cp" "$watch" > "$W/cp.out" &
pids+=($!)
for _ in $(seq 120); do grep -q '^ready ' "$W/cp.out" 2>/dev/null && break; sleep 1; done
KUBECONFIG="$(sed -n 's/^ready //p' "$W/cp.out")"; export KUBECONFIG
[[ -n "$KUBECONFIG" ]] || { echo "control plane did not start" >&2; exit 1; }
K="$CP_BIN/kubectl"

# === scheduler and controller-manager (Deployments, ReplicaSets, scheduling) ===
"$B/kube-scheduler" --kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false > "$W/kube-scheduler.log" 2>&1 &
pids+=($!)
"$B/kube-controller-manager" --kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --use-service-account-credentials=false \
  --service-account-private-key-file "$W/cp/pki/sa.key" --root-ca-file "$W/cp/pki/ca.crt" \
  --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' > "$W/kube-controller-manager.log" 2>&1 &
pids+=($!)

# === containerd (CRI), its runc and CNI ===
mkdir -p "$W/net.d"
cat > "$W/net.d/10-llmserve.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "llmserve", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "dataDir": "$W/ipam"}},
  {"type": "loopback"}]}
JSON
cat > "$W/containerd.toml" <<TOML
version = 3
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$W/containerd.sock"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$W/net.d"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
TOML
PATH="$B:$PATH" "$B/containerd" --config "$W/containerd.toml" > "$W/containerd.log" 2>&1 &
pids+=($!)
for _ in $(seq 30); do [[ -S "$W/containerd.sock" ]] && break; sleep 0.5; done

# === images, written without a container engine ===
mkdir -p "$W/pause" && cat > "$W/pause/main.go" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
GO
printf 'module pause\n\ngo 1.24\n' > "$W/pause/go.mod"
(cd "$W/pause" && CGO_ENABLED=0 go build -ldflags "-s -w" -o pause .)
python3 "$ROOT/e2e/cluster/oci.py" "$W/pause.tar" registry.k8s.io/pause:3.10 --entrypoint /pause --file "/pause=$W/pause/pause" >&2
"$B/ctr" --address "$W/containerd.sock" -n k8s.io images import "$W/pause.tar" >/dev/null

# === kubelet ===
kport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$W/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$W/containerd.sock
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
address: 127.0.0.1
port: $kport
readOnlyPort: 0
failSwapOn: false
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podCIDR: 10.244.0.0/24
YAML
"$B/kubelet" --config "$W/kubelet.yaml" --kubeconfig "$KUBECONFIG" --hostname-override llmserve-node \
  --root-dir "$W/kubelet" --cert-dir "$W/kubelet-pki" --v=1 > "$W/kubelet.log" 2>&1 &
kubelet_pid=$!
for _ in $(seq 60); do "$K" get node llmserve-node >/dev/null 2>&1 && break; sleep 1; done
"$K" wait --for=condition=Ready node/llmserve-node --timeout=90s >&2

# === one pod ===
"$K" create serviceaccount default >/dev/null 2>&1 || true
"$K" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: node-check}
spec:
  nodeName: llmserve-node
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: pause
      image: registry.k8s.io/pause:3.10
      imagePullPolicy: Never
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
YAML
if "$K" wait --for=condition=Ready pod/node-check --timeout=120s >&2; then
  "$K" get nodes -o wide
  "$K" get pod node-check -o wide
  echo "node-check: a pod runs on this machine (kubelet $("$B/kubelet" --version | cut -d' ' -f2), containerd $("$B/containerd" --version | cut -d' ' -f3), $(runc --version | head -1))"
else
  "$K" get events --sort-by=.lastTimestamp | tail -5
  echo "node-check: the pod did not start; see above" >&2
  exit 1
fi

# === the serving image: llmserve-server and stories260k, answering from a pod ===
(cd "$ROOT" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/llmserve/target}" cargo build --release --locked -q -p llmserve-server --bin llmserve-server)
server="${CARGO_TARGET_DIR:-$HOME/.cache/llmserve/target}/release/llmserve-server"
model="$ROOT/../shared/models/stories260k"
files=(--file "/usr/local/bin/llmserve-server=$server")
for lib in $(ldd "$server" | grep -o '/[^ ]*'); do files+=(--file "$lib=$lib"); done
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
  files+=(--file "/models/stories260k/$f=$model/$f")
done
python3 "$ROOT/e2e/cluster/oci.py" "$W/server.tar" llmserve.dev/llmserve-server:dev --entrypoint /usr/local/bin/llmserve-server "${files[@]}" >&2
"$B/ctr" --address "$W/containerd.sock" -n k8s.io images import "$W/server.tar" >/dev/null
"$K" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: server-check}
spec:
  replicas: 1
  selector: {matchLabels: {app: server-check}}
  template:
    metadata: {labels: {app: server-check}}
    spec:
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: server
          image: llmserve.dev/llmserve-server:dev
          imagePullPolicy: Never
          args: [--model, /models/stories260k, --host, 0.0.0.0, --port, "8000", --log-format, text]
          readinessProbe: {httpGet: {path: /health, port: 8000}, periodSeconds: 1}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
YAML
if "$K" rollout status deployment/server-check --timeout=60s >&2; then
  ip="$("$K" get pod -l app=server-check -o jsonpath='{.items[0].status.podIP}')"
  curl -fsS "http://$ip:8000/v1/completions" -H 'content-type: application/json' \
    -d '{"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}'
  echo
  echo "node-check: llmserve-server, scheduled from a Deployment, answers from pod $ip"
else
  "$K" get deploy,rs,pods -o wide
  "$K" get events --sort-by=.lastTimestamp | tail -8
  tail -n 5 "$W/kube-controller-manager.log"; grep -v "^I.*reflector\|Watch close" "$W/kube-scheduler.log" | tail -n 25
  exit 1
fi
