"""Split backends: the primal runs one backend, autodiff the other (pallas_kernels/split.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api
from pallas_kernels.spec import AttentionSpec
from pallas_kernels.backends.split import split_attention

SPEC = AttentionSpec.sink_window(16, 64, 32)


@pytest.fixture
def backends():
  calls = []

  def tagged(name, base):
    def fn(q, k, v, spec, **kw):
      calls.append(name)
      out = api.get_backend_fn(base)(q, k, v, spec, **kw)
      # A visible difference between the two: lets the test see which one ran.
      bump = 1.0 if name == "infer_t" else 0.0
      return (out[0] + bump, out[1]) if isinstance(out, tuple) else out + bump
    return fn

  api.register_backend("infer_t", tagged("infer_t", "xla"), auto=False)
  api.register_backend("train_t", tagged("train_t", "reference"), auto=False)
  api.register_backend("split_t", split_attention("infer_t", "train_t"), auto=False)
  yield calls
  for n in ("infer_t", "train_t", "split_t"):
    api.unregister_backend(n)


def _inputs(T=128, seg=False):
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(ks[0], (2, T, 4, 16))
  k = jax.random.normal(ks[1], (2, T, 2, 16))
  v = jax.random.normal(ks[2], (2, T, 2, 16))
  s = (jnp.arange(T)[None] >= 50).astype(jnp.int32).repeat(2, 0) if seg else None
  return q, k, v, s


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("seg", [False, True])
def test_primal_runs_infer_and_grad_runs_train(backends, return_lse, seg):
  q, k, v, s = _inputs(seg=seg)
  run = lambda name: (lambda q, k, v: api.attention(  # noqa: E731
      q, k, v, SPEC, segment_ids=s, backend=name, return_lse=return_lse))
  out = jax.jit(run("split_t"))(q, k, v)
  want = jax.jit(run("infer_t"))(q, k, v)
  jax.tree.map(np.testing.assert_array_equal, out, want)

  def loss(name):
    def f(q, k, v):
      o = run(name)(q, k, v)
      o, lse = o if return_lse else (o, 0.0)
      return jnp.sum(jnp.sin(o)) + 0.1 * jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))
    return f
  got = jax.jit(jax.value_and_grad(loss("split_t"), argnums=(0, 1, 2)))(q, k, v)
  ref = jax.jit(jax.value_and_grad(loss("train_t"), argnums=(0, 1, 2)))(q, k, v)
  jax.tree.map(np.testing.assert_array_equal, got, ref)
  # And the differentiated value is the train backend's, not the infer one's (+1 bump).
  assert not np.allclose(got[0], jax.jit(loss("infer_t"))(q, k, v))
  assert "infer_t" in backends and "train_t" in backends


def test_split_under_remat_uses_train(backends):
  q, k, v, _ = _inputs()
  f = jax.checkpoint(lambda q, k, v: jnp.sum(api.attention(q, k, v, SPEC, backend="split_t")))
  g = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  r = jax.grad(lambda q, k, v: jnp.sum(api.attention(q, k, v, SPEC, backend="train_t")),
               argnums=(0, 1, 2))(q, k, v)
  jax.tree.map(np.testing.assert_array_equal, g, r)


def test_split_gpu_is_refused_off_gpu():
  q, k, v, _ = _inputs()
  with pytest.raises(ValueError, match="split_gpu"):
    api.attention(q, k, v, SPEC, backend="split_gpu")
  shapes = api.AttentionShapes(1, 4096, 4096, 32, 32, 128, 0, 0, False)
  assert api.select_backend(SPEC, shapes, jnp.bfloat16, platform="cpu") == "xla"
