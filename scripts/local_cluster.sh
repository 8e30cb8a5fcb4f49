#!/usr/bin/env bash
# A Ray head on loopback, for `ray job submit` against http://127.0.0.1:8265 (see docs/ray_jobs.md), and optionally
# more Ray nodes on the same machine, so multi-node placement and a lost node can be tried without a cluster.
#
#   scripts/local_cluster.sh start             # head + dashboard (the job server lives in the dashboard)
#   scripts/local_cluster.sh start --nodes 2   # head + a second node; on a running head: start the missing nodes
#   scripts/local_cluster.sh status            # `ray status` of this cluster
#   scripts/local_cluster.sh token             # only make sure the auth token exists, mode 0600; print its path
#   scripts/local_cluster.sh stop              # stop this head and its nodes only
#
# Why these choices:
# * Everything that Ray lets us bind is bound to 127.0.0.1: the job API runs arbitrary code for whoever reaches it.
# * Authentication is set explicitly. Ray 2.60 leaves RAY_AUTH_MODE unset by default and then `ray start` turns
#   token auth on only if ~/.ray/auth_token happens to exist (any earlier local `ray.init()` creates it), so the
#   same command gives an open or a token-protected dashboard depending on the machine's history. We pin
#   RAY_AUTH_MODE=token (override: RAY_AUTH_MODE=disabled) and make sure the token exists. Clients (`ray job ...`)
#   must run with the same RAY_AUTH_MODE=token in their environment, or they send no token and get HTTP 401.
# * The token is a password to run code on this machine: it is created under umask 077 and forced to 0600 (its
#   folder 0700) even when it already existed. Ray itself writes ~/.ray/auth_token with the process umask (0644
#   by default), readable by every local user. RAY_AUTH_TOKEN_PATH, when set, names the file instead.
# * Session files go to their own temp dir, which also identifies this head's processes: `stop` kills only
#   processes whose command line names that dir (and their children), never other Ray clusters on the machine.
#   (`ray stop --force` would kill every Ray process of every user session on the host, e.g. a colleague's
#   test run; use it only on a machine that is yours alone.)
# * --num-cpus=2: one quick-test job needs 0.5 CPU for the data actor and 0.5 for the training worker; the
#   driver and the job supervisor reserve none.
# * --nodes N: node k (2..N) is `ray start --address=<head>` with its own --num-cpus (HIGGS_RAY_NUM_CPUS each) and
#   its own temp dir <temp dir>-n<k>, which identifies its processes (`stop` and a test that kills one node's
#   raylet find them by it). Every node, the head included, carries a custom resource naming it (higgs_node_<k>: 1),
#   so a task or a test can pin work to one node. Its other ports are chosen by Ray (0: free ones), since two
#   nodes on one machine cannot share them. `start --nodes N` on a running head starts only the nodes that are not
#   running: that is how a lost node comes back.
# * HIGGS_RAY_PRIVATE_DIRS=/a:/b: nodes 2..N do not see these folders (each runs in a mount namespace of its own,
#   `unshare --mount`, with an empty tmpfs over each folder; needs root). On one machine every node shares the disk,
#   so a run that reads the driver's files from another node would pass here and fail on a real cluster; with the
#   driver's data, outputs and cache listed here it fails here too.
#
# Overrides (environment): HIGGS_RAY_PORT (GCS, 6390), HIGGS_RAY_DASHBOARD_PORT (8265),
# HIGGS_RAY_NUM_CPUS (2), HIGGS_RAY_TEMP_DIR (/tmp/higgs-ray), RAY_AUTH_MODE (token), HIGGS_RAY_PRIVATE_DIRS (none).
set -euo pipefail

PORT="${HIGGS_RAY_PORT:-6390}"
DASHBOARD_PORT="${HIGGS_RAY_DASHBOARD_PORT:-8265}"
NUM_CPUS="${HIGGS_RAY_NUM_CPUS:-2}"
# Short on purpose: Ray puts Unix sockets under <temp dir>/session_<timestamp>/sockets (108-byte path limit).
TEMP_DIR="${HIGGS_RAY_TEMP_DIR:-/tmp/higgs-ray}"
PRIVATE_DIRS="${HIGGS_RAY_PRIVATE_DIRS:-}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

