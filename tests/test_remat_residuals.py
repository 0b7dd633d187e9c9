"""The attention kernels' residuals are named (``attn_out`` / ``attn_lse``) so a remat policy can
keep the kernel forward out of the backward's recomputation (issue #4).

A layer-shaped function (q, k, v projected from ``x``, attention, output projection) runs under
``jax.checkpoint`` with each policy; the gradient's jaxpr is searched for the attention forward
(the xla backend's forward loop; the Pallas GPU kernels' ``pallas_call`` in interpret mode):
``full`` runs it twice (forward + recomputation), ``save_attention`` once, and the gradients are
the same.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

import pallas_kernels
from pallas_kernels._common import ATTN_LSE, ATTN_OUT
from pallas_kernels.spec import AttentionSpec

from longgen_jax.model.remat import REMAT3_UNSEEN, REMAT_POLICIES, remat_policy

B, T, DM, HQ, HKV, DH = 1, 64, 32, 4, 2, 16
QKV = ("query_proj", "key_proj", "value_proj")
SPECS = (AttentionSpec.full(16), AttentionSpec.sink_window(4, 32, 16))


def _params(seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 6)
  x = jax.random.normal(ks[0], (B, T, DM), jnp.float32)
  w = {"wq": jax.random.normal(ks[1], (DM, HQ, DH)) * DM ** -0.5,
       "wk": jax.random.normal(ks[2], (DM, HKV, DH)) * DM ** -0.5,
       "wv": jax.random.normal(ks[3], (DM, HKV, DH)) * DM ** -0.5,
       "wo": jax.random.normal(ks[4], (HQ, DH, DM)) * DM ** -0.5}
  return x, w


def _layer(attend, x, w):
  """q, k, v from ``x`` (recomputable), attention, ``wo``; names tagged like layers.py."""
  q, k, v = (jax.ad_checkpoint.checkpoint_name(jnp.einsum("btd,dhk->bthk", x, w[p]), n)
             for p, n in zip(("wq", "wk", "wv"), QKV))
  o = jax.ad_checkpoint.checkpoint_name(attend(q, k, v), "context")
  return x + jnp.einsum("bthk,hkd->btd", o, w["wo"])


def _loss(attend, policy, x, w):
  f = functools.partial(_layer, attend)
  if policy != "none":
    f = jax.checkpoint(f, policy=remat_policy(policy))
  y = f(x, w)
  return jnp.sum(y * jnp.sin(y))


def _count(jaxpr, names, acc=None):
  """Equations per primitive name (recursive; kernel bodies of ``pallas_call`` not entered)."""
  acc = dict.fromkeys(names, 0) if acc is None else acc
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in acc:
      acc[eqn.primitive.name] += 1
    if eqn.primitive.name != "pallas_call":
      for sub in jcore.jaxprs_in_params(eqn.params):
        _count(sub, names, acc)
  return acc


def _grad_jaxpr(attend, policy):
  x, w = _params()
  return jax.make_jaxpr(jax.grad(functools.partial(_loss, attend, policy), (0, 1)))(x, w).jaxpr


def _grads(attend, policy):
  x, w = _params()
  return jax.jit(jax.grad(functools.partial(_loss, attend, policy), (0, 1)))(x, w)


def _xla(spec):
  return functools.partial(pallas_kernels.attention, spec=spec, backend="xla")


def _triton(spec):
  from pallas_kernels.backends import pallas_gpu  # pylint: disable=import-outside-toplevel
  cfg = pallas_gpu.TritonConfig(block_q=16, block_k=16, block_q_dq=16, block_k_dq=16,
                                block_q_dkv=16, block_k_dkv=16)
  return functools.partial(pallas_gpu.attention, spec=spec, interpret=True, config=cfg)


def _scans(jaxpr):
  """The xla backend's loops (its forward and backward are ``fori_loop`` -> ``scan``)."""
  c = _count(jaxpr, ("scan", "while"))
  return c["scan"] + c["while"]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_xla_attention_forward_not_recomputed(spec):
  attend = _xla(spec)
  x, w = _params()
  n_fwd = _scans(jax.make_jaxpr(functools.partial(_layer, attend))(x, w).jaxpr)
  n_bwd = _scans(_grad_jaxpr(attend, "none")) - n_fwd
  assert n_fwd > 0 and n_bwd > 0
  assert _scans(_grad_jaxpr(attend, "full")) == 2 * n_fwd + n_bwd      # forward re-run
  assert _scans(_grad_jaxpr(attend, "save_context")) == 2 * n_fwd + n_bwd
  for policy in ("save_attention", "save_attention_qkv", "minimal_with_attention"):
    assert _scans(_grad_jaxpr(attend, policy)) == n_fwd + n_bwd, policy  # forward once
  ref = _grads(attend, "full")
  for policy in ("none", "save_attention", "save_attention_qkv", "minimal_with_attention"):
    jax.tree.map(np.testing.assert_array_equal, _grads(attend, policy), ref)


