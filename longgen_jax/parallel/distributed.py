"""Multi-process start-up on the JAX distributed runtime.

``initialize()`` is called once, first thing, by every process of a job (before anything touches
a device). Where the settings come from, first match wins:

1. explicit arguments (or the ``--coordinator_address/--num_processes/--process_id`` flags,
   see ``define_flags``);
2. environment: ``LONGGEN_COORDINATOR`` (``host:port``), ``LONGGEN_NUM_PROCESSES``,
   ``LONGGEN_PROCESS_ID`` (what ``launch/*.sh`` export), or JAX's own ``JAX_COORDINATOR_ADDRESS``
   / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``;
3. ``LONGGEN_DISTRIBUTED=auto`` (``launch/tpu_pod.sh`` sets it) or a detected cluster (SLURM
   with more than one task, Open MPI, a TPU VM that exports its worker list) -- then
   ``jax.distributed.initialize()`` with no arguments lets JAX read the cluster's own settings;
   ``LONGGEN_DISTRIBUTED=off`` forces a single process;
4. otherwise: a single process, nothing to do.

On CPU (tests, CI) cross-process collectives need ``gloo``; ``initialize`` selects it when the
option exists (jax 0.10 and 0.11 both have ``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

_log = logging.getLogger(__name__)
_FLAGS_DEFINED = False


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None


def define_flags() -> None:
  """Defines ``--coordinator_address``, ``--num_processes``, ``--process_id`` (idempotent)."""
  global _FLAGS_DEFINED
  if _FLAGS_DEFINED:
    return
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 for jax.distributed (multi-process runs).")
  flags.DEFINE_integer("num_processes", None, "Number of processes of the job.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
  _FLAGS_DEFINED = True


def _int_env(env, *names: str) -> int | None:
  for n in names:
    v = env.get(n)
    if v not in (None, ""):
      return int(v)
  return None


def settings_from_env(env=None) -> DistributedSettings:
  """Settings from ``LONGGEN_*`` (preferred) or ``JAX_*`` environment variables."""
  env = os.environ if env is None else env
  addr = env.get("LONGGEN_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS") or None
  return DistributedSettings(addr, _int_env(env, "LONGGEN_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
                             _int_env(env, "LONGGEN_PROCESS_ID", "JAX_PROCESS_ID"))


def _from_flags() -> DistributedSettings:
  if not _FLAGS_DEFINED:
    return DistributedSettings()
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  if not f.is_parsed():
    return DistributedSettings()
  return DistributedSettings(f.coordinator_address, f.num_processes, f.process_id)


def cluster_detected(env=None) -> str | None:
  """Name of a multi-process cluster JAX can self-configure from, or None."""
  env = os.environ if env is None else env
  mode = env.get("LONGGEN_DISTRIBUTED", "").lower()
  if mode == "off":
    return None
  if mode == "auto":
    return "auto"
  if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
    return "slurm"
  tpu_workers = env.get("TPU_WORKER_HOSTNAMES", "")
  if tpu_workers.count(",") >= 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  if env.get("OMPI_COMM_WORLD_SIZE") and int(env["OMPI_COMM_WORLD_SIZE"]) > 1:
    return "mpi"
  return None


def use_cpu_collectives(impl: str = "gloo") -> None:
  """Enables cross-process collectives on the CPU backend (must run before device use)."""
  try:
    jax.config.update("jax_cpu_collectives_implementation", impl)
  except (AttributeError, KeyError, ValueError) as e:  # pragma: no cover (older jax)
    _log.warning("cannot select CPU collectives %r: %s", impl, e)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None,
               cpu_collectives: str | None = "gloo") -> bool:
  """Starts the JAX distributed runtime if this is a multi-process job.

  Returns True when the runtime was initialised (or already was), False for a single process.
  Raises ``ValueError`` (one line) for an incomplete explicit setting.
  """
  s = DistributedSettings(coordinator_address, num_processes, process_id,
                          tuple(local_device_ids) if local_device_ids is not None else None)
  if not s.explicit:
    s = _from_flags()
  if not s.explicit:
    s = settings_from_env()
  if _already_initialized():
    return True
  if cpu_collectives:
    use_cpu_collectives(cpu_collectives)
  if s.explicit:
    if s.num_processes is None or s.process_id is None:
      raise ValueError(f"coordinator address {s.coordinator_address!r} given without both "
                       "num_processes and process_id")
    if s.num_processes == 1:
      return False
    kwargs = {} if local_device_ids is None else {"local_device_ids": list(local_device_ids)}
    jax.distributed.initialize(coordinator_address=s.coordinator_address,
                               num_processes=s.num_processes, process_id=s.process_id, **kwargs)
    _log.info("jax.distributed: process %d of %d (coordinator %s)", s.process_id,
              s.num_processes, s.coordinator_address)
    return True
  kind = cluster_detected()
  if kind is None:
    return False
  jax.distributed.initialize()
  _log.info("jax.distributed (%s auto-detect): process %d of %d", kind, jax.process_index(),
            jax.process_count())
  return True


def _already_initialized() -> bool:
  is_init = getattr(jax.distributed, "is_initialized", None)   # public since jax 0.5
  if is_init is not None:
    return bool(is_init())
  try:  # pragma: no cover (older jax)
    from jax._src import distributed as _d  # pylint: disable=import-outside-toplevel
    return _d.global_state.client is not None
  except Exception:  # noqa: BLE001 -- private API moved: assume not initialised
    return False


def shutdown() -> None:
  """Stops the runtime (tests; the end of a job does this implicitly)."""
  if _already_initialized():
    jax.distributed.shutdown()