case "$RAY_AUTH_MODE" in
  token | disabled) ;;
  *) echo "RAY_AUTH_MODE must be 'token' or 'disabled', got '$RAY_AUTH_MODE'" >&2; exit 2 ;;
esac

NODES=1

# PIDs of one node's processes: those whose command line names its temp dir ($1, default the head's), plus all
# their descendants.
head_pids() {
  python - "${1:-$TEMP_DIR}" <<'PY'
import sys

import psutil

needle = sys.argv[1].rstrip("/") + "/"
roots = []
for proc in psutil.process_iter(["pid", "cmdline"]):
    if any(needle in arg or arg.endswith("=" + needle[:-1]) for arg in proc.info["cmdline"] or []):
        roots.append(proc)
procs = list(roots)
for proc in roots:
    try:
        procs.extend(proc.children(recursive=True))
    except psutil.Error:
        pass
pids = set()
for proc in procs:
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:  # a zombie is already dead, waiting for init to reap it
            pids.add(proc.pid)
    except psutil.Error:
        pass
pids.discard(psutil.Process().pid)
print(" ".join(str(p) for p in sorted(pids)))
PY
}

# The token file Ray reads: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (RAY_AUTH_TOKEN in the env needs none).
token_path() {
  echo "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
}

ensure_token() {
  [[ -n "${RAY_AUTH_TOKEN:-}" ]] && return 0
  local path
  path="$(token_path)"
  if [[ ! -s "$path" ]]; then
    (
      umask 077
      mkdir -p "$(dirname "$path")"
      if [[ -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        ray get-auth-token --generate >/dev/null  # creates ~/.ray/auth_token only when missing
      else
        python -c 'import secrets, sys; open(sys.argv[1], "w").write(secrets.token_hex(32))' "$path"
      fi
    )
  fi
  chmod 700 "$(dirname "$path")"
  chmod 600 "$path"
}

node_dir() {
  echo "${TEMP_DIR}-n$1"
}

# Node $1 (>= 2) joins the head; its temp dir names its processes.
start_node() {
  local dir
  dir="$(node_dir "$1")"
  mkdir -p "$dir"
  local cmd=(ray start --address="127.0.0.1:$PORT"
    --node-ip-address=127.0.0.1
    --num-cpus="$NUM_CPUS"
    --num-gpus=0
    --resources="{\"higgs_node_$1\": 1}"
    --dashboard-agent-listen-port=0
    --temp-dir="$dir"
    --disable-usage-stats)
  if [[ -z "$PRIVATE_DIRS" ]]; then
    "${cmd[@]}" >/dev/null
    echo "Ray node $1 up: $NUM_CPUS CPUs, resource higgs_node_$1, temp dir $dir"
    return
  fi
  # The node and every process it starts live in a mount namespace of their own, where each private folder is an
  # empty tmpfs: what the head's side wrote there does not exist for this node, as on a machine of its own.
  local mounts="" hidden
  IFS=: read -ra hidden <<<"$PRIVATE_DIRS"
  for d in "${hidden[@]}"; do
    mkdir -p "$d"
    mounts+="mount -t tmpfs higgs-private $(printf %q "$d") && "
  done
  unshare --mount --propagation private sh -c "${mounts}exec \"\$@\"" node "${cmd[@]}" >/dev/null
  echo "Ray node $1 up: $NUM_CPUS CPUs, resource higgs_node_$1, temp dir $dir, not seeing $PRIVATE_DIRS"
}

# Whether node $1's raylet runs (a node whose raylet died is lost to the cluster, even if helpers of it remain).
raylet_running() {
  python - "$(node_dir "$1")/" <<'PY'
import sys

import psutil

for proc in psutil.process_iter(["cmdline"]):
    args = proc.info["cmdline"] or []
    if args and args[0].endswith("/raylet") and any(sys.argv[1] in arg for arg in args):
        sys.exit(0)
sys.exit(1)
PY
}

start_missing_nodes() {
  local k
  for k in $(seq 2 "$NODES"); do
    if ! raylet_running "$k"; then
      stop_one "$(node_dir "$k")" "node $k (leftovers)" >/dev/null  # e.g. its log monitor, after a lost raylet
      start_node "$k"
    fi
  done
}

start() {
  if [[ -n "$(head_pids)" ]]; then
    if [[ "$NODES" -gt 1 ]]; then
      start_missing_nodes
      return 0
    fi
    echo "a Ray head with temp dir $TEMP_DIR is already running; run '$0 stop' first" >&2
    exit 1
  fi
  if [[ "$RAY_AUTH_MODE" == token ]]; then
    ensure_token  # `ray start` itself refuses token mode without a token
  fi
  mkdir -p "$TEMP_DIR"
  ray start --head \
    --node-ip-address=127.0.0.1 \
    --port="$PORT" \
    --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD_PORT" \
    --include-dashboard=true \
    --dashboard-agent-listen-port=0 \
    --num-cpus="$NUM_CPUS" \
    --num-gpus=0 \
    --resources='{"higgs_node_1": 1}' \
    --temp-dir="$TEMP_DIR" \
    --disable-usage-stats
  # `ray start` returns before the job server answers; wait for it so a following `ray job submit` cannot race.
  for _ in $(seq 1 60); do
    if ray job list --address "http://127.0.0.1:$DASHBOARD_PORT" >/dev/null 2>&1; then
      echo "Ray head up: jobs at http://127.0.0.1:$DASHBOARD_PORT, GCS port $PORT, RAY_AUTH_MODE=$RAY_AUTH_MODE, temp dir $TEMP_DIR"
      start_missing_nodes
      return 0
    fi
    sleep 1
  done
  echo "the job server at http://127.0.0.1:$DASHBOARD_PORT did not answer within 60 s; see $TEMP_DIR/session_latest/logs/dashboard.log" >&2
  exit 1
}

# Stop the processes of the node whose temp dir is $1 ($2 names it in messages).
stop_one() {
  local pids
  pids="$(head_pids "$1")"
  if [[ -z "$pids" ]]; then
    echo "no Ray $2 with temp dir $1 is running"
    return 0
  fi
  # shellcheck disable=SC2086  # word splitting of the PID list is intended
  kill -TERM $pids 2>/dev/null || true
  # gcs_server and the autoscaler monitor were seen ignoring SIGTERM for over 15 s: give a short grace, then kill.
  for _ in $(seq 1 5); do
    pids="$(head_pids "$1")"
    [[ -z "$pids" ]] && { echo "Ray $2 stopped"; return 0; }
    sleep 1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  echo "Ray $2 stopped (SIGKILL after 5 s for: $pids)"
}

stop() {
  local dir
  # Nodes first: a node whose head is gone first spends its time reconnecting. Every <temp dir>-n<k> is one.
  for dir in "${TEMP_DIR}"-n*; do
    [[ -d "$dir" ]] && stop_one "$dir" "node ${dir##*-n}"
  done
  stop_one "$TEMP_DIR" head
}

command="${1:-}"
shift || true
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="${2:-}"; shift 2 || { echo "--nodes needs a number" >&2; exit 2; } ;;
    --nodes=*) NODES="${1#--nodes=}"; shift ;;
    *) echo "unknown option '$1' (usage: $0 start [--nodes N]|stop|status|token)" >&2; exit 2 ;;
  esac
done
if ! [[ "$NODES" =~ ^[1-9][0-9]*$ ]]; then
  echo "--nodes must be a whole number >= 1, got '$NODES'" >&2
  exit 2
fi

case "$command" in
  start) start ;;
  stop) stop ;;
  status) ray status --address "127.0.0.1:$PORT" ;;
  token) ensure_token; token_path ;;
  *) echo "usage: $0 start [--nodes N]|stop|status|token" >&2; exit 2 ;;
esac
