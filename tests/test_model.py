"""Tests of the NNX Llama: shapes, masking semantics, packing, scan, remat, canonical params,
GQA, tied embeddings and parity with transformers' Llama.

CPU budget: every distinct jit compile costs ~1 s on the CI cores, so the tests share one jitted
forward (keyed on the model's graphdef) and build models from numpy parameters (JAX's threefry
RNG compiles slowly on CPU; only the init tests use it).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.extend import core as jcore
from flax import nnx

from pallas_kernels.spec import AttentionSpec

from longgen_jax.model import (SINGLE_DEVICE, Llama, abstract_model, canonical_shapes,
                               from_canonical, llama2_70b, load_canonical, logits_from_hidden,
                               param_axes, param_count, tiny, to_canonical)

SW = "sink_window:4:32@16"
STRIDED = "strided:2:3@16"
FULL16 = "full@16"


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, tokens, positions, segment_ids):
  model = nnx.merge(graphdef, state)
  hidden = model.hidden_states(tokens, positions, segment_ids)
  return logits_from_hidden(model.cfg, hidden, model.unembedding()), hidden


def run(model, tokens, positions=None, segment_ids=None):
  """``(logits, hidden)``; one compile per (model structure, shapes)."""
  graphdef, state = nnx.split(model)
  return _run(graphdef, state, tokens, positions, segment_ids)


def logits_of(model, tokens, positions=None, segment_ids=None):
  return run(model, tokens, positions, segment_ids)[0]


def random_canonical(cfg, seed):
  """Canonical parameters from numpy (norm scales near 1, matrices ~ N(0, 0.02^2))."""
  rng = np.random.default_rng(seed)

  def make(name, shape):
    if name.endswith("norm"):
      return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (cfg.initializer_range * rng.standard_normal(shape)).astype(np.float32)

  tree = canonical_shapes(cfg)
  out = {k: make(k, v) for k, v in tree.items() if k != "layers"}
  out["layers"] = [{k: make(k, v) for k, v in p.items()} for p in tree["layers"]]
  return out


def make_model(cfg, seed=0):
  return from_canonical(cfg, random_canonical(cfg, seed))


def tokens_for(cfg, B, T, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)), jnp.int32)


def count_primitives(jaxpr, acc=None):
  acc = {} if acc is None else acc
  for eqn in jaxpr.eqns:
    acc[eqn.primitive.name] = acc.get(eqn.primitive.name, 0) + 1
    for sub in jcore.jaxprs_in_params(eqn.params):
      count_primitives(sub, acc)
  return acc


# ------------------------------------------------------------------ init, shapes and dtypes
def test_init_is_independent_of_grouping_and_forward_shapes():
  """Same seed -> same canonical parameters with or without scan; HF-style statistics."""
  cfg = tiny()
  scanned = Llama(cfg, rngs=nnx.Rngs(5))
  flat = Llama(cfg.replace(scan_layers=False), rngs=nnx.Rngs(5))
  a, b = to_canonical(scanned), to_canonical(flat)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["layers"][0]["wq"], a["layers"][1]["wq"])
  np.testing.assert_array_equal(a["layers"][3]["mlp_norm"], np.ones(cfg.d_model))
  assert abs(float(np.std(a["embed"])) - cfg.initializer_range) < 0.002
  assert a["layers"][0]["wq"].dtype == np.float32
  logits, hidden = run(scanned, tokens_for(cfg, 2, 64))
  assert logits.shape == (2, 64, cfg.vocab_size) and logits.dtype == jnp.float32
  assert hidden.shape == (2, 64, cfg.d_model) and hidden.dtype == jnp.float32
  assert scanned.unembedding().shape == (cfg.d_model, cfg.vocab_size)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_bf16_compute_keeps_fp32_params_and_logits():
  cfg = tiny(dtype="bfloat16")
  tree = random_canonical(cfg, 0)
  model = from_canonical(cfg, tree)
  tok = tokens_for(cfg, 2, 64)
  logits, hidden = run(model, tok)
  assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
  assert model.embed[...].dtype == jnp.float32
  assert model.segments[0].layers[0].wq[...].dtype == jnp.float32
  ref = logits_of(from_canonical(cfg.replace(dtype="float32"), tree), tok)
  err = float(jnp.max(jnp.abs(ref - logits)))
  assert err < 0.05 * float(jnp.max(jnp.abs(ref))), err


# ------------------------------------------------------------------ masking semantics
def test_no_future_leak_every_spec_kind():
  """Changing token t+1 never changes logits at <= t (a stack with all three kinds)."""
  cfg = tiny(layout="explicit", n_layers=3, layers=(SW, FULL16, STRIDED))
  model = make_model(cfg, 1)
  T = 96  # > window 32 and > 2 strided blocks
  base = np.asarray(tokens_for(cfg, 1, T))
  changed = [5, 40, 70, 95]
  rows = [base[0]]
  for p in changed:
    r = base[0].copy()
    r[p] = (r[p] + 1) % cfg.vocab_size
    rows.append(r)
  logits = np.asarray(logits_of(model, jnp.asarray(np.stack(rows))))
  for b, p in enumerate(changed, start=1):
    np.testing.assert_allclose(logits[b, :p], logits[0, :p], atol=1e-6, rtol=0)
    assert np.abs(logits[b, p] - logits[0, p]).max() > 1e-4


@pytest.mark.parametrize("spec", [FULL16, SW, STRIDED])
def test_one_layer_dependencies_follow_the_spec(spec):
  """With one layer, logits at i change with token j iff i == j or spec.allowed(i, j)."""
  cfg = tiny(layout="explicit", n_layers=1, layers=(spec,))
  s = AttentionSpec.parse(spec)
  model = make_model(cfg, 2)
  T = 96
  base = np.asarray(tokens_for(cfg, 1, T, seed=3))
  js = [2, 10, 20, 50]
  rows = [base[0]]
  for j in js:
    r = base[0].copy()
    r[j] = (r[j] + 7) % cfg.vocab_size
    rows.append(r)
  logits = np.asarray(logits_of(model, jnp.asarray(np.stack(rows))))
  i = np.arange(T)
  for b, j in enumerate(js, start=1):
    diff = np.abs(logits[b] - logits[0]).max(-1)
    expect = (i == j) | s.allowed(i, j)
    np.testing.assert_array_equal(diff > 1e-6, expect, err_msg=f"{spec} token {j}")


def test_segment_ids_isolate_packed_documents():
  la, lb = 40, 56  # the boundary falls inside a 16-token block
  pos = jnp.concatenate([jnp.arange(la), jnp.arange(lb)])[None].astype(jnp.int32)
  seg = jnp.concatenate([jnp.full((la,), 1), jnp.full((lb,), 2)])[None].astype(jnp.int32)
  # Full attention: a packed document gives exactly the logits it gives alone.
  cfg = tiny(layout="full", full=FULL16, n_layers=2)
  model = make_model(cfg, 3)
  tok = tokens_for(cfg, 1, la + lb, seed=4)
  packed = logits_of(model, tok, pos, seg)
  # Both documents alone, in one batch of length lb (doc A padded at the END: causal).
  alone = logits_of(model, jnp.concatenate([tok[:, :lb], tok[:, la:]]))
  np.testing.assert_allclose(packed[0, :la], alone[0, :la], atol=2e-5)
  np.testing.assert_allclose(packed[0, la:], alone[1], atol=2e-5)
  # LongGen layout with sinks: changing document A never changes document B.
  cfg = tiny()
  model = make_model(cfg, 4)
  other = tok.at[:, :la].set((tok[:, :la] + 1) % cfg.vocab_size)
  both = logits_of(model, jnp.concatenate([tok, other]), jnp.concatenate([pos, pos]),
                   jnp.concatenate([seg, seg]))
  np.testing.assert_allclose(both[0, la:], both[1, la:], atol=1e-6)
  assert float(jnp.abs(both[0, :la] - both[1, :la]).max()) > 1e-4


# ------------------------------------------------------------------ scan and remat
@pytest.mark.parametrize("layout", [
    dict(),  # LongGen S×2 F×2 S×2: three runs
    dict(layout="explicit", n_layers=7, layers=(SW, SW, FULL16) * 2 + (SW,)),  # periodic + rest
])
def test_scan_matches_unscanned(layout):
  cfg = tiny(**layout)
  tree = random_canonical(cfg, 5)
  scanned = from_canonical(cfg, tree)
  flat = from_canonical(cfg.replace(scan_layers=False), tree)
  assert any(seg.scanned for seg in scanned.plan)
  assert not any(seg.scanned for seg in flat.plan)
  tok = tokens_for(cfg, 2, 64, seed=6)
  np.testing.assert_allclose(logits_of(scanned, tok), logits_of(flat, tok), atol=1e-5, rtol=1e-5)


def _jaxpr(cfg, T=64):
  graphdef, state = nnx.split(abstract_model(cfg))
  tok = jax.ShapeDtypeStruct((1, T), jnp.int32)
  return jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t))(state, tok).jaxpr


def test_scan_traces_each_layer_body_once():
  """32 and 80 layers trace the same matmuls as 6: one body per scanned run, i.e. exactly the
  matmuls of the 3-layer unscanned model S F S."""
  reference = count_primitives(_jaxpr(tiny(n_layers=3, scan_layers=False)))["dot_general"]
  for n in (6, 32, 80):
    jaxpr = _jaxpr(tiny(n_layers=n, remat="full"))
    top = [e.primitive.name for e in jaxpr.eqns]
    assert top.count("scan") == 3, (n, top)
    assert count_primitives(jaxpr)["dot_general"] == reference, n


def _remat_count(cfg):
  counts = count_primitives(_jaxpr(cfg, T=32))
  return sum(counts.get(p, 0) for p in ("checkpoint", "remat2", "remat"))


def test_remat_per_kind_and_gradients_unchanged():
  cfg = tiny()
  assert _remat_count(cfg) == 0
  assert _remat_count(cfg.replace(remat_full="full")) == 1  # only the full-attention run
  both = cfg.replace(remat="minimal_with_context", remat_full="full")
  assert _remat_count(both) == 3
  tree = random_canonical(cfg, 8)
  tok = tokens_for(cfg, 1, 32, seed=7)

  def grads(c):
    graphdef, params = nnx.split(from_canonical(c, tree), nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tok) ** 2)
    return jax.jit(jax.grad(loss))(params)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads(cfg),
               grads(both))


# ------------------------------------------------------------------ the handed attention fn
class _RecordingAttention:
  """An ``AttentionFn`` that records what the model asks of it, then runs the kernel."""

  def __init__(self):
    self.specs, self.constrained = set(), []

  def __call__(self, q, k, v, spec, **kw):
    self.specs.add(spec)
    return SINGLE_DEVICE(q, k, v, spec, **kw)

  def constrain(self, x, logical):
    self.constrained.append(logical)
    return x


@pytest.mark.parametrize("scan_layers,remat", [(True, "full"), (False, "none")])
def test_model_runs_the_attention_fn_it_is_handed(scan_layers, remat):
  """Every layer (scanned or not, under remat) calls the caller's ``attention_fn``; the result is
  the default single-device one."""
  cfg = tiny(scan_layers=scan_layers, remat=remat)
  graphdef, state = nnx.split(make_model(cfg, 3))
  tok = tokens_for(cfg, 1, 32, seed=3)
  fn = _RecordingAttention()
  got = jax.jit(lambda s: nnx.merge(graphdef, s).hidden_states(tok, attention_fn=fn))(state)
  assert fn.specs == set(cfg.layers)
  assert fn.constrained == [("vocab", None)]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(run(make_model(cfg, 3), tok)[1]))


def test_model_does_not_import_parallel():
  """The model and the train step get their attention from the caller, not from a mesh module."""
  code = ("import sys, longgen_jax.model, longgen_jax.training.step; "
          "print(sorted(m for m in sys.modules if m.startswith('longgen_jax.parallel')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
  assert out.strip() == "[]", out


# ------------------------------------------------------------------ canonical parameters
def test_canonical_round_trip_and_errors():
  cfg = tiny(layout="explicit", n_layers=7, layers=(SW, SW, FULL16) * 2 + (SW,))
  tree = random_canonical(cfg, 9)
  model = from_canonical(cfg, tree)
  assert len(model.plan) == 2  # scan[S S F]×2 | S
  out = to_canonical(model)
  assert len(out["layers"]) == 7 and out["layers"][2]["wq"].shape == (32, 4, 8)
  jax.tree.map(np.testing.assert_array_equal, tree, out)
  other = from_canonical(cfg.replace(scan_layers=False), out)
  jax.tree.map(np.testing.assert_array_equal, tree, to_canonical(other))
  # load_canonical casts (bf16 in -> fp32 params) and refuses wrong shapes naming the tensor.
  half = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), tree)
  load_canonical(other, half)
  assert other.embed[...].dtype == jnp.float32
  load_canonical(other, tree)  # host arrays into a concrete (sharded) model
  jax.tree.map(np.testing.assert_array_equal, tree, to_canonical(other))
  bad = jax.tree.map(lambda x: x, tree)
  bad["layers"][3]["wk"] = np.zeros((32, 3, 8), np.float32)
  with pytest.raises(ValueError, match=r"layers\[3\]\.wk: shape \(32, 3, 8\)"):
    load_canonical(model, bad)
  missing = dict(tree)
  missing.pop("lm_head")
  with pytest.raises(ValueError, match=r"missing \['lm_head'\]"):
    from_canonical(cfg, missing)
  with pytest.raises(ValueError, match="bfloat16 != param_dtype float32"):
    load_canonical(other, half, strict_dtype=True)
  ints = jax.tree.map(lambda x: x, tree)
  ints["embed"] = np.zeros(ints["embed"].shape, np.int32)
  with pytest.raises(ValueError, match="embed: dtype int32 is not a floating dtype"):
    load_canonical(other, ints)


def test_abstract_model_and_param_count():
  cfg = llama2_70b(layout="longgen", sparse="sink_window:64:4096", max_seq_len=131072)
  model = abstract_model(cfg)
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert sum(int(np.prod(x.shape)) for x in leaves) == param_count(cfg) == 68_976_648_192
  assert len(model.plan) == 3
  tree = to_canonical(model)
  assert tree["layers"][79]["wk"].shape == (8192, 8, 128)
  # Logical axis names mirror the NNX state, one name per dimension.
  shapes = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  axes = param_axes(model)
  flat_axes = dict(jax.tree_util.tree_leaves_with_path(
      axes, is_leaf=lambda x: isinstance(x, tuple)))
  flat_shapes = dict(jax.tree_util.tree_leaves_with_path(shapes))
  assert flat_axes.keys() == flat_shapes.keys()
  assert all(len(flat_axes[k]) == len(flat_shapes[k].shape) for k in flat_axes)
  assert axes["segments"][1]["layers"][0]["wq"] == ("layers", "embed", "q_heads", "head_dim")


# ------------------------------------------------------------------ GQA and tied embeddings
def test_gqa_equals_mha_with_repeated_kv_heads():
  cfg = tiny(n_heads=4, n_kv_heads=2)
  tree = random_canonical(cfg, 10)
  gqa = from_canonical(cfg, tree)
  for p in tree["layers"]:
    p["wk"] = np.repeat(p["wk"], 2, axis=1)  # query head h uses kv head h // 2
    p["wv"] = np.repeat(p["wv"], 2, axis=1)
  mha = from_canonical(cfg.replace(n_kv_heads=4), tree)
  tok = tokens_for(cfg, 2, 64, seed=11)
  np.testing.assert_allclose(logits_of(gqa, tok), logits_of(mha, tok), atol=1e-5, rtol=1e-5)


def test_tied_embeddings():
  cfg = tiny(tie_embeddings=True)
  model = make_model(cfg, 12)
  assert not hasattr(model, "lm_head") and "lm_head" not in to_canonical(model)
  np.testing.assert_array_equal(model.unembedding(), model.embed[...].T)
  assert param_count(cfg) == param_count(tiny()) - cfg.d_model * cfg.vocab_size
  logits, hidden = run(model, tokens_for(cfg, 1, 32, seed=13))
  np.testing.assert_allclose(logits, hidden @ model.embed[...].T, atol=1e-5)


# ------------------------------------------------------------------ Hugging Face parity
def test_full_attention_matches_transformers_llama():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = tiny(layout="full", full=FULL16, n_layers=2,
             rope={"theta": 10000.0, "scaling": "llama3", "factor": 4.0,
                   "original_max_position": 32})
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
      max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False,
      rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 32},
      attn_implementation="eager")
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(hf_cfg).eval()
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  D, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  tree = {"embed": sd["model.embed_tokens.weight"], "final_norm": sd["model.norm.weight"],
          "lm_head": sd["lm_head.weight"].T, "layers": []}
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    tree["layers"].append({
        "attn_norm": sd[p + "input_layernorm.weight"],
        "wq": sd[p + "self_attn.q_proj.weight"].T.reshape(D, H, Dh),
        "wk": sd[p + "self_attn.k_proj.weight"].T.reshape(D, K, Dh),
        "wv": sd[p + "self_attn.v_proj.weight"].T.reshape(D, K, Dh),
        "wo": sd[p + "self_attn.o_proj.weight"].T.reshape(H, Dh, D),
        "mlp_norm": sd[p + "post_attention_layernorm.weight"],
        "w_gate": sd[p + "mlp.gate_proj.weight"].T, "w_up": sd[p + "mlp.up_proj.weight"].T,
        "w_down": sd[p + "mlp.down_proj.weight"].T})
  model = from_canonical(cfg, tree)
  tok = np.array(tokens_for(cfg, 2, 48, seed=14))
  # Packed positions restart: HF takes position_ids directly.
  pos = np.concatenate([np.arange(20), np.arange(28)])[None].repeat(2, 0).astype(np.int32)
  with torch.no_grad():
    ref = hf(torch.from_numpy(tok).long()).logits.numpy()
    ref_pos = hf(torch.from_numpy(tok).long(),
                 position_ids=torch.from_numpy(pos).long()).logits.numpy()
  np.testing.assert_allclose(np.asarray(logits_of(model, jnp.asarray(tok))), ref, atol=1e-4)
  # Without segment ids both models attend across the restart; only RoPE positions differ.
  np.testing.assert_allclose(np.asarray(logits_of(model, jnp.asarray(tok), jnp.asarray(pos))),
                             ref_pos, atol=1e-4)
