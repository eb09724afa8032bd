#!/usr/bin/env bash
# A real control plane for tests: etcd and kube-apiserver on loopback, with a generated CA,
# serving certificate, service-account key and an admin token. The same script serves
# developers, CI and newcomers.
#
#   control-plane.sh up DIR [WATCH_PID]
#       Starts both servers with state in DIR, writes DIR/kubeconfig, prints "ready KUBECONFIG"
#       once the API server answers, then stays in the foreground until WATCH_PID exits (or until
#       killed), and tears everything down. Tests start it this way, so a crashed test run cannot
#       leave servers behind.
#   control-plane.sh bin
#       Builds (once, cached) and prints the directory holding etcd, kube-apiserver, kubectl.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$ROOT/tests/harness"

cmd="${1:-}"
case "$cmd" in
  bin)
    bash "$HERE/build-control-plane.sh" | tail -1
    ;;
  up)
    DIR="${2:?usage: control-plane.sh up DIR [WATCH_PID]}"
    WATCH="${3:-}"
    BIN="$(bash "$HERE/build-control-plane.sh" | tail -1)"
    mkdir -p "$DIR/pki" "$DIR/etcd"
    pki="$DIR/pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=llmserve-test-ca" \
      -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' > "$pki/ext.cnf"
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 2 -extfile "$pki/ext.cnf" -out "$pki/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    token="$(openssl rand -hex 16)"
    echo "$token,admin,admin,system:masters" > "$pki/tokens.csv"

    etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
    "$BIN/etcd" --name test --data-dir "$DIR/etcd" \
      --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "test=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level error \
      > "$DIR/etcd.log" 2>&1 &
    etcd_pid=$!
    "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
      --bind-address 127.0.0.1 --secure-port "$api_port" --advertise-address 127.0.0.1 \
      --cert-dir "$DIR/certs" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
      --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
      --service-account-issuer https://kubernetes.default.svc \
      --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
      --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
      --disable-admission-plugins ServiceAccount --enable-priority-and-fairness=false \
      --watch-cache=true --v=1 > "$DIR/kube-apiserver.log" 2>&1 &
    api_pid=$!
    cleanup() {
      kill "$api_pid" "$etcd_pid" 2>/dev/null || true
      wait "$api_pid" "$etcd_pid" 2>/dev/null || true
      rm -rf "$DIR/etcd"
    }
    trap cleanup EXIT
    trap 'exit 0' TERM INT
    # A detached reaper: it also fires when this script is SIGKILLed and its trap cannot run.
    me=$$
    (
      trap '' TERM INT
      while kill -0 "$me" 2>/dev/null && { [[ -z "$WATCH" ]] || kill -0 "$WATCH" 2>/dev/null; }; do sleep 1; done
      kill "$api_pid" "$etcd_pid" 2>/dev/null || true
    ) </dev/null >/dev/null 2>&1 &

    cat > "$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
KC
    api_ready() {
      local get=(curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $token")
      "${get[@]}" "https://127.0.0.1:$api_port/readyz" && "${get[@]}" "https://127.0.0.1:$api_port/api/v1/namespaces/default"
    }
    wait_until --every 0.5 --alive "$api_pid" --log "$DIR/kube-apiserver.log" 120 "kube-apiserver" api_ready
    echo "ready $DIR/kubeconfig"
    if [[ -n "$WATCH" ]]; then
      while kill -0 "$WATCH" 2>/dev/null; do sleep 1; done
    else
      while true; do sleep 3600; done
    fi
    ;;
  *)
    echo "usage: control-plane.sh up DIR [WATCH_PID] | bin" >&2
    exit 2
    ;;
esac
