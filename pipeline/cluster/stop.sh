#!/usr/bin/env bash
# Stop what start_head.sh / start_worker.sh started on this machine (same WMHP_CLUSTER_DIR): the Ray worker,
# the MLflow server and the Ray head, each by the ids of its own processes. Safe to run when nothing runs.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

for service in ray-worker mlflow ray-head; do
    stop_session "$service"
done
rm -f "$WMHP_CLUSTER_DIR/tracking_uri" "$WMHP_CLUSTER_DIR/ray_address"
