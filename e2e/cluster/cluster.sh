#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, assembled from components, with llmserve and its
# monitoring installed the way a user installs them. As root:
#
#   bash e2e/cluster/cluster.sh up      # builds what it needs (cached), starts it all, prints URLs
#   bash e2e/cluster/cluster.sh down    # tears it all down; safe to run any number of times
#
# What runs (all from pinned versions, built or installed by e2e/cluster/build.sh and this script):
#   etcd, kube-apiserver (with the aggregation layer), kube-controller-manager (HPA every 5 s),
#   kube-scheduler, kube-proxy (iptables), containerd 2.x + Debian's runc, a kubelet on the CNI
#   bridge `llmserve0` (10.244.0.0/24, Debian's containernetworking-plugins); beside the cluster,
#   prometheus-operator; in it, the Prometheus that prometheus-operator runs from its Prometheus
#   resource (Prometheus 3.5 built with Kubernetes service discovery, and the config reloader),
#   prometheus-adapter serving custom.metrics.k8s.io, and the llmserve Helm chart (the operator).
#   Nothing enforces NetworkPolicies: kube-network-policies (kubernetes-sigs) needs the kernel's
#   nft `queue` expression, which this machine's kernel is built without (CONFIG_NFT_QUEUE), and
#   kube-router is served by the Go module proxy only at a release with reported security flaws.
#   No CoreDNS: nothing here resolves Service names (the router finds replicas through
#   EndpointSlices, the adapter is given Prometheus's ClusterIP), so pods use the host's resolv.conf.
# Every image is written without a container engine (e2e/cluster/oci.py: binaries, the shared
# libraries `ldd` names, stories260k baked into the serving image) and imported into containerd.
#
# State lives in $LLMSERVE_CLUSTER_DIR (default /tmp/llmserve-cluster); `up` writes its `env` file
# (KUBECONFIG, K = kubectl, PROMETHEUS_URL, ...). Nothing outside loopback, the bridge and that
# directory is touched, but for kube-proxy's and the kubelet's iptables chains, the kubelet's links in
# /var/log/containers, and the host settings pods need when they are off: net.ipv4.ip_forward,
# br_netfilter and net.bridge.bridge-nf-call-iptables (`up` turns them on and notes their previous
# values in the state directory; `down` removes the rest and puts those back).
#
# What this machine needed, found the hard way (a Firecracker VM, kernel 6.18, cgroup v1):
#   - kubelet `failCgroupV1: false` (Kubernetes 1.35 refuses cgroup v1 otherwise), cgroupfs driver;
#   - containerd `restrict_oom_score_adj = true`: the VM denies lowering oom_score_adj, and runc
#     then dies with "can't get final child's PID from pipe: EOF" for every pod sandbox;
#   - runc with seccomp (Debian's 1.1.5 has libseccomp); a runc built without it refuses the
#     RuntimeDefault profile containerd gives sandboxes;
#   - the node-lifecycle controller, else the node's not-ready taint never goes.
set -euo pipefail
LOG_TAG=cluster
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/harness/lib.sh"
D="$LLMSERVE_CLUSTER_DIR"
PKI="$D/pki"
BRIDGE=llmserve0
GW=10.244.0.1
POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/16
API_PORT=6443
NODE=llmserve-node
TAG=e2e
RELEASE_NS=llmserve-system
# Set by the steps of `up`: bin directories, helm, kubectl, the admin token, Prometheus's address.
B="" CP="" HELM="" K="" TOKEN="" PROM_IP="" STARTED=$SECONDS

# Starts a daemon in its own session, its pid kept for `down`.
daemon() {  # NAME CMD...
  local name="$1"; shift
  setsid "$@" > "$D/log/$name.log" 2>&1 < /dev/null &
  echo "$! $name" >> "$D/pids"
}

# Signals the daemons `daemon` started (only NAME's, when given).
signal_daemons() {  # SIGNAL [NAME]
  [[ -f "$D/pids" ]] || return 0
  local pid name
  while read -r pid name; do
    if [[ -z "${2:-}" || "$name" == "$2" ]]; then kill "-$1" "$pid" 2>/dev/null; fi
  done < "$D/pids"
}

# containerd's own client, on the cluster's containerd and Kubernetes' namespace.
ctr() { "$B/ctr" --address "$D/containerd.sock" -n k8s.io "$@"; }

