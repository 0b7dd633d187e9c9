"""Unit tests of the trainer's helpers: chunked loss, schedules, checksums, config arguments,
packed-batch FLOPs (MFU)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from longgen_jax.model import flops_per_token, tiny
from longgen_jax.model.errors import ConfigError
from longgen_jax.training import checkpoint as ckpt_lib
from longgen_jax.training import config_utils, metrics as metrics_lib, optim
from longgen_jax.training.loss import chunked_cross_entropy


def _dense_ce(hidden, unembed, targets, mask):
  logits = jnp.einsum("btd,dv->btv", hidden, unembed)
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return jnp.sum(nll * mask)


def _inputs(B=2, T=32, D=16, V=40, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  hidden = jax.random.normal(k[0], (B, T, D))
  unembed = jax.random.normal(k[1], (D, V)) * 0.3
  targets = jax.random.randint(k[2], (B, T), 0, V)
  mask = (jax.random.uniform(k[3], (B, T)) > 0.2).astype(jnp.float32)
  return hidden, unembed, targets, mask


@pytest.mark.parametrize("chunk", [0, 8, 32])
def test_chunked_cross_entropy_matches_dense_loss_and_gradients(chunk):
  hidden, unembed, targets, mask = _inputs()

  def chunked(h, w):
    return chunked_cross_entropy(h, w, targets, mask, chunk=chunk)[0]

  loss, grads = jax.value_and_grad(chunked, argnums=(0, 1))(hidden, unembed)
  ref, ref_grads = jax.value_and_grad(_dense_ce, argnums=(0, 1))(hidden, unembed, targets, mask)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
  assert float(chunked_cross_entropy(hidden, unembed, targets, mask, chunk=chunk)[1]) == float(
      mask.sum())


def test_chunked_cross_entropy_never_builds_full_logits():
  """With chunking, no [B, T, V] array appears in the compiled forward + backward."""
  B, T, D, V, C = 1, 256, 8, 512, 32
  hidden, unembed, targets, mask = _inputs(B, T, D, V)
  grad = jax.grad(lambda h, w: chunked_cross_entropy(h, w, targets, mask, chunk=C)[0],
                  argnums=(0, 1))
  hlo = jax.jit(grad).lower(hidden, unembed).compile().as_text()
  assert f"[{B},{T},{V}]" not in hlo and f"[{T},{V}]" not in hlo
  assert f"[{B},{C},{V}]" in hlo


def test_chunked_cross_entropy_rejects_ragged_chunks():
  hidden, unembed, targets, mask = _inputs(T=30)
  with pytest.raises(ValueError, match="multiple of the loss chunk"):
    chunked_cross_entropy(hidden, unembed, targets, mask, chunk=8)


def _train_cfg(**kw):
  c = config_utils.base_config().train
  c.update(kw)
  return c


def test_schedules():
  cos = optim.make_schedule(_train_cfg(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1))
  assert float(cos(0)) == 0.0 and abs(float(cos(10)) - 1.0) < 1e-6
  assert abs(float(cos(110)) - 0.1) < 1e-6
  const = optim.make_schedule(_train_cfg(schedule="constant", lr=2e-5, warmup_steps=5))
  assert float(const(0)) == 0.0 and float(const(5)) == pytest.approx(2e-5)
  assert float(const(5000)) == pytest.approx(2e-5)
  bad = optim.make_schedule(_train_cfg(schedule="constant", lr=1.0, debug_inf_lr_at_step=3))
  assert np.isinf(float(bad(2))) and np.isfinite(float(bad(1))) and np.isfinite(float(bad(3)))


def test_optimizer_clips_and_skips_decay_on_vectors():
  tx = optim.make_optimizer(_train_cfg(grad_clip=1.0, weight_decay=0.5), optax.constant_schedule(0.1))
  params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  assert float(jnp.abs(updates["norm"]).max()) == 0.0  # no decay on vectors
  assert float(jnp.abs(updates["w"]).max()) > 0.0


def test_checksums_detect_a_flipped_bit_and_ignore_sharding_order():
  tree = {"a": jnp.arange(1000, dtype=jnp.float32) / 7, "b": jnp.ones((3, 5), jnp.bfloat16),
          "s": jnp.int32(7)}
  sums = ckpt_lib.tree_checksums(tree)
  assert sums == ckpt_lib.tree_checksums(jax.tree.map(jnp.copy, tree))
  raw = np.asarray(tree["a"]).view(np.uint32).copy()
  raw[500] ^= 1 << 3
  flipped = dict(tree, a=jnp.asarray(raw.view(np.float32)))
  assert ckpt_lib.tree_checksums(flipped)["['a']"] != sums["['a']"]
  swapped = np.asarray(tree["a"]).copy()
  swapped[[1, 2]] = swapped[[2, 1]]
  assert ckpt_lib.tree_checksums(dict(tree, a=jnp.asarray(swapped)))["['a']"] != sums["['a']"]


def test_parse_arg():
  a = config_utils.parse_arg("full,steps=20,lr=1e-3,sparse=strided:4:2@16", full=False, steps=10,
                             lr=3e-4, sparse="sink_window:16:32@16")
  assert a.full is True and a.steps == 20 and a.lr == 1e-3 and a.sparse == "strided:4:2@16"
  assert isinstance(a, ml_collections.ConfigDict)
  assert config_utils.parse_arg(None, full=False).full is False
  with pytest.raises(ConfigError, match="unknown config argument"):
    config_utils.parse_arg("fulll", full=False)
  with pytest.raises(ConfigError, match=r"steps='ten' is not an int \(e\.g\. steps=10\)"):
    config_utils.parse_arg("steps=ten", steps=10)
  with pytest.raises(ConfigError, match="lr='x' is not a number"):
    config_utils.parse_arg("lr=x", lr=3e-4)


def test_gradient_accumulation_matches_one_big_batch():
  """grad_accum=2 gives the update of one 4-row batch (loss normalised over the whole batch)."""
  from flax import nnx
  from longgen_jax.model.config import ModelConfig
  from longgen_jax.model.llama import Llama
  from longgen_jax.train import init_params, make_train_step
  cfg = ModelConfig.from_dict(dict(
      vocab_size=64, d_model=32, n_layers=3, n_heads=2, n_kv_heads=1, ffn_dim=64,
      max_seq_len=32, dtype="float32", layout="longgen", sparse="sink_window:4:16@16",
      full="full@16"))
  train = config_utils.base_config().train
  train.update(dict(batch_size=4, seq_len=32, lr=1e-2, warmup_steps=0, schedule="constant"))
  tx = optim.make_optimizer(train, optim.make_schedule(train))
  params = init_params(cfg, seed=0)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, (4, 33)).astype(np.int32)
  mask = np.ones((4, 32), np.float32)
  mask[:2, 20:] = 0.0   # uneven target counts across the two micro-batches
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
           "positions": np.tile(np.arange(32, dtype=np.int32), (4, 1)),
           "segment_ids": np.ones((4, 32), np.int32)}
  batch = jax.tree.map(jnp.asarray, batch)
  results = []
  for accum in (1, 2):
    train.grad_accum = accum
    step = make_train_step(graphdef, tx, optim.make_schedule(train), train)
    state = {"step": jnp.int32(0), "params": jax.tree.map(jnp.copy, params),
             "opt_state": tx.init(params)}
    results.append(step(state, nnx.State({}), batch))
  (s1, m1), (s2, m2) = results
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
  # Adam's first step is ~lr * sign(grad): compare within 0.5% of that step size.
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
    np.testing.assert_allclose(a, b, atol=5e-3 * train.lr)


def test_truncated_newest_checkpoint_is_reported_and_skipped(tmp_path, caplog):
  import grain
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=5)

  def state_at(step):
    w = jnp.sin(jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64)) + step
    return {"params": {"w": w}, "opt_state": {"m": jnp.zeros(3)}}

  for step in (1, 2):
    next(it)
    ckpt.save(step, state_at(step), it, "{}", meta={})
  ckpt.close()
  files = [p for p in (tmp_path / "checkpoints" / "2" / "params").rglob("*")
           if p.is_file() and p.parent.name == "d"]   # array data chunks
  victim = max(files, key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

  it2 = iter(grain.MapDataset.range(100).to_iter_dataset())
  reader = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=5)
  abstract = ckpt_lib.abstract_like(state_at(0))
  with caplog.at_level("WARNING"):
    step, state, _ = reader.restore_latest(abstract, it2)
  reader.close()
  assert step == 1 and float(state["params"]["w"][0, 0]) == 1.0   # sin(0) + 1
  assert next(it2) == 1                       # the data position of step 1
  assert any("step 2" in r.getMessage() and "unusable" in r.getMessage() for r in caplog.records)
  assert (tmp_path / "checkpoints_corrupt").is_dir() and not (tmp_path / "checkpoints" / "2").exists()
  # With no usable step at all, the error is explicit instead of a silent fresh start.
  (tmp_path / "checkpoints" / "1" / "meta" / "metadata").write_text("{not json")
  with pytest.raises(ckpt_lib.CheckpointError, match="no usable checkpoint"):
    ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).restore_latest(abstract)


def test_checkpoint_of_another_model_is_a_mismatch_not_corruption(tmp_path):
  """Changed shapes (a new model in an old workdir) stop with a clear error; nothing is moved."""
  import grain
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  ckpt.save(1, {"params": {"w": jnp.ones((4, 4))}, "opt_state": {"m": jnp.zeros(2)}}, it, "{}", meta={})
  ckpt.close()
  other = ckpt_lib.abstract_like({"params": {"w": jnp.ones((4, 8))}, "opt_state": {"m": jnp.zeros(2)}})
  reader = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"\[4, 4\].*\[4, 8\]"):
    reader.restore_latest(other, it)
  reader.close()
  assert (tmp_path / "checkpoints" / "1").is_dir() and not (tmp_path / "checkpoints_corrupt").exists()


def test_step_flops_count_same_document_pairs_of_packed_rows():
  """4 packed documents (+ padding, its own segment) cost less attention than one document; the
  figure equals flops_per_token(..., doc_lens=...); unpacked rows keep the whole-row number."""
  T = 256
  for layers in (("full",), ("sink_window:4:32@16", "full")):
    cfg = tiny(layout="explicit", n_layers=len(layers), layers=layers, max_seq_len=T)
    sf = metrics_lib.StepFlops(cfg, T)
    whole = flops_per_token(cfg, T).total * T
    lens = (100, 60, 50, 40, 6)   # 4 documents and a padding run (id 0) at the end of the row
    packed = np.concatenate([np.full(n, i, np.int32) for i, n in zip((1, 2, 3, 4, 0), lens)])
    assert metrics_lib.doc_lengths(packed) == lens
    one_doc = np.concatenate([np.ones(T - 6, np.int32), np.zeros(6, np.int32)])
    seg = np.stack([packed, np.ones(T, np.int32), one_doc])
    hand = flops_per_token(cfg, T, doc_lens=lens)
    assert hand.matmul == flops_per_token(cfg, T).matmul
    assert hand.attention < flops_per_token(cfg, T).attention
    want = hand.total * T + whole + flops_per_token(cfg, T, doc_lens=(T - 6, 6)).total * T
    assert sf(seg) == pytest.approx(want, rel=1e-12)
    assert sf(seg[:1]) < sf(seg[1:2])              # packed < one document of the same length
    assert sf(seg[1:2]) == whole and sf(None, rows=3) == 3 * whole   # old number, exactly
    assert sf(seg) == sf(seg)                        # the cached path gives the same figure
  with pytest.raises(ValueError):
    sf(np.ones((2, T + 1), np.int32))
