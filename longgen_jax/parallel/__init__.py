"""Mesh, sharding rules, sequence parallelism (ring / all-gather / halo), multi-host helpers.

See ``docs/parallel.md``. Public surface:

  MeshConfig, make_mesh, mesh_sizes                 mesh.py
  RULES, PARAM_AXES, logical_to_spec,               rules.py
  tree_shardings, batch_spec
  ShardedAttention, sharded_attention               sequence.py (the attention fn the trainer
                                                    hands the model under a mesh)
  SeqLayout, reorder_batch, restore_batch           reorder.py (zigzag / striped, done once)
  ring_attention, allgather_attention,              ring.py / allgather.py / halo.py
  halo_attention
  DataShard, data_shard_info, make_global_batch     batch.py (per-process data)
  Parallel, create, trainer_shardings               runtime.py (what the trainer uses)
  initialize                                        distributed.py (jax.distributed)
"""

from longgen_jax.parallel.mesh import AXES, MeshConfig, MeshError, make_mesh, mesh_sizes
from longgen_jax.parallel.rules import (PARAM_AXES, RULES, batch_spec, logical_to_spec,
                                        tree_shardings)
from longgen_jax.parallel.reorder import SeqLayout, reorder_batch, restore_batch
from longgen_jax.parallel.ring import RingConfig, ring_attention
from longgen_jax.parallel.allgather import allgather_attention
from longgen_jax.parallel.halo import HaloConfig, HaloError, halo_attention
from longgen_jax.parallel.sequence import ShardedAttention, sharded_attention
from longgen_jax.parallel.batch import DataShard, data_shard_info, make_global_batch
from longgen_jax.parallel.runtime import Parallel, create, trainer_shardings
from longgen_jax.parallel.distributed import initialize

__all__ = [
    "AXES", "MeshConfig", "MeshError", "make_mesh", "mesh_sizes", "PARAM_AXES", "RULES",
    "batch_spec", "logical_to_spec", "tree_shardings", "SeqLayout", "reorder_batch",
    "restore_batch", "RingConfig", "ring_attention", "allgather_attention",
    "HaloConfig", "HaloError", "halo_attention", "ShardedAttention",
    "sharded_attention",
    "DataShard", "data_shard_info", "make_global_batch", "Parallel", "create",
    "trainer_shardings", "initialize",
]