# === host settings: changed only when off, put back by `down` ===

# Sets a sysctl, first noting its value in $D/host-sysctls for `down` to put back.
set_sysctl() {  # KEY VALUE
  local key="$1" value="$2" path="/proc/sys/${1//.//}" was
  was="$(cat "$path")"
  [[ "$was" != "$value" ]] || return 0
  echo "$key $was" >> "$D/host-sysctls"
  echo "$value" > "$path" || die "could not set $key to $value"
  log "set $key to $value (it was $was; \`cluster.sh down\` puts it back)"
}

# Loads a kernel module unless its sysctl directory is there, noting it in $D/host-modules for `down`.
load_module() {  # MODULE SYSCTL_DIR
  [[ ! -d "$2" ]] || return 0
  modprobe "$1" 2>/dev/null || { log "could not load $1"; return 0; }
  echo "$1" >> "$D/host-modules"
  log "loaded the $1 module (\`cluster.sh down\` unloads it)"
}

# Puts back what set_sysctl and load_module changed, newest first.
restore_host() {
  local key was module
  if [[ -f "$D/host-sysctls" ]]; then
    tac "$D/host-sysctls" | while read -r key was; do
      echo "$was" > "/proc/sys/${key//.//}" && log "put $key back to $was"
    done
  fi
  if [[ -f "$D/host-modules" ]]; then
    tac "$D/host-modules" | while read -r module; do
      modprobe -r "$module" && log "unloaded the $module module"
    done
  fi
}

# === down ===

# Stops the pods' containers through containerd, then every daemon, then unmounts what they left.
stop_all() {
  # The kubelet first, so it does not restart what we stop next.
  signal_daemons TERM kubelet
  sleep 1
  if [[ -S "$D/containerd.sock" ]]; then
    local t c
    for t in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$t" 2>/dev/null; done
    sleep 1
    for t in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$t" >/dev/null 2>&1; done
    for c in $(ctr containers ls -q 2>/dev/null); do ctr containers delete "$c" >/dev/null 2>&1; done
  fi
  signal_daemons TERM
  pkill -f "containerd-shim-runc-v2 .*-address $D/containerd.sock" 2>/dev/null
  sleep 2
  signal_daemons KILL
  grep -o " $D/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
}

# Removes the pods' network namespaces, the bridge, and the iptables chains and rules made for them.
clean_network() {
  # Network namespaces the CNI made for pods (their names are the ones containerd gives: cni-*).
  local n ipt t chain
  for n in /run/netns/cni-*; do
    [[ -e "$n" ]] || continue
    # Captured, not piped to `grep -q`: under pipefail, ip's SIGPIPE would fail the test at random.
    [[ "$(ip netns exec "${n##*/}" ip -o addr 2>/dev/null)" == *" 10.244.0."* ]] || continue
    umount "$n" 2>/dev/null; rm -f "$n"
  done
  [[ -x "$B/kube-proxy" ]] && "$B/kube-proxy" --cleanup >/dev/null 2>&1
  ip link del "$BRIDGE" 2>/dev/null
  # The kubelet's chains, in both families.
  for ipt in iptables ip6tables; do
    $ipt -D INPUT -j KUBE-FIREWALL 2>/dev/null; $ipt -D OUTPUT -j KUBE-FIREWALL 2>/dev/null
    $ipt -F KUBE-FIREWALL 2>/dev/null; $ipt -X KUBE-FIREWALL 2>/dev/null
    for t in mangle nat filter; do
      for chain in KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT KUBE-PROXY-CANARY; do
        $ipt -t $t -F $chain 2>/dev/null; $ipt -t $t -X $chain 2>/dev/null
      done
    done
  done
  # Rules the CNI bridge plugin adds for the pod range, should any be left.
  iptables-save -t nat 2>/dev/null | grep -- "-s $POD_CIDR" | grep '^-A POSTROUTING' | sed 's/^-A/-D/' \
    | while read -r rule; do eval "iptables -t nat $rule" 2>/dev/null; done
}

down() {
  local -  # `set +e` stays in here: `up` calls this too
  set +e
  [[ -d "$D" ]] || { log "nothing to tear down"; return 0; }
  B="$(cat "$D/bin-dir" 2>/dev/null)"
  stop_all
  clean_network
  restore_host
  # The kubelet's links to container logs (its log files themselves are in $D/pod-logs).
  find /var/log/containers -maxdepth 1 -lname "$D/*" -delete 2>/dev/null
  rm -rf "$D"
  log "torn down"
}

# === helpers of up ===

# A key and a certificate signed by CA, both in $PKI.
cert() {  # NAME SUBJECT CA EXT
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
  printf '%s\n' "$4" > "$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/$3.crt" -CAkey "$PKI/$3.key" -CAcreateserial -days 2 \
    -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" 2>/dev/null
}

# An OCI image of files on this machine: a binary, the shared libraries it links, more files.
image() {  # NAME:TAG ENTRYPOINT_BINARY_DST=SRC [--file DST=SRC ...]
  local name="$1" entry="$2"; shift 2
  local dst="${entry%%=*}" src="${entry#*=}"
  local files=(--file "$entry") lib
  for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do files+=(--file "$lib=$lib"); done
  local tar; tar="$D/images/$(basename "${name%%:*}").tar"
  python3 "$ROOT/e2e/cluster/oci.py" "$tar" "$name" --entrypoint "$dst" "${files[@]}" "$@" >&2
  ctr images import "$tar" >/dev/null
}

# The pause binary every pod sandbox runs: waits for SIGTERM or SIGINT.
pause_binary() {
  mkdir -p "$D/pause" && cat > "$D/pause/main.go" <<'GO'
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
  printf 'module pause\n\ngo 1.24\n' > "$D/pause/go.mod"
  (cd "$D/pause" && CGO_ENABLED=0 go build -ldflags "-s -w" -o pause .)
}

# Prometheus, run by prometheus-operator from its Prometheus resource, and the RBAC it needs.
prometheus_manifest() {
  cat <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: monitoring}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: llmserve-e2e-prometheus}
rules:
  - apiGroups: [""]
    resources: [nodes, nodes/metrics, services, endpoints, pods]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get]
  - nonResourceURLs: [/metrics]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: llmserve-e2e-prometheus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: llmserve-e2e-prometheus}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: monitoring}]
