"""Restores a trainer run's parameters (``longgen_jax.train``: ``WORKDIR/checkpoints/<step>``).

The sequence: resolve the newest step (``kinds.trainer_step``), read the run's saved config
(orbax ``JsonRestore``), restore the parameters (an ``nnx.State`` of the model's ``nnx.Param``s)
with the trainer's own ``training.checkpoint.Checkpointer`` (read-only, params only, checksums
verified), and, unless the caller gives its own placement, merge them into the saved model and
return the canonical tree (docs/architecture.md §4).

orbax and ``training.checkpoint`` are imported on first use, so importing this module (and
``longgen_jax.infer``) pulls in neither; restoring needs neither grain nor ml_collections.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
from flax import nnx

from longgen_jax.ckpt.kinds import CheckpointReadError, trainer_step
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import abstract_model, to_canonical


@dataclasses.dataclass
class Run:
  """One restored step of a trainer run.

  ``params``: the canonical tree on the first local device, or, when ``restore_run`` was given
  ``like``, the ``nnx.State`` of parameters placed like it. ``config``: the run's saved config
  (a dict; ``config["model"]``, ``config["data"]``, ``config["init_from"]``, ...)."""

  directory: str   # WORKDIR/checkpoints
  step: int
  config: dict[str, Any]
  params: Any

  @property
  def cfg(self) -> ModelConfig:
    """The run's ModelConfig (from its saved config)."""
    return model_config(self.config, f"{self.directory}/{self.step}")


def model_config(config: dict[str, Any], where: str) -> ModelConfig:
  try:
    return ModelConfig.from_dict(config["model"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointReadError(f"{where}: saved config has no usable model section ({e})"
                              ) from None


@contextlib.contextmanager
def _quiet_orbax():
  """Silences orbax's absl warnings about read-only managers (restored on exit)."""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  old = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(old)


def restore_run(path: str, like: Any = None, *, what: str = "checkpoint") -> Run:
  """The newest step under ``path`` (``WORKDIR``, ``WORKDIR/checkpoints`` or a step dir).

  ``like``: None restores the saved model's parameters on the first local device and returns
  them canonical; else an ``nnx.State`` of ``jax.ShapeDtypeStruct``s with shardings (the
  trainer's abstract parameters): the parameters are restored straight into those shardings and
  returned as that state (shapes must match; the saved config is not used for them).
  Raises ``CheckpointReadError`` (one line) when the step or its config cannot be read.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  directory, step = trainer_step(path, what)
  where = f"{directory}/{step}"
  with _quiet_orbax():
    reader = ckpt_lib.Checkpointer(directory, read_only=True)
    try:
      try:
        config = dict(reader.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"])
      except Exception as e:  # noqa: BLE001 -- any read failure is one line for the user
        raise CheckpointReadError(f"cannot read the run config of {where}: "
                                  f"{ckpt_lib.failure_reason(e)}") from None
      if like is not None:
        return Run(directory, step, config, _restore(reader, step, like, where))
      cfg = model_config(config, where)
      return Run(directory, step, config, _canonical(reader, step, cfg, where))
    finally:
      reader.close()


def _restore(reader: Any, step: int, like: Any, where: str) -> Any:
  """The ``params`` item of ``step`` restored (and verified) into ``like``."""
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  try:
    state, _ = reader.restore(step, {"params": like}, params_only=True)
  except Exception as e:  # noqa: BLE001 -- any restore failure is one line for the user
    raise CheckpointReadError(f"cannot restore the parameters of {where}: "
                              f"{ckpt_lib.failure_reason(e, 400)}") from None
  return state["params"]


def _canonical(reader: Any, step: int, cfg: ModelConfig, where: str) -> dict[str, Any]:
  """The saved model's parameters on the first local device, as the canonical tree."""
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  graphdef, abstract, rest = nnx.split(abstract_model(cfg), nnx.Param, ...)
  params = _restore(reader, step, ckpt_lib.abstract_like(abstract), where)
  if jax.tree.leaves(rest):   # non-parameter state: materialise it (no parameter is kept)
    rest = jax.jit(lambda: nnx.split(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[2])()
  return to_canonical(nnx.merge(graphdef, params, rest))
