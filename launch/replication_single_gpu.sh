#!/usr/bin/env bash
# The replication study (docs/replication.md) on ONE GPU machine, in time-limited calls.
#
#   bash launch/replication_single_gpu.sh STAGES DEADLINE_S [extra driver flags...]
#
# e.g. `bash launch/replication_single_gpu.sh data,pretrain,base 540 --pretrain_budget_s=290`.
# Run from the repository root. Each call resumes where the previous one stopped:
#   * packages the machine lacks (grain, array_record, ml_collections, tensorboardX, portpicker)
#     are installed from wheels in .whl/ when present (pip download them beforehand);
#   * a folder carry/ (if present) is copied into runs/replication without overwriting, so a
#     fresh machine continues from carried stage marks and the carried base model;
#   * what a later call or the report needs is written to $OUT (when set): the log, the small
#     results (stage marks, metrics, eval JSON, report) as results.tgz, and the base model's
#     shards as base-*.safetensors.
set -uo pipefail
STAGES=${1:?stages}; DEADLINE=${2:?deadline seconds}; shift 2
OUT=${OUT:-runs/out}; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=$PWD/runs/jax_cache
W=runs/replication; mkdir -p $W
[ -d carry ] && cp -rn carry/. $W/
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader 2>/dev/null
git rev-parse HEAD 2>/dev/null
python3 -m longgen_jax.replication --workdir=$W --stages="$STAGES" --deadline_s="$DEADLINE" "$@" \
    2>&1 | tee "$OUT/driver.log"
rc=${PIPESTATUS[0]}
( cd $W && tar czf - --exclude='*.safetensors' --exclude='checkpoints' --exclude='data' \
    --exclude='export' --exclude='jax_cache' --exclude='tb' . ) > "$OUT/results.tgz"
if [ -d $W/base_hf ] && [ ! -f carry/base_hf/config.json ]; then
  for f in $W/base_hf/*.safetensors; do cp "$f" "$OUT/base-$(basename "$f")"; done
fi
ls -la "$OUT"
exit $rc