---
apiVersion: monitoring.coreos.com/v1
kind: Prometheus
metadata: {name: e2e, namespace: monitoring}
spec:
  image: llmserve.dev/prometheus:$TAG
  version: v3.5.0
  imagePullPolicy: Never
  replicas: 1
  serviceAccountName: prometheus
  serviceMonitorSelector: {}
  serviceMonitorNamespaceSelector: {}
  ruleSelector: {}
  ruleNamespaceSelector: {}
  scrapeInterval: 5s
  evaluationInterval: 5s
  resources: {requests: {cpu: 100m, memory: 200Mi}}
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}
---
apiVersion: v1
kind: Service
metadata: {name: prometheus, namespace: monitoring}
spec:
  selector: {prometheus: e2e}
  ports: [{name: web, port: 9090, targetPort: 9090}]
YAML
}

# prometheus-adapter, configured from the ConfigMap the chart ships, serving custom.metrics.k8s.io.
adapter_manifest() {
  cat <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus-adapter, namespace: $RELEASE_NS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: llmserve-e2e-adapter-auth-delegator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: $RELEASE_NS}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: llmserve-e2e-adapter-auth-reader, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: $RELEASE_NS}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: llmserve-e2e-adapter}
rules:
  - apiGroups: [""]
    resources: [namespaces, pods, services, nodes, configmaps]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: llmserve-e2e-adapter}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: llmserve-e2e-adapter}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: $RELEASE_NS}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: prometheus-adapter, namespace: $RELEASE_NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: prometheus-adapter}}
  template:
    metadata: {labels: {app: prometheus-adapter}}
    spec:
      serviceAccountName: prometheus-adapter
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: adapter
          image: llmserve.dev/prometheus-adapter:$TAG
          imagePullPolicy: Never
          args:
            - --secure-port=6443
            - --cert-dir=/tmp/cert
            - --prometheus-url=http://$PROM_IP:9090
            # Not below the ServiceMonitors' 15 s interval: series seen in no scrape since the last
            # relist drop out, and the HPA meets "could not find the metric" every other sync.
            - --metrics-relist-interval=30s
            - --config=/etc/adapter/config.yaml
            - --v=2
          ports: [{containerPort: 6443, name: https}]
          resources: {requests: {cpu: 50m, memory: 64Mi}}
          readinessProbe: {httpGet: {path: /readyz, port: https, scheme: HTTPS}, periodSeconds: 2}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
          volumeMounts: [{name: config, mountPath: /etc/adapter}, {name: tmp, mountPath: /tmp}]
      volumes:
        - {name: config, configMap: {name: llmserve-prometheus-adapter}}
        - {name: tmp, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata: {name: prometheus-adapter, namespace: $RELEASE_NS}
spec:
  selector: {app: prometheus-adapter}
  ports: [{name: https, port: 443, targetPort: 6443}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.custom.metrics.k8s.io}
spec:
  group: custom.metrics.k8s.io
  version: v1beta1
  service: {name: prometheus-adapter, namespace: $RELEASE_NS, port: 443}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
YAML
}

