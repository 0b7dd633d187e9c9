#!/usr/bin/env bash
# Run the train command on every worker of a Cloud TPU pod slice (one process per VM).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [--project=P] [--sync] -- --config=configs/llama70b_128k.py \
#       --workdir=gs://bucket/run70b
#
#   --sync   first copy this repository to ~/longgen_jax on every worker and create its venv
#            (pip install -e '.[tpu]'); otherwise the code must already be there.
# The processes find each other through JAX's TPU cluster detection (LONGGEN_DISTRIBUTED=auto);
# workdir and data must be on storage every worker can read (gs://, Filestore).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
TPU="$1"; ZONE="$2"; shift 2
PROJECT=""; SYNC=0
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --project=*) PROJECT="--project=${1#*=}" ;;
    --sync) SYNC=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "${1:-}" == "--" ]] && shift
REMOTE_DIR='~/longgen_jax'
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" $PROJECT --worker=all --command="$1"
}

if [[ $SYNC == 1 ]]; then
  tarball="$(mktemp -d)/longgen_jax.tgz"
  tar -C "$REPO" --exclude=.git --exclude=.venv --exclude='__pycache__' -czf "$tarball" .
  gcloud compute tpus tpu-vm scp "$tarball" "$TPU":/tmp/longgen_jax.tgz --zone="$ZONE" \
      $PROJECT --worker=all
  ssh_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf /tmp/longgen_jax.tgz && \
    cd $REMOTE_DIR && (test -d .venv || python3 -m venv .venv) && . .venv/bin/activate && \
    pip install -q -e '.[tpu]'"
fi

ARGS=$(printf ' %q' "$@")
ssh_all "cd $REMOTE_DIR && LONGGEN_DISTRIBUTED=auto launch/run_train.sh$ARGS"
