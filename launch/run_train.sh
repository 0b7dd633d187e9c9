#!/usr/bin/env bash
# The ONE train command, run once per process by launch/tpu_pod.sh (every TPU VM worker) and
# launch/slurm_gpu.sbatch (every GPU). Arguments are passed to `python -m longgen_jax.train`.
#
#   launch/run_train.sh --config=configs/llama7b_128k.py --workdir=gs://bucket/run7b
#
# Environment (all optional):
#   LONGGEN_VENV        virtualenv to activate (default: .venv next to this repository)
#   LONGGEN_COORDINATOR / LONGGEN_NUM_PROCESSES / LONGGEN_PROCESS_ID
#                       explicit jax.distributed settings (slurm_gpu.sbatch exports them)
#   LONGGEN_DISTRIBUTED auto | off  (auto: let JAX detect the TPU pod / cluster)
#   LONGGEN_XLA_FLAGS   extra XLA flags appended to the defaults below
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${LONGGEN_VENV:-$REPO/.venv}"
if [[ -f "$VENV/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  # GPU: let JAX use (almost) all of HBM -- the default preallocation is 75% -- and let XLA
  # overlap collectives (ring ppermutes, FSDP all-gathers) with compute.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true ${LONGGEN_XLA_FLAGS:-}"
else
  export XLA_FLAGS="${XLA_FLAGS:-} ${LONGGEN_XLA_FLAGS:-}"
fi
export PYTHONUNBUFFERED=1

exec python -m longgen_jax.train "$@"
