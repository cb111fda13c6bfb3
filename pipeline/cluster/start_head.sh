#!/usr/bin/env bash
# Start a wmhp head node: the Ray head and a real MLflow tracking server bound to the node's private address.
# ray_cluster.yaml runs this as its head start command; tests/test_cluster.py runs it on 127.0.0.1.
#
# Settings (environment variables; defaults in brackets):
#   WMHP_HEAD_HOST          address Ray and MLflow bind to and advertise [this node's private address]
#   WMHP_RAY_PORT           Ray GCS port [6379]
#   WMHP_MLFLOW_PORT        MLflow server port [5000]
#   WMHP_RESULTS_DIR        holds mlflow.db and artifacts/ (the server's --artifacts-destination) [<repo>/results]
#   WMHP_CLUSTER_DIR        session ids, logs, tracking_uri and ray_address files [~/.wmhp-cluster]
#   WMHP_NUM_CPUS, WMHP_NUM_GPUS, WMHP_OBJECT_STORE_BYTES   Ray resources of this node [detected]
#   WMHP_RAY_TEMP_DIR       Ray's --temp-dir [Ray's default, /tmp/ray]
#   WMHP_DASHBOARD          Ray's dashboard, bound to 127.0.0.1 (reach it through SSH): true, false, or auto:
#                           Ray's choice, on when ray[default] is installed [auto]
#   WMHP_DASHBOARD_PORT     [8265]
#   WMHP_AUTOSCALING_CONFIG the autoscaler's config (set by ray_cluster.yaml) [none]
#   WMHP_HEALTH_TIMEOUT_S   seconds to wait for MLflow's /health [90]
#   RAY_AUTH_MODE           [token]; the token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
# On success it prints and writes $WMHP_CLUSTER_DIR/tracking_uri (http://HOST:PORT) and
# $WMHP_CLUSTER_DIR/ray_address (HOST:PORT). Stop everything with stop.sh.
# Exit status: 0 started, 2 a bad setting (nothing started), 1 a start-up failure (what had started is stopped).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOST="${WMHP_HEAD_HOST:-$(private_address)}"
RAY_PORT="${WMHP_RAY_PORT:-6379}"
MLFLOW_PORT="${WMHP_MLFLOW_PORT:-5000}"
RESULTS_DIR="${WMHP_RESULTS_DIR:-$WMHP_REPO/results}"
DASHBOARD="${WMHP_DASHBOARD:-auto}"
DASHBOARD_PORT="${WMHP_DASHBOARD_PORT:-8265}"
HEALTH_TIMEOUT_S="${WMHP_HEALTH_TIMEOUT_S:-90}"

for setting in RAY_PORT MLFLOW_PORT DASHBOARD_PORT HEALTH_TIMEOUT_S; do
    require_int "WMHP_$setting" "${!setting}"
done
[[ "$DASHBOARD" =~ ^(auto|true|false)$ ]] ||
    bad_setting "WMHP_DASHBOARD: expected auto, true or false, got '$DASHBOARD'"
for optional in WMHP_NUM_CPUS WMHP_NUM_GPUS WMHP_OBJECT_STORE_BYTES; do
    [[ -z "${!optional:-}" ]] || require_int "$optional" "${!optional}"
done
command -v ray >/dev/null || bad_setting "ray not found on PATH (run make install in the repository)"
command -v mlflow >/dev/null || bad_setting "mlflow not found on PATH (run make install in the repository)"
require_token

for service in ray-head mlflow; do
    running="$(live_sid "$service")"
    [[ -z "$running" ]] || die "$service is already running (session $running); run stop.sh first"
done
port_answers "$HOST" "$MLFLOW_PORT" && bad_setting "WMHP_MLFLOW_PORT: $HOST:$MLFLOW_PORT is already in use"
port_answers "$HOST" "$RAY_PORT" && bad_setting "WMHP_RAY_PORT: $HOST:$RAY_PORT is already in use"

mkdir -p "$WMHP_CLUSTER_DIR/logs" "$RESULTS_DIR/artifacts"
RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"
rm -f "$WMHP_CLUSTER_DIR/tracking_uri" "$WMHP_CLUSTER_DIR/ray_address"

# MLflow first, in the background: its 5-10 s start-up overlaps Ray's.
MLFLOW_LOG="$WMHP_CLUSTER_DIR/logs/mlflow.log"
: >"$MLFLOW_LOG"
# One worker: sqlite wants one writer, and the pipeline logs from its driver only.
# --artifacts-destination: clients upload through the server, so they need no access to this disk.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # no job runner processes beside the server
start_in_session mlflow background "$MLFLOW_LOG" \
    mlflow server \
    --backend-store-uri "sqlite:///$RESULTS_DIR/mlflow.db" \
    --artifacts-destination "$RESULTS_DIR/artifacts" \
    --host "$HOST" --port "$MLFLOW_PORT" --workers 1

ray_args=(start --head --node-ip-address="$HOST" --port="$RAY_PORT" --dashboard-host=127.0.0.1
    --dashboard-port="$DASHBOARD_PORT" --disable-usage-stats)
[[ "$DASHBOARD" == auto ]] || ray_args+=(--include-dashboard="$DASHBOARD")
[[ -z "${WMHP_NUM_CPUS:-}" ]] || ray_args+=(--num-cpus="$WMHP_NUM_CPUS")
[[ -z "${WMHP_NUM_GPUS:-}" ]] || ray_args+=(--num-gpus="$WMHP_NUM_GPUS")
[[ -z "${WMHP_OBJECT_STORE_BYTES:-}" ]] || ray_args+=(--object-store-memory="$WMHP_OBJECT_STORE_BYTES")
[[ -z "${WMHP_RAY_TEMP_DIR:-}" ]] || ray_args+=(--temp-dir="$WMHP_RAY_TEMP_DIR")
[[ -z "${WMHP_AUTOSCALING_CONFIG:-}" ]] || ray_args+=(--autoscaling-config="$WMHP_AUTOSCALING_CONFIG")

RAY_LOG="$WMHP_CLUSTER_DIR/logs/ray-head.log"
: >"$RAY_LOG"
if ! start_in_session ray-head wait "$RAY_LOG" ray "${ray_args[@]}"; then
    tail -n 30 "$RAY_LOG" >&2
    bash "$WMHP_REPO/pipeline/cluster/stop.sh" >&2
    die "ray start failed (log: $RAY_LOG)"
fi

deadline=$((SECONDS + HEALTH_TIMEOUT_S))
until [[ "$(curl -s --max-time 2 "http://$HOST:$MLFLOW_PORT/health" 2>/dev/null)" == OK ]]; do
    if [[ -z "$(live_sid mlflow)" ]] || ((SECONDS >= deadline)); then
        tail -n 30 "$MLFLOW_LOG" >&2
        bash "$WMHP_REPO/pipeline/cluster/stop.sh" >&2
        die "the MLflow server did not become healthy within ${HEALTH_TIMEOUT_S}s (log: $MLFLOW_LOG)"
    fi
    sleep 0.5
done

echo "http://$HOST:$MLFLOW_PORT" >"$WMHP_CLUSTER_DIR/tracking_uri"
echo "$HOST:$RAY_PORT" >"$WMHP_CLUSTER_DIR/ray_address"
echo "Ray head:        $HOST:$RAY_PORT"
echo "MLflow tracking: http://$HOST:$MLFLOW_PORT (artifacts in $RESULTS_DIR/artifacts)"
