"""Block-sparse flash attention for GPUs in Pallas (Triton lowering), with a custom VJP.

``attention(q, k, v, spec, ...)`` follows the contract of ``pallas_kernels.api.attention``
(docs/architecture.md §2): q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D], GQA by ``h // (Hq // Hkv)``,
absolute positions ``q_offset + arange(Tq)`` / ``kv_offset + arange(Tk)``, optional segment ids,
returns out [B, Tq, Hq, D] (q.dtype) and optionally lse [B, Hq, Tq] (fp32, natural log, ``-inf``
and a zero row for a query that sees no key). Differentiable in q, k, v (and through lse).

How it works (kernel bodies in ``pallas_gpu_kernels.py``, visit lists in ``gpu_tables.py``):
* the analytic block tables (§3) give, per query block, the KV blocks to visit; they are reordered
  full-first so each kernel runs an unmasked loop and a masked loop (partial tiles only); with
  segment ids the lists are per batch row and skip tiles across documents
  (``gpu_tables.segment_visits``);
* forward: grid (q block, batch, q head), online softmax in fp32 with exp2, bf16 MMA inputs;
* backward: delta = rowsum(dO * O) - dlse in XLA, a dQ kernel over the forward lists, and a
  dK/dV kernel over the transposed lists that loops over the G query heads of its KV head (GQA
  reduction in registers, no repeated K/V, no atomics);
* lengths that are not a multiple of the block are zero-padded (the ragged KV tail is masked),
  head_dim is zero-padded to a power of two.

On CPU the kernels run in Pallas interpret mode (``interpret=True``), which is what the unit tests
use; without a GPU and without ``interpret`` the call raises.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.backends import _frame, gpu_smem
from pallas_kernels.backends import pallas_gpu_kernels as K
from pallas_kernels._common import next_pow2
from pallas_kernels.backends.gpu_tables import kernel_tables, visit_table
from pallas_kernels.spec import AttentionSpec, as_spec

_LN2 = math.log(2.0)


FWD_IMPLS = ("auto", "triton", "mosaic")
BWD_IMPLS = ("auto", "triton", "mosaic", "mosaic_fused")


class PallasGpuError(ValueError):
  """The Pallas GPU backend cannot run this call (one clear line)."""


@dataclasses.dataclass(frozen=True)
class TritonConfig:
  """Tile sizes and launch parameters (blocks and warps powers of two, blocks >= 16).

  ``block_q``/``block_k``/``num_warps``/``num_stages`` are the forward kernel's, ``*_dq`` the dQ
  kernel's and ``*_dkv`` the dK/dV kernel's. Blocks are clamped to the (power-of-two rounded)
  lengths. Defaults: tuned on an H100 for D=128 bf16 (docs/kernels.md).

  ``fwd_impl``: ``"auto"`` (default) takes the Mosaic GPU forward of ``pallas_gpu_mosaic.py`` where
  it applies (sm_90, bf16/f16, head_dim % 64 == 0, zero offsets, Tq == Tk, the padded length a
  multiple of 128, not interpreting; segment ids too, skipping cross-document tiles) and the
  Triton forward otherwise; ``"mosaic"`` raises where it does not apply; ``"triton"`` always
  takes Triton. On an H100 the Mosaic forward is ~1.3-1.4x faster than Triton's
  (docs/kernels.md). (A forward with FA4's intra-warpgroup overlap, ``"mosaic_overlap"``, was
  removed on 2026-12-07: 10-12% slower than this one at 64K on an H100; docs/kernels.md.)

  ``bwd_impl``: ``"auto"`` (default) runs the single-pass Mosaic GPU backward
  ``pallas_gpu_mosaic_bwd.sparse_attention_bwd`` where it applies (the Mosaic forward's limits)
  and the Triton kernels otherwise; ``"mosaic_fused"`` raises where it does not apply. It is
  FA3's structure: 5 matmuls per tile instead of 7, dQ reduce-added in fp32 with a TMA (not
  bit-reproducible from run to run, as in FA3 and FA4; dK and dV are). Since 2026-12-06 (its
  ``rederive`` fix of register spills) it is 4-21% faster than the two-kernel Mosaic backward at
  64K on an H100 (docs/benchmarks.md). ``"mosaic"`` takes the Mosaic dQ and dK/dV kernels (the
  default until then; deterministic), raising where they do not apply; ``"triton"`` always
  takes Triton. Both Mosaic backwards pass the GPU reference tests
  (``tests/gpu/test_gpu_pallas_gpu.py -k mosaic``).
  """

  block_q: int = 128
  block_k: int = 128
  num_warps: int = 8
  num_stages: int = 3
  block_q_dq: int = 64
  block_k_dq: int = 64
  num_warps_dq: int = 4
  num_stages_dq: int = 2
  block_q_dkv: int = 64
  block_k_dkv: int = 64
  num_warps_dkv: int = 4
  num_stages_dkv: int = 2
  fwd_impl: str = "auto"
  bwd_impl: str = "auto"

  def __post_init__(self):
    for name, allowed in (("fwd_impl", FWD_IMPLS), ("bwd_impl", BWD_IMPLS)):
      if getattr(self, name) not in allowed:
        raise PallasGpuError(f"TritonConfig.{name} must be one of {allowed}, got "
                             f"{getattr(self, name)!r}")
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name in ("fwd_impl", "bwd_impl"):
        continue
      if f.name.startswith("num_stages"):
        if not isinstance(v, int) or v < 1:
          raise PallasGpuError(f"TritonConfig.{f.name} must be an int >= 1, got {v!r}")
        continue
      lo = 16 if f.name.startswith("block") else 1
      if not isinstance(v, int) or v < lo or v & (v - 1):
        raise PallasGpuError(f"TritonConfig.{f.name} must be a power of two >= {lo}, got {v!r}")


DEFAULT_CONFIG = TritonConfig()


@dataclasses.dataclass(frozen=True)
class _KernelStatic:
  """Static facts one kernel needs (hashable; read inside the kernel bodies as ``st``)."""

  spec: AttentionSpec
  scale: float
  c: float  # scale * log2(e)
  block_q: int
  block_k: int
  n_q_blocks: int
  q_offset: int
  kv_offset: int
  kv_end: int  # kv_offset + real kv length
  ragged: bool  # padded keys exist: partial tiles also check kpos < kv_end
  has_seg: bool
  group: int


def _kernel_static(prob: _frame.Problem, block_q, block_k, n_q_blocks, kv_pad, has_seg, group):
  return _KernelStatic(prob.spec, prob.scale, prob.scale * math.log2(math.e), block_q, block_k,
                       n_q_blocks, prob.q_offset, prob.kv_offset, prob.kv_offset + prob.kv_len,
                       kv_pad > prob.kv_len, has_seg, group)


def _tables(prob: _frame.Problem, block_q, block_k):
  return kernel_tables(prob.spec, prob.q_len, prob.kv_len, block_q, block_k, prob.q_offset,
                       prob.kv_offset)


def _visits(rows, row_seg, entry_seg, row_block, entry_block, row_of):
  """A kernel's visit table and its BlockSpec (grid (row, batch, head); ``row_of``: grid index ->
  table row): the static ``rows``, or with segment ids the per-batch lists of
  ``gpu_tables.segment_visits`` (cross-document tiles skipped)."""
  tab = visit_table(rows, row_seg, entry_seg, row_block, entry_block)
  if row_seg is None:
    return tab, pl.BlockSpec((None, tab.shape[1]), lambda i, b, h: (row_of(i), 0))
  return tab, pl.BlockSpec((None, None, tab.shape[2]), lambda i, b, h: (b, row_of(i), 0))


def _params(num_warps, num_stages):
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


# ---------------------------------------------------------------------------------- launches
def _fwd_call(cs: _frame.Problem, q, k, v, qseg, kseg):
  B, tq_pad, hq, d = q.shape
  tk_pad, hkv = k.shape[1], k.shape[2]
  g = hq // hkv
  cfg = cs.option("config")
  bq, bk = cfg.block_q, cfg.block_k
  t = _tables(cs, bq, bk)
  nq = t.n_q_blocks
  st = _kernel_static(cs, bq, bk, nq, tk_pad, qseg is not None, g)
  rev = lambda i: nq - 1 - i  # noqa: E731
  tab, tab_spec = _visits(t.fwd, qseg, kseg, bq, bk, rev)
  in_specs = [
      tab_spec,
      pl.BlockSpec((None, bq, None, d), lambda i, b, h: (b, rev(i), h, 0)),
      pl.BlockSpec((None, tk_pad, None, d), lambda i, b, h: (b, 0, h // g, 0)),
      pl.BlockSpec((None, tk_pad, None, d), lambda i, b, h: (b, 0, h // g, 0)),
  ]
  args = [tab, q, k, v]
  if qseg is not None:
    in_specs += [pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))),
                 pl.BlockSpec((None, tk_pad), lambda i, b, h: (b, 0))]
    args += [qseg, kseg]
  return pl.pallas_call(
      functools.partial(K.fwd_kernel, st=st),
      grid=(nq, B, hq),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, d), lambda i, b, h: (b, rev(i), h, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i)))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, hq, tq_pad), jnp.float32)],
      compiler_params=_params(cfg.num_warps, cfg.num_stages),
      interpret=cs.option("interpret"),
      name="longgen_sparse_fwd",
  )(*args)


def _dq_call(cs: _frame.Problem, q, k, v, qseg, kseg, do, lse2, delta):
  B, tq_pad, hq, d = q.shape
  tk_pad, hkv = k.shape[1], k.shape[2]
  g = hq // hkv
  cfg = cs.option("config")
  bq, bk = cfg.block_q_dq, cfg.block_k_dq
  t = _tables(cs, bq, bk)
  nq = t.n_q_blocks
  st = _kernel_static(cs, bq, bk, nq, tk_pad, qseg is not None, g)
  rev = lambda i: nq - 1 - i  # noqa: E731
  q_spec = pl.BlockSpec((None, bq, None, d), lambda i, b, h: (b, rev(i), h, 0))
  kv_spec = pl.BlockSpec((None, tk_pad, None, d), lambda i, b, h: (b, 0, h // g, 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i)))
  tab, tab_spec = _visits(t.fwd, qseg, kseg, bq, bk, rev)
  in_specs = [tab_spec, q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  args = [tab, q, k, v, do, lse2, delta]
  if qseg is not None:
    in_specs += [pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))),
                 pl.BlockSpec((None, tk_pad), lambda i, b, h: (b, 0))]
    args += [qseg, kseg]
  return pl.pallas_call(
      functools.partial(K.dq_kernel, st=st),
      grid=(nq, B, hq),
      in_specs=in_specs,
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_params(cfg.num_warps_dq, cfg.num_stages_dq),
      interpret=cs.option("interpret"),
      name="longgen_sparse_dq",
  )(*args)


def _dkv_call(cs: _frame.Problem, q, k, v, qseg, kseg, do, lse2, delta):
  B, tq_pad, hq, d = q.shape
  tk_pad, hkv = k.shape[1], k.shape[2]
  g = hq // hkv
  cfg = cs.option("config")
  bq, bk = cfg.block_q_dkv, cfg.block_k_dkv
  t = _tables(cs, bq, bk)
  nk = t.n_kv_blocks
  st = _kernel_static(cs, bq, bk, t.n_q_blocks, tk_pad, qseg is not None, g)
  q_spec = pl.BlockSpec((None, tq_pad, g, d), lambda j, b, h: (b, 0, h, 0))
  kv_spec = pl.BlockSpec((None, bk, None, d), lambda j, b, h: (b, j, h, 0))
  row_spec = pl.BlockSpec((None, g, tq_pad), lambda j, b, h: (b, h, 0))
  tab, tab_spec = _visits(t.bwd, kseg, qseg, bk, bq, lambda j: j)
  in_specs = [tab_spec, q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  args = [tab, q, k, v, do, lse2, delta]
  if qseg is not None:
    in_specs += [pl.BlockSpec((None, tq_pad), lambda j, b, h: (b, 0)),
                 pl.BlockSpec((None, bk), lambda j, b, h: (b, j))]
    args += [qseg, kseg]
  return pl.pallas_call(
      functools.partial(K.dkv_kernel, st=st),
      grid=(nk, B, hkv),
      in_specs=in_specs,
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_params(cfg.num_warps_dkv, cfg.num_stages_dkv),
      interpret=cs.option("interpret"),
      name="longgen_sparse_dkv",
  )(*args)


def mosaic_unsupported(q_len: int, kv_len: int, head_dim: int, dtype, *, q_offset: int = 0,
                       kv_offset: int = 0, interpret: bool = False, step: int | None = None,
                       padded_len: int | None = None) -> str | None:
  """Why the Mosaic GPU kernels cannot run a call with these static facts (None when they can):
  the device here, the shapes in ``pallas_gpu_mosaic.shape_limits``. ``step``: the kernel's
  length multiple (default: the forward's). ``padded_len``: the length ``attention`` pads the
  call to (default: with ``DEFAULT_CONFIG``'s tiles). Segment ids (packed rows) are taken. Used by
  ``fwd_impl`` and ``bwd_impl`` (every value but ``"triton"``) here and by the ``split_gpu``
  backend's ``supports``."""
  if interpret:
    return "interpret mode (Mosaic GPU kernels run on Hopper GPUs only)"
  dev = jax.devices()[0]
  if getattr(dev, "compute_capability", None) != "9.0":
    return f"device {dev.device_kind!r} is not sm_90 (Hopper)"
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # pylint: disable=g-import-not-at-top
  if padded_len is None:
    try:
      padded_len = padded_lengths(q_len, kv_len, head_dim, dtype)[0]
    except PallasGpuError as e:
      return str(e)
  return pm.shape_limits(q_len, kv_len, head_dim, dtype,
                         step=pm.fwd_step(pm.MosaicConfig()) if step is None else step,
                         offsets=bool(q_offset or kv_offset), padded_len=padded_len)


def _mosaic_unsupported(cs: _frame.Problem, q, k, step: int | None = None) -> str | None:
  """``mosaic_unsupported`` of a call (its padded head dim and lengths, which must agree)."""
  why = mosaic_unsupported(cs.q_len, cs.kv_len, q.shape[-1], q.dtype, q_offset=cs.q_offset,
                           kv_offset=cs.kv_offset, interpret=cs.option("interpret"), step=step,
                           padded_len=q.shape[1])
  if why is None and q.shape[1] != k.shape[1]:
    return "offsets or Tq != Tk"
  return why


def _forward(cs: _frame.Problem, q, k, v, qseg, kseg):
  """(out, lse2) from the Mosaic or the Triton forward (``config.fwd_impl``)."""
  impl = cs.option("config").fwd_impl
  if impl != "triton":
    why = _mosaic_unsupported(cs, q, k)
    seg = dict(segment_ids=qseg, kv_segment_ids=kseg)
    if why is None:
      from pallas_kernels.backends import pallas_gpu_mosaic  # pylint: disable=g-import-not-at-top
      return pallas_gpu_mosaic.sparse_attention_fwd(q, k, v, cs.spec, scale=cs.scale, **seg)
    if impl != "auto":
      raise PallasGpuError(f"fwd_impl={impl!r} cannot run this call: {why}")
  return _fwd_call(cs, q, k, v, qseg, kseg)


# ---------------------------------------------------------------------------------- frame hooks
def _fwd(q, k, v, qseg, kseg, cs: _frame.Problem):
  """Padded-array forward for ``_frame``: (out [B, Tq_pad, Hq, D], lse [B, Hq, Tq_pad] natural)."""
  out, lse2 = _forward(cs, q, k, v, qseg, kseg)
  return out, lse2 * _LN2


def _bwd(q, k, v, qseg, kseg, out, lse, do, dlse, cs: _frame.Problem):
  """dQ and dK/dV kernels; lse in the kernels' log2 domain, ``+inf`` on rows that see nothing."""
  lse_b, delta = _frame.bwd_row_stats(out, lse, do, dlse)  # lse's cotangent folds into delta
  do = do.astype(q.dtype)
  lse2 = lse_b * (1.0 / _LN2)
  impl = cs.option("config").bwd_impl
  if impl != "triton":
    # pylint: disable-next=g-import-not-at-top
    from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb
    why = _mosaic_unsupported(cs, q, k, step=mb.step())
    seg = dict(scale=cs.scale, segment_ids=qseg, kv_segment_ids=kseg)
    if why is None:
      return mb.gradients(q, k, v, do, lse2, delta, cs.spec, fused=impl != "mosaic", **seg)
    if impl != "auto":
      raise PallasGpuError(f"bwd_impl={impl!r} cannot run this call: {why}")
  dq = _dq_call(cs, q, k, v, qseg, kseg, do, lse2, delta)
  dk, dv = _dkv_call(cs, q, k, v, qseg, kseg, do, lse2, delta)
  return dq, dk, dv


# ---------------------------------------------------------------------------------- public API
def _clamp(cfg: TritonConfig, q_len: int, kv_len: int) -> TritonConfig:
  """Shrinks blocks that exceed the (power-of-two rounded) lengths (tiny inputs)."""
  cq, ck = max(16, next_pow2(q_len)), max(16, next_pow2(kv_len))
  return dataclasses.replace(
      cfg, block_q=min(cfg.block_q, cq), block_k=min(cfg.block_k, ck),
      block_q_dq=min(cfg.block_q_dq, cq), block_k_dq=min(cfg.block_k_dq, ck),
      block_q_dkv=min(cfg.block_q_dkv, cq), block_k_dkv=min(cfg.block_k_dkv, ck))


def _check(q, k, v, segment_ids, kv_segment_ids, q_offset, kv_offset, scale, interpret):
  """``_frame.check_inputs`` (its kv segment ids returned) plus this backend's dtypes / device."""
  try:
    kv_segment_ids = _frame.check_inputs(q, k, v, segment_ids, kv_segment_ids, q_offset,
                                         kv_offset, scale)
  except ValueError as e:
    raise PallasGpuError(str(e)) from None
  if q.dtype not in (jnp.bfloat16, jnp.float16, jnp.float32):
    raise PallasGpuError(f"q, k, v must be bf16/f16/f32; got {q.dtype}")
  if not interpret and _backend() != "gpu":
    raise PallasGpuError(
        f"the pallas_gpu backend needs a CUDA GPU (jax.default_backend()={_backend()!r}); pass "
        "interpret=True to run its kernels in Pallas interpret mode")
  return kv_segment_ids


def _backend() -> str:
  """jax's default backend (a seam: tests lower for CUDA on a CPU host by patching it)."""
  return jax.default_backend()


@functools.partial(jax.jit, static_argnames=("spec", "q_offset", "kv_offset", "scale", "return_lse",
                                             "config", "interpret"))
def attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
              kv_offset: int = 0, scale: float | None = None, return_lse: bool = False,
              config: TritonConfig | None = None, interpret: bool = False):
  """Block-sparse attention (see module docstring). ``config`` tunes tiles; ``interpret`` runs the
  kernels in Pallas interpret mode (CPU tests)."""
  spec = as_spec(spec)
  kv_segment_ids = _check(q, k, v, segment_ids, kv_segment_ids, q_offset, kv_offset, scale,
                          interpret)
  tq, d, tk = q.shape[1], q.shape[3], k.shape[1]
  cfg, step_q, step_k = _tiles(config, tq, tk, d, q.dtype)
  prob = _frame.make_problem(spec, q, k, q_offset=q_offset, kv_offset=kv_offset, scale=scale,
                             block_q=step_q, block_k=step_k,
                             options=(("config", cfg), ("interpret", bool(interpret))))
  return _frame.run_padded(_fwd, _bwd, prob, q, k, v, segment_ids, kv_segment_ids, return_lse,
                           tq_pad=prob.n_q * step_q, tk_pad=prob.n_kv * step_k,
                           d_pad=max(16, next_pow2(d)))


def _tiles(config: TritonConfig | None, tq: int, tk: int, d: int, dtype):
  """(config clamped and fitted to shared memory, query step, key step): ``attention`` pads the
  lengths to multiples of the steps."""
  cfg = _clamp(config or DEFAULT_CONFIG, tq, tk)
  cfg, why = gpu_smem.fit_config(cfg, max(16, next_pow2(d)), dtype, gpu_smem.smem_limit())
  if cfg is None:
    raise PallasGpuError(why)
  return (cfg, max(cfg.block_q, cfg.block_q_dq, cfg.block_q_dkv),
          max(cfg.block_k, cfg.block_k_dq, cfg.block_k_dkv))


def padded_lengths(q_len: int, kv_len: int, head_dim: int, dtype,
                   config: TritonConfig | None = None) -> tuple[int, int]:
  """The (query, key) lengths ``attention`` zero-pads a call to."""
  _, step_q, step_k = _tiles(config, q_len, kv_len, head_dim, dtype)
  return -(-q_len // step_q) * step_q, -(-kv_len // step_k) * step_k


def supports(platform, spec, shapes, dtype, smem_limit: int | None = None) -> str | None:
  """Registry hook (``pallas_kernels.api``): None when this backend can run the call.

  Tiles are sized for the dtype and head dim (``gpu_smem.fit_config``); a call is refused only
  when even the smallest tiles exceed the shared memory (``smem_limit``, default: the device's).
  """
  del spec
  if platform != "gpu":
    return f"needs a CUDA GPU (platform is {platform})"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16),
                              jnp.dtype(jnp.float32)):
    return f"dtype {dtype} (bf16/f16/f32 only)"
  limit = gpu_smem.smem_limit() if smem_limit is None else smem_limit
  _, why = gpu_smem.fit_config(DEFAULT_CONFIG, max(16, next_pow2(shapes.head_dim)), dtype,
                               limit)
  return why


