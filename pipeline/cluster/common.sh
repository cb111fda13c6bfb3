# Shared by start_head.sh, start_worker.sh and stop.sh (sourced, not run).
#
# Every Ray / MLflow process tree is started in a session of its own (setsid) and its session id is kept in
# $WMHP_CLUSTER_DIR/<name>.sid, so that stop.sh ends exactly those processes, by id: `ray stop` would end every
# Ray process of the machine, other users' clusters included.

set -euo pipefail

WMHP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The repository's venv (make install) provides ray and mlflow, also when ~/.bashrc has not been read.
if [[ -x "$WMHP_REPO/.venv/bin/ray" ]]; then
    PATH="$WMHP_REPO/.venv/bin:$PATH"
fi
export PATH

WMHP_CLUSTER_DIR="${WMHP_CLUSTER_DIR:-$HOME/.wmhp-cluster}"
WMHP_STOP_GRACE_S="${WMHP_STOP_GRACE_S:-15}"
# Token authentication as Ray 2.60 expects it: the mode is an environment variable that every node and every
# client must share; the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

die() {  # a failure while starting or stopping: exit 1
    echo "wmhp-cluster: $*" >&2
    exit 1
}

bad_setting() {  # bad user input, found before anything starts: exit 2
    echo "wmhp-cluster: $*" >&2
    exit 2
}

# The node's private address: the source address of its default route (the VPC address on EC2, not docker0's),
# else the first address `hostname -I` lists.
private_address() {
    local address
    address="$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')"
    [[ -n "$address" ]] || address="$(hostname -I 2>/dev/null | awk '{print $1}')"
    [[ -n "$address" ]] || bad_setting "cannot find this node's private address; set WMHP_HEAD_HOST"
    echo "$address"
}

require_token() {
    [[ "$RAY_AUTH_MODE" == "token" ]] || return 0
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] && return 0
    local path="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    [[ -s "$path" ]] || bad_setting "RAY_AUTH_MODE=token but no token at $path: run \`ray get-auth-token --generate\`" \
        "on the machine you launch from (ray_cluster.yaml copies ~/.ray/auth_token to every node)," \
        "or set RAY_AUTH_TOKEN_PATH"
    # ray's file_mounts copy the token with whatever mode it had (often 0644): anyone on a node could join.
    chmod 600 "$path" || die "cannot make the auth token $path private (chmod 600)"
}

port_answers() {  # host port -> success when something accepts TCP connections there
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

require_int() {  # name value
    [[ "$2" =~ ^[0-9]+$ ]] || bad_setting "$1: expected a non-negative integer, got '$2'"
}

session_pids() {  # sid [only|except COMMAND] -> pids of the live processes in that session, one a line
    # Zombies (state Z) are skipped: they are already dead, waiting for a parent that may never reap them.
    ps -eo pid=,sid=,stat=,comm= | awk -v sid="$1" -v mode="${2:-}" -v command="${3:-}" '
        $2 == sid && $3 !~ /^Z/ && (mode == "" || (mode == "only") == ($4 == command)) { print $1 }'
}

# The sid of a service recorded as running; empty when none is recorded or none of its processes is left.
live_sid() {
    local file="$WMHP_CLUSTER_DIR/$1.sid" sid
    [[ -s "$file" ]] || return 0
    sid="$(<"$file")"
    [[ -n "$(session_pids "$sid")" ]] && echo "$sid"
    return 0
}

# Run a command in a new session, recording the session id in $WMHP_CLUSTER_DIR/<name>.sid.
# With wait=wait, returns the command's exit status; otherwise leaves it running in the background.
start_in_session() {  # name wait|background log command...
    local name="$1" mode="$2" log="$3"
    shift 3
    local sid_file="$WMHP_CLUSTER_DIR/$name.sid"
    rm -f "$sid_file"
    if [[ "$mode" == wait ]]; then
        setsid -w bash -c 'ps -o sid= -p $$ | tr -d " " > "$0"; exec "$@"' "$sid_file" "$@" >>"$log" 2>&1
    else
        setsid bash -c 'ps -o sid= -p $$ | tr -d " " > "$0"; exec "$@"' "$sid_file" "$@" >>"$log" 2>&1 </dev/null &
        local waited=0
        while [[ ! -s "$sid_file" ]] && ((waited < 50)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        [[ -s "$sid_file" ]] || die "$name did not start (see $log)"
    fi
}

# SIGTERM and wait up to WMHP_STOP_GRACE_S seconds, then SIGKILL what is left.
terminate() {  # name sid [only|except COMMAND]
    local name="$1" sid="$2" pids waited=0
    shift 2
    pids="$(session_pids "$sid" "$@")"
    [[ -n "$pids" ]] || return 0
    kill -TERM $pids 2>/dev/null || true
    while [[ -n "$(session_pids "$sid" "$@")" ]] && ((waited < WMHP_STOP_GRACE_S * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    pids="$(session_pids "$sid" "$@")"
    if [[ -n "$pids" ]]; then
        echo "  $name: SIGKILL to $(echo $pids | wc -w) processes left after ${WMHP_STOP_GRACE_S}s"
        kill -KILL $pids 2>/dev/null || true
    fi
}

# Stop every process of a recorded session, in Ray's order: the raylet first (it ends its workers), then the
# agents and monitors, the GCS last (the others would otherwise wait for it to come back).
stop_session() {  # name
    local name="$1" file="$WMHP_CLUSTER_DIR/$1.sid" sid
    [[ -s "$file" ]] || return 0
    sid="$(<"$file")"
    if [[ -n "$(session_pids "$sid")" ]]; then
        echo "stopping $name (session $sid: $(session_pids "$sid" | wc -l) processes)"
        terminate "$name" "$sid" only raylet
        terminate "$name" "$sid" except gcs_server
        terminate "$name" "$sid"
    fi
    rm -f "$file"
}
