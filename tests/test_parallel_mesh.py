"""Mesh config, sharding rules, sequence layouts, distributed settings (fast unit tests)."""

import numpy as np
import pytest

from longgen_jax.parallel import distributed, reorder
from longgen_jax.parallel.mesh import MeshConfig, MeshError
from longgen_jax.parallel.testing import multidevice


# --------------------------------------------------------------------------- mesh config
def test_mesh_config_resolves_minus_one_and_parses_strings():
  assert MeshConfig().resolve(8) == {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}
  mc = MeshConfig.from_any("data=2,sequence=-1,sequence_attention=allgather")
  assert mc.fsdp == 1 and mc.sequence_attention == "allgather"
  assert mc.resolve(8) == {"data": 2, "fsdp": 1, "sequence": 4, "tensor": 1}
  assert MeshConfig.from_any({"fsdp": 2, "sequence": 4}).resolve(8)["sequence"] == 4


@pytest.mark.parametrize("bad,match", [
    ("tensor=3,fsdp=-1", "does not divide"),
    ("fsdp=-1,sequence=-1", "at most one"),
    ("data=2,fsdp=2", "has 4 devices but 8"),
    ("sequence_layout=diagonal", "sequence_layout"),
    ("ring=4", "unknown mesh field"),
])
def test_mesh_config_errors_are_one_line(bad, match):
  with pytest.raises(MeshError, match=match):
    MeshConfig.from_any(bad).resolve(8)


# --------------------------------------------------------------------------- layouts
def test_zigzag_matches_maxtext_dual_chunk_swap():
  lay = reorder.SeqLayout("zigzag", 2, 8)
  assert lay.permutation().tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
  assert lay.chunk_ids().tolist() == [[0, 3], [1, 2]]
  assert reorder.SeqLayout("striped", 4, 8).permutation().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("kind", ["zigzag", "striped", "contiguous"])
def test_reorder_restore_round_trip_and_causal_balance(kind):
  lay = reorder.SeqLayout(kind, 4, 64)
  x = np.arange(2 * 64).reshape(2, 64)
  batch = {"inputs": x, "positions": x % 64, "other": np.ones(3)}
  back = reorder.restore_batch(reorder.reorder_batch(batch, lay), lay)
  np.testing.assert_array_equal(back["inputs"], x)
  assert back["other"] is batch["other"]
  # causal work per shard = sum of (row position + 1) of its tokens
  work = (lay.permutation() + 1).reshape(4, 16).sum(axis=1)
  if kind == "contiguous":
    assert work.max() > 3 * work.min()
  else:
    assert work.max() <= 1.1 * work.min()


def test_layout_divisibility_error():
  with pytest.raises(reorder.LayoutError, match="not divisible by 8"):
    reorder.SeqLayout("zigzag", 4, 100)


def test_reorder_batch_keys_are_the_data_paths():
  """``parallel`` keeps its own copy (no grain import); it must be the data path's tuple."""
  from longgen_jax.data.packing import BATCH_KEYS  # pylint: disable=import-outside-toplevel
  assert reorder.BATCH_KEYS == BATCH_KEYS


# --------------------------------------------------------------------------- distributed
def test_distributed_settings_from_env_and_cluster_detection():
  s = distributed.settings_from_env({"LONGGEN_COORDINATOR": "h0:1234",
                                     "LONGGEN_NUM_PROCESSES": "16", "LONGGEN_PROCESS_ID": "3"})
  assert (s.coordinator_address, s.num_processes, s.process_id) == ("h0:1234", 16, 3)
  assert not distributed.settings_from_env({}).explicit
  assert distributed.cluster_detected({"SLURM_NTASKS": "8"}) == "slurm"
  assert distributed.cluster_detected({"SLURM_NTASKS": "1"}) is None
  assert distributed.cluster_detected({"LONGGEN_DISTRIBUTED": "auto"}) == "auto"
  assert distributed.cluster_detected({"SLURM_NTASKS": "8", "LONGGEN_DISTRIBUTED": "off"}) is None
  with pytest.raises(ValueError, match="without both"):
    distributed.initialize("h0:1234", num_processes=None, process_id=None, cpu_collectives=None)
  assert distributed.initialize(cpu_collectives=None) is False   # plain single process


# --------------------------------------------------------------------------- rules (8 devices)
@multidevice(8)
def test_rules_drop_axes_that_do_not_divide():
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from longgen_jax import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh("fsdp=2,sequence=2,tensor=2")
  spec = parallel.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh)
  assert spec == P(("fsdp", "sequence"), "tensor", None)
  # 6 is not divisible by fsdp*sequence=4: keep fsdp only; 3 KV heads: replicated
  assert parallel.logical_to_spec(("embed", "kv_heads", "head_dim"), (6, 3, 16), mesh) == \
      P("fsdp", None, None)
  assert parallel.batch_spec(mesh) == P("fsdp", "sequence")
  assert jax.device_count() == 8


@multidevice(8)
def test_optimizer_state_follows_parameter_sharding():
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from longgen_jax import parallel  # pylint: disable=import-outside-toplevel
  from longgen_jax.model import Llama, tiny  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh("fsdp=4,tensor=2")
  params = nnx.split(nnx.eval_shape(lambda: Llama(tiny(), rngs=nnx.Rngs(0))), nnx.Param, ...)[1]
  opt = jax.eval_shape(optax.adamw(1e-3).init, params)
  p_sh, o_sh = parallel.tree_shardings(params, mesh), parallel.tree_shardings(opt, mesh)
  p_specs = [s.spec for s in jax.tree.leaves(p_sh)]
  for moment in (o_sh[0].mu, o_sh[0].nu):
    assert [s.spec for s in jax.tree.leaves(moment)] == p_specs
  assert o_sh[0].count.spec == jax.sharding.PartitionSpec()
  assert any(s != jax.sharding.PartitionSpec() for s in p_specs)