def _hlo_whiles(fn, *args):
  """While loops in the optimised HLO (interpret-mode Pallas kernels are loops; XLA removes the
  dead ones: jaxpr-level DCE never drops a ``pallas_call``)."""
  txt = jax.jit(fn).lower(*args).compile().as_text()
  return txt.count(" while(")


def test_pallas_gpu_interpret_forward_not_recomputed():
  attend = _triton(SPECS[0])
  x, w = _params()
  n_fwd = _hlo_whiles(functools.partial(_layer, attend), x, w)
  grad = lambda policy: jax.grad(functools.partial(_loss, attend, policy), (0, 1))
  n_none = _hlo_whiles(grad("none"), x, w)
  assert n_fwd > 0 and n_none > n_fwd
  assert _hlo_whiles(grad("full"), x, w) == n_none + n_fwd
  assert _hlo_whiles(grad("save_attention"), x, w) == n_none
  jax.tree.map(np.testing.assert_array_equal, _grads(attend, "save_attention"),
               _grads(attend, "full"))


@pytest.mark.parametrize("backend", ("xla", "triton"))
def test_kernel_outputs_pass_a_barrier_before_they_are_saved(backend):
  """XLA:GPU's dynamic-slice fusion cloned a kernel's custom call whose out / lse were written
  into a scanned layer stack's residuals, so each forward ran twice (FA4's callback and the
  Mosaic GPU kernels, H100; XLA:CPU has no such pass, so the guard is what is checked here): the
  frame's forward rule puts the kernel's outputs through one optimization barrier, and the
  saved residuals are what comes out of it."""
  attend = _xla(SPECS[1]) if backend == "xla" else _triton(SPECS[1])
  x, w = _params()
  layer = jax.checkpoint(functools.partial(_layer, attend), policy=remat_policy("save_attention"))
  loss = lambda x, ws: jnp.sum(jnp.sin(jax.lax.scan(lambda x, w: (layer(x, w), None), x, ws)[0]))
  ws = jax.tree.map(lambda a: jnp.stack([a, a]), w)              # a 2-layer scan, as the model
  jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, ws).jaxpr
  found = []

  def walk(jx):
    for i, eqn in enumerate(jx.eqns):
      if eqn.primitive.name == "optimization_barrier":
        users = [e.primitive.name for e in jx.eqns[i + 1:]
                 if set(map(id, e.invars)) & set(map(id, eqn.outvars))]
        found.append(users)
      if eqn.primitive.name != "pallas_call":
        for sub in jcore.jaxprs_in_params(eqn.params):
          walk(sub)
  walk(jaxpr)
  tagged = [u for u in found if u.count("name") == 2]            # attn_out / attn_lse
  assert len(tagged) == 1, found                # one forward per layer, its outputs barriered


def test_saved_residuals_are_named_and_not_doubled(capsys):
  """The attention policies save the kernel's out and lse, never ``context`` as well."""
  attend = _xla(SPECS[0])
  x, w = _params()

  def saved(policy):
    f = jax.checkpoint(functools.partial(_layer, attend), policy=remat_policy(policy))
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(f, x, w)
    return set(re.findall(r"named '([^']+)'", capsys.readouterr().out))

  assert saved("save_context") == {"context"}
  assert saved("save_attention") == {ATTN_OUT, ATTN_LSE}
  assert saved("save_attention_qkv") == {ATTN_OUT, ATTN_LSE, *QKV}
  for name in REMAT_POLICIES:
    if "attention" in name:
      got = saved(name)
      assert {ATTN_OUT, ATTN_LSE} <= got and "context" not in got, (name, got)


def test_remat3_warns_and_reruns_the_kernel_forward():
  """JAX's opt-in ``jax_remat3`` applies policies to the primal trace only, so the kernels' tags in
  their custom_vjp forward rules go unseen: the step re-runs each attention forward under
  ``save_attention`` (3 callback sites in the lowered step instead of 2), and
  ``remat_policy`` says so. If a JAX release makes remat3 see the tags, this test fails and the
  warning can go."""
  import os  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from jax._src import config  # pylint: disable=import-outside-toplevel
  if getattr(config, "remat3", None) is None:
    pytest.skip("this JAX has no jax_remat3")
  from pallas_kernels import api  # pylint: disable=import-outside-toplevel
  from pallas_kernels.backends import fa4  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
  import train_step  # pylint: disable=import-outside-toplevel

  def callback_sites(remat3: bool) -> int:
    _, step, state, rest, batch, _ = train_step.build_step(
        "full", 256, "save_attention", tiny=True, segment_ids=False, backend="fa4_em3")
    with config.remat3(remat3):
      text = step.lower(state, rest, batch).as_text()
    return text.count("xla_buffer_python_cpu_callback")

  api.register_backend("fa4_em3", functools.partial(fa4.fa4_attention, impl="emulate"), None,
                       auto=False, platforms=("cpu",))
  try:
    assert callback_sites(False) == 2                  # forward + backward
    with pytest.warns(UserWarning, match="jax_remat3"):
      assert callback_sites(True) == 3                 # + the forward again in the backward
  finally:
    api.unregister_backend("fa4_em3")
  assert "save_attention" in REMAT3_UNSEEN and "save_context" not in REMAT3_UNSEEN
