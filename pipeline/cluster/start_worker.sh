#!/usr/bin/env bash
# Start a Ray worker node that joins a head started by start_head.sh.
# ray_cluster.yaml runs this as its worker start command; tests/test_cluster.py runs it as a second node on
# the same machine.
#
# Settings (environment variables; defaults in brackets):
#   WMHP_HEAD_ADDRESS   the head's Ray address, HOST:PORT (required)
#   WMHP_NODE_HOST      address this node binds to and advertises [Ray's choice]
#   WMHP_NUM_CPUS, WMHP_NUM_GPUS, WMHP_OBJECT_STORE_BYTES   Ray resources of this node [detected]
#   WMHP_RAY_TEMP_DIR   Ray's --temp-dir [Ray's default]
#   WMHP_CLUSTER_DIR    session id and log [~/.wmhp-cluster]
#   RAY_AUTH_MODE       [token], as on the head
# Exit status: 0 joined, 2 a bad setting (nothing started), 1 a start-up failure.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HEAD_ADDRESS="${WMHP_HEAD_ADDRESS:-}"
[[ "$HEAD_ADDRESS" =~ ^[^:]+:[0-9]+$ ]] ||
    bad_setting "WMHP_HEAD_ADDRESS: expected HOST:PORT of the Ray head, got '$HEAD_ADDRESS'"
for optional in WMHP_NUM_CPUS WMHP_NUM_GPUS WMHP_OBJECT_STORE_BYTES; do
    [[ -z "${!optional:-}" ]] || require_int "$optional" "${!optional}"
done
command -v ray >/dev/null || bad_setting "ray not found on PATH (run make install in the repository)"
require_token
mkdir -p "$WMHP_CLUSTER_DIR/logs"
running="$(live_sid ray-worker)"
[[ -z "$running" ]] || die "a Ray worker is already running (session $running); run stop.sh first"

ray_args=(start --address="$HEAD_ADDRESS" --disable-usage-stats)
[[ -z "${WMHP_NODE_HOST:-}" ]] || ray_args+=(--node-ip-address="$WMHP_NODE_HOST")
[[ -z "${WMHP_NUM_CPUS:-}" ]] || ray_args+=(--num-cpus="$WMHP_NUM_CPUS")
[[ -z "${WMHP_NUM_GPUS:-}" ]] || ray_args+=(--num-gpus="$WMHP_NUM_GPUS")
[[ -z "${WMHP_OBJECT_STORE_BYTES:-}" ]] || ray_args+=(--object-store-memory="$WMHP_OBJECT_STORE_BYTES")
[[ -z "${WMHP_RAY_TEMP_DIR:-}" ]] || ray_args+=(--temp-dir="$WMHP_RAY_TEMP_DIR")

RAY_LOG="$WMHP_CLUSTER_DIR/logs/ray-worker.log"
: >"$RAY_LOG"
if ! start_in_session ray-worker wait "$RAY_LOG" ray "${ray_args[@]}"; then
    tail -n 30 "$RAY_LOG" >&2
    stop_session ray-worker >&2
    die "ray start failed (log: $RAY_LOG)"
fi
echo "Ray worker joined $HEAD_ADDRESS"