def mosaic_supports(platform, spec, shapes, dtype) -> str | None:
  """Registry hook of ``pallas_gpu_mosaic`` (``backends/registry.py``): the calls where this
  backend runs the Mosaic GPU forward and the fused Mosaic GPU backward (Hopper, bf16/f16, head
  dim a multiple of 64, Tq == Tk, no offsets), without segment ids. Packed rows are left to the
  next backend: cuDNN's packed layout was faster in the 128K step (docs/benchmarks.md,
  2026-12-05)."""
  why = supports(platform, spec, shapes, dtype)
  if why:
    return why
  if shapes.has_segment_ids:
    return "segment ids (packed rows go to cuDNN's packed layout where it applies)"
  facts = dict(q_offset=shapes.q_offset, kv_offset=shapes.kv_offset)
  why = mosaic_unsupported(shapes.q_len, shapes.kv_len, shapes.head_dim, dtype, **facts)
  if why is None:   # the device is Hopper: the backward's module imports
    # pylint: disable-next=g-import-not-at-top
    from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb
    why = mosaic_unsupported(shapes.q_len, shapes.kv_len, shapes.head_dim, dtype, step=mb.step(),
                             **facts)
  return None if why is None else f"the Mosaic GPU kernels cannot run it: {why}"


def visited_tiles(spec, q_len: int, kv_len: int | None = None, config: TritonConfig | None = None,
                  q_offset: int = 0, kv_offset: int = 0) -> int:
  """(query block, KV block) tiles the forward kernel computes (for efficiency accounting)."""
  kv_len = q_len if kv_len is None else kv_len
  cfg = _clamp(config or DEFAULT_CONFIG, q_len, kv_len)
  return kernel_tables(as_spec(spec), q_len, kv_len, cfg.block_q, cfg.block_k, q_offset,
                       kv_offset).visited


__all__ = ["attention", "supports", "mosaic_supports", "TritonConfig", "DEFAULT_CONFIG",
           "PallasGpuError", "visited_tiles", "mosaic_unsupported"]
