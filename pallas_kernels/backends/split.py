"""Split backends: one kernel for calls that are not differentiated, another under autodiff.

On an H100 the fastest sink+window forward (the Mosaic GPU forward of ``pallas_gpu``) is not the
fastest forward+backward (cuDNN window attention + LSE-merged sinks, whose backward is cuDNN's):
docs/benchmarks.md. ``split_attention(infer, train)`` makes one backend out of two registered ones
with a ``jax.custom_vjp`` whose primal runs ``infer`` and whose forward rule runs ``train`` (and
keeps ``train``'s own VJP as the residual). JAX calls the primal when nothing differentiates the
call (prefill, evaluation) and the forward rule under ``grad``/``vjp`` (training, including the
forward recomputed under remat), so each use gets its fastest kernel. The two kernels compute the
same function; their outputs differ by rounding only (both are checked against the dense reference
in the tests of each backend).
"""

from __future__ import annotations

import functools

import jax


def split_attention(infer: str, train: str):
  """A backend ``fn`` (contract of ``pallas_kernels.api.register_backend``) running the registered
  backend ``infer`` when not differentiated and ``train`` when differentiated."""

  def fn(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset=0, kv_offset=0,
         scale=None, return_lse=False):
    from pallas_kernels import api  # pylint: disable=g-import-not-at-top
    run = {name: functools.partial(api.get_backend_fn(name), spec=spec, q_offset=q_offset,
                                   kv_offset=kv_offset, scale=scale, return_lse=return_lse)
           for name in (infer, train)}

    @jax.custom_vjp
    def call(q, k, v, seg, kv_seg):
      return run[infer](q, k, v, segment_ids=seg, kv_segment_ids=kv_seg)

    def call_fwd(q, k, v, seg, kv_seg):
      out, vjp = jax.vjp(lambda q, k, v: run[train](q, k, v, segment_ids=seg,
                                                    kv_segment_ids=kv_seg), q, k, v)
      return out, vjp

    def call_bwd(vjp, ct):
      return (*vjp(ct), None, None)

    call.defvjp(call_fwd, call_bwd)
    return call(q, k, v, segment_ids, kv_segment_ids)

  fn.__name__ = f"split_{infer}_{train}"
  return fn


def mosaic_sink_window_supports(platform, spec, shapes, dtype) -> str | None:
  """``split_gpu``: sink+window calls where both the Mosaic GPU forward (pallas_gpu) and cuDNN
  apply; elsewhere ``auto`` takes the next backend (cudnn or pallas_gpu)."""
  from pallas_kernels.backends import cudnn, pallas_gpu  # pylint: disable=g-import-not-at-top
  if spec.kind != "sink_window":
    return f"only sink_window (the {spec.kind} pattern has one fastest kernel)"
  why = pallas_gpu.mosaic_unsupported(
      shapes.q_len, shapes.kv_len, shapes.head_dim, dtype, q_offset=shapes.q_offset,
      kv_offset=shapes.kv_offset)
  if why:
    return f"the Mosaic GPU forward cannot run it: {why}"
  return cudnn.registry_supports(platform, spec, shapes, dtype)


# ``split_gpu`` (backends/registry.py): the Mosaic GPU forward of pallas_gpu when the call is not
# differentiated, cuDNN under autodiff.
split_gpu_attention = split_attention("pallas_gpu", "cudnn")
