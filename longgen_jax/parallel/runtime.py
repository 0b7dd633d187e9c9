"""Everything the trainer needs from ``longgen_jax.parallel`` in one object.

::

    par = parallel.create(config.mesh, seq_len=T, global_batch=B)
    shard = par.data                            # rows this process loads (DataShard)
    shardings = par.state_shardings(abstract)   # params / opt_state / step
    params = jax.jit(init, out_shardings=shardings["params"])()     # never whole on one device
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    batch = par.device_batch(host_batch)        # layout reorder + global arrays
    step = make_step(..., attention_fn=par.attention_fn)   # model attention -> shard_map

One device works the same (a 1x1x1x1 mesh; attention then calls the kernel directly).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from longgen_jax.parallel import batch as batch_lib
from longgen_jax.parallel import rules as rules_lib
from longgen_jax.parallel.mesh import MeshConfig, MeshError, make_mesh, mesh_sizes
from longgen_jax.parallel.reorder import BATCH_KEYS, SeqLayout
from longgen_jax.parallel.sequence import ShardedAttention, sharded_attention


@dataclasses.dataclass(frozen=True)
class Parallel:
  """A mesh plus the shapes it serves (see module docstring)."""

  mesh: jax.sharding.Mesh
  config: MeshConfig
  seq_len: int
  global_batch: int

  def __post_init__(self):
    sizes = mesh_sizes(self.mesh)
    div = sizes["data"] * sizes["fsdp"]
    if self.global_batch % div:
      raise MeshError(f"global batch {self.global_batch} is not divisible by data*fsdp = {div} "
                      f"(mesh {sizes})")
    SeqLayout(self.config.sequence_layout, sizes["sequence"], self.seq_len)  # validates

  @property
  def layout(self) -> SeqLayout | None:
    """The sequence layout (None without sequence parallelism: no reordering)."""
    n = mesh_sizes(self.mesh)["sequence"]
    return SeqLayout(self.config.sequence_layout, n, self.seq_len) if n > 1 else None

  @property
  def data(self) -> batch_lib.DataShard:
    return batch_lib.data_shard_info(self.mesh, self.global_batch)

  def state_shardings(self, abstract_state: Mapping[str, Any], rules=rules_lib.RULES) -> dict:
    """Shardings of ``{"params", "opt_state", ["step"]}`` (rule-based; others replicated)."""
    out = {k: rules_lib.tree_shardings(v, self.mesh, rules) for k, v in abstract_state.items()}
    return out

  def replicated(self, tree: Any = None):
    r = NamedSharding(self.mesh, P())
    return r if tree is None else jax.tree.map(lambda _: r, tree)

  def batch_shardings(self, keys: Iterable[str] = BATCH_KEYS) -> dict[str, NamedSharding]:
    spec = rules_lib.logical_to_spec(rules_lib.BATCH_AXES, (self.global_batch, self.seq_len),
                                     self.mesh)
    return {k: NamedSharding(self.mesh, spec) for k in keys}

  def device_batch(self, host_batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """This process's numpy rows -> global arrays in the sequence layout."""
    return batch_lib.make_global_batch(host_batch, self.mesh, layout=self.layout,
                                       global_batch=self.global_batch)

  @property
  def attention_fn(self) -> ShardedAttention:
    """The attention fn to hand the model on this mesh (``model/attention_fn.py``).

    shard_map'ed ring / halo attention in this mesh's sequence layout; on a one-device mesh the
    kernel itself.
    """
    return sharded_attention(self.mesh, layout=self.config.sequence_layout,
                             impl=self.config.sequence_attention)


def create(mesh_config: Any = None, *, seq_len: int, global_batch: int,
           devices=None) -> Parallel:
  """Builds the mesh from ``config.mesh`` (see ``mesh.MeshConfig``) for these shapes."""
  mc = MeshConfig.from_any(mesh_config)
  return Parallel(make_mesh(mc, devices=devices), mc, int(seq_len), int(global_batch))


def trainer_shardings(config) -> dict[str, Any]:
  """The trainer's sharding slot (``train.mesh_shardings``) filled from an ml_collections config.

  Returns ``{"params", "opt_state"}`` NamedSharding trees shaped like the trainer's abstract
  state, ``"rest"`` and ``"replicated"`` (a replicated sharding, a valid prefix for any tree),
  ``"batch"`` (one sharding per batch key) and ``"parallel"`` (the ``Parallel`` object: data
  shard, layout-aware ``device_batch``, the model's ``attention_fn``).
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.llama import Llama  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import optim  # pylint: disable=import-outside-toplevel

  t = config.train
  par = create(config.mesh, seq_len=int(t.seq_len), global_batch=int(t.batch_size))
  sizes = mesh_sizes(par.mesh)
  micro, div = int(t.batch_size) // int(t.grad_accum), sizes["data"] * sizes["fsdp"]
  if micro % div:
    raise MeshError(f"micro-batch of {micro} rows (train.batch_size / train.grad_accum) is not "
                    f"divisible by data*fsdp = {div} (mesh {sizes})")
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  tx = optim.make_optimizer(t, optim.make_schedule(t))
  params = nnx.split(nnx.eval_shape(lambda: Llama(model_cfg, rngs=nnx.Rngs(0))), nnx.Param,
                     ...)[1]
  sh = par.state_shardings({"params": params, "opt_state": jax.eval_shape(tx.init, params)})
  rep = par.replicated()
  return {"params": sh["params"], "opt_state": sh["opt_state"], "rest": rep, "replicated": rep,
          "batch": par.batch_shardings(), "parallel": par}