# === the steps of up ===

# Root, no cluster left over, the Debian packages it runs, and disk space.
preflight() {
  require_root "the kubelet, containerd and kube-proxy need it"
  if [[ -d "$D" ]]; then log "a cluster is already in $D: tearing it down first"; down; fi
  local need=() t
  command -v runc >/dev/null || need+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  for t in conntrack iptables openssl curl; do command -v "$t" >/dev/null || need+=("$t"); done
  ((${#need[@]} == 0)) || apt_install "${need[@]}"
  # The kubelet taints a node short of disk (disk-pressure) and then nothing schedules: say so now.
  local free_kb; free_kb="$(df -Pk "$(dirname "$D")" | awk 'NR==2 {print $4}')"
  ((free_kb > 3 * 1024 * 1024)) || die "only $((free_kb / 1024)) MiB free under $(dirname "$D"): the cluster needs 3 GiB"
}

# Every binary, built or installed once and cached.
components() {
  STARTED=$SECONDS
  B="$(bash "$ROOT/e2e/cluster/build.sh")"
  CP="$(bash "$ROOT/tests/harness/build-control-plane.sh" | tail -1)"
  HELM="$(bash "$ROOT/tests/harness/helm.sh")/helm"
  K="$CP/kubectl"
  log "building llmserve-server, llmserve-router and llmserve-operator (release)"
  (cd "$ROOT" && cargo build --release --locked -q -p llmserve-server -p llmserve-router -p llmserve-operator)
  log "components ready after $((SECONDS - STARTED)) s"
}

# The state directory, the CAs and certificates, the service-account key and an admin token.
state_and_pki() {
  mkdir -p "$D/log" "$D/images" "$PKI"
  echo "$B" > "$D/bin-dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=llmserve-e2e-ca" -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=llmserve-e2e-front-proxy-ca" \
    -keyout "$PKI/front-proxy-ca.key" -out "$PKI/front-proxy-ca.crt" 2>/dev/null
  cert apiserver "/CN=kube-apiserver" ca \
    "subjectAltName=IP:$GW,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
  cert admin "/O=system:masters/CN=llmserve-e2e-admin" ca "extendedKeyUsage=clientAuth"
  cert front-proxy-client "/CN=front-proxy-client" front-proxy-ca "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  TOKEN="$(openssl rand -hex 16)"
  echo "$TOKEN,admin,admin,system:masters" > "$PKI/tokens.csv"
}

# The bridge first: the API server listens on its address, which pods reach as their gateway.
# Pods reach Services only with forwarding on, and through bridge netfilter for pods on this bridge.
host_network() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$GW/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  load_module br_netfilter /proc/sys/net/bridge
  if [[ -d /proc/sys/net/bridge ]]; then set_sysctl net.bridge.bridge-nf-call-iptables 1; fi
  set_sysctl net.ipv4.ip_forward 1
}

# etcd and kube-apiserver (with the aggregation layer) on the bridge address, and a kubeconfig.
etcd_and_apiserver() {
  local etcd_port peer_port
  etcd_port="$(free_port)"; peer_port="$(free_port)"
  daemon etcd "$CP/etcd" --name e2e --data-dir "$D/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "e2e=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level error
  daemon kube-apiserver "$CP/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$GW" --advertise-address "$GW" --secure-port "$API_PORT" \
    --cert-dir "$D/apiserver-certs" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" --authorization-mode Node,RBAC \
    --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SVC_CIDR" --allow-privileged=true \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true --kubelet-preferred-address-types InternalIP --v=1
  export KUBECONFIG="$D/kubeconfig"
  cat > "$KUBECONFIG" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://$GW:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: admin
  user: {token: "$TOKEN"}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin, namespace: default}
current-context: e2e
KC
  wait_until 120 "kube-apiserver" "$K" get --raw /readyz
  wait_until 60 "the default namespace" "$K" get namespace default
  log "control plane up"
}

# kube-scheduler, and kube-controller-manager with the HPA syncing every 5 s.
scheduler_and_controllers() {
  daemon kube-scheduler "$B/kube-scheduler" --kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" \
    --authorization-kubeconfig "$KUBECONFIG" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false
  daemon kube-controller-manager "$B/kube-controller-manager" --kubeconfig "$KUBECONFIG" \
    --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --use-service-account-credentials=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --horizontal-pod-autoscaler-sync-period 5s \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
}

# kube-proxy in iptables mode: Service ClusterIPs for pods and for this host.
kube_proxy() {
  daemon kube-proxy "$B/kube-proxy" --kubeconfig "$KUBECONFIG" --hostname-override "$NODE" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --nodeport-addresses "$GW/32" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --healthz-bind-address "127.0.0.1:$(free_port)" --metrics-bind-address "127.0.0.1:$(free_port)"
}

# The CNI configuration containerd reads: Debian's bridge, host-local IPAM, portmap, loopback.
cni() {
  mkdir -p "$D/net.d"
  cat > "$D/net.d/10-llmserve.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "llmserve", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$D/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
JSON
}

# containerd 2.x with Debian's runc, cgroupfs, and the CNI configuration above.
container_runtime() {
  cat > "$D/containerd.toml" <<TOML
version = 3
root = "$D/containerd/root"
state = "$D/containerd/state"
[grpc]
  address = "$D/containerd.sock"
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
    conf_dir = "$D/net.d"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
TOML
  PATH="$B:$PATH" daemon containerd "$B/containerd" --config "$D/containerd.toml"
  wait_until 30 "containerd" test -S "$D/containerd.sock"
}

# Every image the cluster runs, written from files here and imported into containerd.
images() {
  log "writing and importing images"
  pause_binary
  image registry.k8s.io/pause:3.10 "/pause=$D/pause/pause"
  # The release binaries, stripped (the release profile keeps line tables for backtraces).
  local rel="$CARGO_TARGET_DIR/release" mf=() f b
  for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
    mf+=(--file "/models/stories260k/$f=$LLMSERVE_TEST_MODEL/$f")
  done
  mkdir -p "$D/stripped"
  for b in llmserve-server llmserve-router llmserve-operator; do strip -o "$D/stripped/$b" "$rel/$b"; done
  image "llmserve.dev/llmserve-server:$TAG" "/usr/local/bin/llmserve-server=$D/stripped/llmserve-server" \
    --file "/usr/local/bin/llmserve-router=$D/stripped/llmserve-router" "${mf[@]}"
  image "llmserve.dev/llmserve-operator:$TAG" "/usr/local/bin/llmserve-operator=$D/stripped/llmserve-operator"
  image "llmserve.dev/prometheus:$TAG" "/bin/prometheus=$B/prometheus"
  image "llmserve.dev/prometheus-config-reloader:$TAG" "/bin/prometheus-config-reloader=$B/prometheus-config-reloader"
  image "llmserve.dev/prometheus-adapter:$TAG" "/adapter=$B/prometheus-adapter"
}

# The kubelet, and the node Ready with its default service account.
node() {
  local port; port="$(free_port)"
  cat > "$D/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$D/containerd.sock
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: "$PKI/ca.crt"}}
authorization: {mode: AlwaysAllow}
address: $GW
port: $port
readOnlyPort: 0
failSwapOn: false
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podCIDR: $POD_CIDR
podLogsDir: $D/pod-logs
# Secret and ConfigMap volumes follow their objects within this period (Prometheus's generated
# configuration reaches its config reloader this way); the default is a minute.
syncFrequency: 10s
YAML
  daemon kubelet "$B/kubelet" --config "$D/kubelet.yaml" --kubeconfig "$KUBECONFIG" --hostname-override "$NODE" \
    --node-ip "$GW" --root-dir "$D/kubelet" --cert-dir "$D/kubelet-pki" --v=1
  wait_until 60 "the node to register" "$K" get node "$NODE"
  "$K" wait --for=condition=Ready "node/$NODE" --timeout=90s >/dev/null || die "the node is not Ready: see $D/log/kubelet.log"
  wait_until 60 "the default service account" "$K" get serviceaccount default
  log "node $NODE Ready"
}

