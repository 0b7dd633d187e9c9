"""The one checkpoint reader: which kind a path is, and reading each kind (docs/architecture.md).

  kind_of(path, what) -> "trainer" | "converted" | "hf"
      a run of ``longgen_jax.train`` (``WORKDIR``, ``WORKDIR/checkpoints`` or a step dir);
      an imported checkpoint (``longgen_checkpoint.json``); a Hugging Face directory
      (``config.json``). A missing path or any other directory: ``CheckpointReadError``.
  require_kind(path, allowed, what)                  the same, limited to ``allowed`` kinds
  restore_run(path, like=None, what) -> Run          a trainer run's newest step: ``directory``,
      ``step``, ``config`` (the saved run config), ``params`` (canonical, or placed like ``like``),
      ``cfg`` (its ModelConfig)
  read_converted(path, model_cfg=None, sharding_fn=None, what) -> (params, cfg)
      an imported checkpoint or an HF directory, canonical (``hf.checkpoint`` / ``hf.import_hf``
      read it; the choice is made here)

``train`` (``init_from``), ``infer`` (``--checkpoint``) and ``hf`` (export, ``load_for_training``)
read checkpoints only through here and turn ``CheckpointReadError`` (one line; ``what`` names
their option) into their own error type. Importing this package pulls in neither orbax nor the
trainer (grain, ml_collections): ``restore_run`` imports ``training.checkpoint`` on first use.
"""

from longgen_jax.ckpt.converted import read_converted
from longgen_jax.ckpt.kinds import (CONVERTED, HF, TRAINER, CheckpointReadError, kind_of,
                                    require_kind, trainer_step)
from longgen_jax.ckpt.trainer import Run, restore_run

__all__ = ["CONVERTED", "HF", "TRAINER", "CheckpointReadError", "Run", "kind_of",
           "read_converted", "require_kind", "restore_run", "trainer_step"]
