#!/usr/bin/env bash
# Set up one cluster node (ray_cluster.yaml's setup command; it runs again on every `ray up`, so it is
# idempotent): system packages, the shared file system, wmhp installed the way the README does (make install),
# and ~/.wmhp-env, read by every login shell: the venv on PATH, token auth, the shared storage and data roots.
#
# Settings (environment variables):
#   WMHP_SHARED_FS    the EFS file system's DNS name, e.g. fs-0123456789abcdef0.efs.us-west-2.amazonaws.com
#                     (required: named once, in ray_cluster.yaml)
#   WMHP_SHARED_DIR   where it is mounted on every node [/mnt/wmhp]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED_FS="${WMHP_SHARED_FS:-}"
SHARED_DIR="${WMHP_SHARED_DIR:-/mnt/wmhp}"
if [[ ! "$SHARED_FS" =~ ^fs-[0-9a-f]+\.efs\.[a-z0-9-]+\.amazonaws\.com$ ]]; then
    echo "WMHP_SHARED_FS: expected an EFS DNS name like fs-0123456789abcdef0.efs.us-west-2.amazonaws.com," \
        "got '$SHARED_FS'" >&2
    exit 2
fi

# A fresh instance runs unattended upgrades at boot: wait for the dpkg lock instead of failing on it.
APT=(sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q -y)
"${APT[@]}" update
"${APT[@]}" install python3-venv nfs-common make git rsync curl tmux

# EFS over NFS 4.1 with AWS's recommended options; all Tune trial directories and checkpoints live here.
sudo mkdir -p "$SHARED_DIR"
if ! mountpoint -q "$SHARED_DIR"; then
    sudo mount -t nfs4 -o nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport \
        "$SHARED_FS:/" "$SHARED_DIR"
fi
sudo mkdir -p "$SHARED_DIR/ray" "$SHARED_DIR/data"
sudo chown "$(id -u):$(id -g)" "$SHARED_DIR/ray" "$SHARED_DIR/data"

cd "$REPO"
make install PYTHON=python3

cat >"$HOME/.wmhp-env" <<ENV
export PATH="$REPO/.venv/bin:\$PATH"
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0
export WMHP_SHARED_DIR="$SHARED_DIR"
export WMHP_STORAGE="$SHARED_DIR/ray"
# Read by the cifar10 / imagenet presets (pipeline/grids/scales.yaml): datasets every node sees.
export WMHP_CIFAR10_ROOT="$SHARED_DIR/data/cifar10"
export WMHP_IMAGENET_ROOT="$SHARED_DIR/data/imagenet"
export WMHP_TEACHER_PATH="$SHARED_DIR/data/models/resnet34.pth"
ENV
grep -qxF 'source ~/.wmhp-env' "$HOME/.bashrc" || echo 'source ~/.wmhp-env' >>"$HOME/.bashrc"
echo "node set up: wmhp in $REPO/.venv, shared storage $SHARED_FS mounted at $SHARED_DIR"