# prometheus-operator beside the cluster (it reads $KUBECONFIG), with its CRDs in it.
prometheus_operator() {
  local crds; crds="$(cd "$LLMSERVE_CACHE" && GOFLAGS=-mod=mod go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@${PROM_OPERATOR_VERSION:-v0.85.0}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/example/prometheus-operator-crd"
  "$K" apply --server-side -f "$crds" >/dev/null
  "$K" wait --for condition=established --timeout=60s -f "$crds" >/dev/null
  "$K" create namespace monitoring >/dev/null
  daemon prometheus-operator "$B/prometheus-operator" \
    --prometheus-config-reloader "llmserve.dev/prometheus-config-reloader:$TAG" \
    --web.listen-address "127.0.0.1:$(free_port)" --log-level info
}

# The llmserve chart: CRD, operator, dashboards, alert rules, the adapter's rule. Before Prometheus,
# so that its first configuration already holds a ServiceMonitor.
chart() {
  "$HELM" install llmserve "$ROOT/charts/llmserve" --namespace "$RELEASE_NS" --create-namespace \
    --set image.repository=llmserve.dev/llmserve-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set operator.logFormat=text --set usageStats.intervalSeconds=10 --wait --timeout 180s >/dev/null \
    || { "$K" -n "$RELEASE_NS" get pods -o wide >&2; "$K" -n "$RELEASE_NS" get events --sort-by=.lastTimestamp | tail -8 >&2
         die "helm install failed"; }
  log "llmserve chart installed (release llmserve in $RELEASE_NS)"
}

