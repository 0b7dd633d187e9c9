"""Where each canonical parameter lives on a mesh: the shardings HF weights are read into.

The trainer shards its parameters with the logical-axis rules of ``longgen_jax.parallel`` over
the nnx parameter tree (a scanned stack carries a leading layer axis). Viewing an abstract model
that holds those shardings canonically (``to_canonical``: a stacked entry drops the layer axis
of its spec) gives each HF tensor its target sharding. ``train.load_init_from`` (the train
state's shardings) and the import CLI (``canonical_shardings`` for a mesh) both go through
``model_targets``, so an import and a training run agree on every tensor's shards.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
from flax import nnx

from longgen_jax.hf.names import get_path
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import abstract_model, to_canonical
from longgen_jax.parallel import rules as rules_lib

ShardingFn = Callable[[tuple, tuple[int, ...]], jax.sharding.Sharding]


def model_targets(model_cfg: ModelConfig, abstract_params: Any) -> tuple[Llama, dict[str, Any]]:
  """``(model, canonical)`` for an nnx ``Param`` state of ``ShapeDtypeStruct``s with shardings.

  ``model`` is an abstract ``Llama`` holding ``abstract_params`` (``load_canonical`` stacks
  loaded layers into it); ``canonical`` is its canonical tree of ``ShapeDtypeStruct``s, each
  with the sharding of that tensor (one layer of a scanned stack).
  """
  model = abstract_model(model_cfg)
  nnx.update(model, abstract_params)
  return model, to_canonical(model)


def canonical_shardings(model_cfg: ModelConfig, mesh: jax.sharding.Mesh,
                        rules: Iterable[tuple[str, Any]] = rules_lib.RULES) -> dict[str, Any]:
  """The canonical tree (``docs/architecture.md`` §4) of ``NamedSharding``s on ``mesh``.

  Exactly the trainer's placement (``parallel.trainer_shardings``: ``tree_shardings`` of the
  model's parameters) for ``model_cfg`` on ``mesh``.
  """
  params = nnx.state(abstract_model(model_cfg), nnx.Param)
  shardings = rules_lib.tree_shardings(params, mesh, tuple(rules))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          params, shardings)
  _, canonical = model_targets(model_cfg, abstract)
  return jax.tree.map(lambda a: a.sharding, canonical)


def sharding_fn(tree: Any) -> ShardingFn:
  """``(canonical path, shape) -> Sharding`` from a canonical tree of shardings (or of
  ``ShapeDtypeStruct``s carrying one), the form ``import_hf`` and ``checkpoint`` take."""

  def fn(path, shape):
    del shape
    leaf = get_path(tree, path)
    return getattr(leaf, "sharding", leaf)

  return fn
