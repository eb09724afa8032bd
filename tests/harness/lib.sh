# shellcheck shell=bash
# The one bash library of llmserve's scripts (harness, e2e, cluster). Source it right after
# `set -euo pipefail`, with LOG_TAG set first to name the script in its log lines (the default is
# the script's file name); it defines functions and variables and runs nothing else. From e2e/:
#
#   LOG_TAG=local; source "$(dirname "${BASH_SOURCE[0]}")/../tests/harness/lib.sh"

# The repository root, whatever the working directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Where everything built or downloaded is cached, outside the repo.
export LLMSERVE_CACHE="${LLMSERVE_CACHE:-$HOME/.cache/llmserve}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LLMSERVE_CACHE/target}"
# The tiny test model (llama2.c's stories260k in Hugging Face layout), checked in.
export LLMSERVE_TEST_MODEL="$ROOT/tests/fixtures/stories260k"
# The state directory of the end-to-end cluster (e2e/cluster/cluster.sh); its `env` file is there.
export LLMSERVE_CLUSTER_DIR="${LLMSERVE_CLUSTER_DIR:-/tmp/llmserve-cluster}"
LOG_TAG="${LOG_TAG:-$(basename "$0" .sh)}"

# Writes a timestamped line, tagged with LOG_TAG, to stderr (stdout is kept for results).
log() { echo "[$LOG_TAG $(date +%H:%M:%S)] $*" >&2; }

# Logs the message and exits with status 1.
die() { log "$*"; exit 1; }

# Dies unless running as root; the arguments say what needs root.
require_root() { [[ $EUID -eq 0 ]] || die "run as root: $*"; }

# Prints a TCP port on 127.0.0.1 that is free now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Installs the named Debian packages quietly (after an apt-get update), saying which.
apt_install() {
  log "installing $* from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Polls CMD until it succeeds; dies naming WHAT after SECONDS, or once PID exits, with FILE's tail.
wait_until() {  # [--every INTERVAL] [--alive PID] [--log FILE] SECONDS WHAT CMD...
  local every=1 pid="" file=""
  while [[ "$1" == --* ]]; do
    case "$1" in
      --every) every="$2" ;;
      --alive) pid="$2" ;;
      --log) file="$2" ;;
      *) die "wait_until: unknown option $1" ;;
    esac
    shift 2
  done
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs)) why=""
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      why="$what: process $pid exited"
    elif ((SECONDS >= deadline)); then
      why="timed out after ${secs}s waiting for $what"
    fi
    if [[ -n "$why" ]]; then
      if [[ -n "$file" ]]; then log "last lines of $file:"; tail -20 "$file" >&2 || true; fi
      die "$why"
    fi
    sleep "$every"
  done
}