# Prometheus in the cluster, Ready through its Service.
prometheus() {
  prometheus_manifest | "$K" apply -f - >/dev/null
  wait_until 120 "the Prometheus pod" "$K" -n monitoring get pod prometheus-e2e-0
  "$K" -n monitoring wait --for=condition=Ready pod/prometheus-e2e-0 --timeout=180s >/dev/null \
    || { "$K" -n monitoring describe pod prometheus-e2e-0 | tail -20 >&2; die "Prometheus did not become Ready"; }
  PROM_IP="$("$K" -n monitoring get service prometheus -o jsonpath='{.spec.clusterIP}')"
  wait_until 60 "Prometheus through its Service" curl -fsS "http://$PROM_IP:9090/-/ready"
  log "Prometheus Ready at http://$PROM_IP:9090 (run by prometheus-operator)"
}

# prometheus-adapter, serving custom.metrics.k8s.io to the HPA.
adapter() {
  adapter_manifest | "$K" apply -f - >/dev/null
  "$K" -n "$RELEASE_NS" rollout status deployment/prometheus-adapter --timeout=120s >/dev/null \
    || die "prometheus-adapter did not become Ready: $("$K" -n "$RELEASE_NS" logs deploy/prometheus-adapter --tail=5 2>&1)"
  "$K" wait --for=condition=Available apiservice/v1beta1.custom.metrics.k8s.io --timeout=60s >/dev/null \
    || die "custom.metrics.k8s.io is not Available"
  log "prometheus-adapter serves custom.metrics.k8s.io"
}

# What tests and users source to reach the cluster (e2e/cluster/e2e.py reads it).
write_env() {
  cat > "$D/env" <<ENV
export KUBECONFIG=$KUBECONFIG
export K=$K
export HELM=$HELM
export LLMSERVE_CLUSTER_DIR=$D
export LLMSERVE_CLUSTER_BIN=$B
export PROMETHEUS_URL=http://$PROM_IP:9090
export IMAGE_TAG=$TAG
export RELEASE_NS=$RELEASE_NS
ENV
  log "cluster up in $((SECONDS - STARTED)) s; environment: source $D/env"
}

# Runs one step of `up`, named in the log.
step() { log "step: $1"; "$1"; }

up() {
  step preflight
  step components
  step state_and_pki
  step host_network
  step etcd_and_apiserver
  step scheduler_and_controllers
  step kube_proxy
  step cni
  step container_runtime
  step images
  step node
  step prometheus_operator
  step chart
  step prometheus
  step adapter
  step write_env
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: cluster.sh up|down" >&2; exit 2 ;;
esac
