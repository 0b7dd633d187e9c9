"""Attention of a few new queries against a KV cache whose slots carry explicit positions.

Serving stores keys in caches whose slot order is not position order (a ring buffer for the window
of ``sink_window`` layers, a compact block layout for ``strided`` layers, pages for full layers), so
these kernels take the position of every cache slot instead of the static offsets of
``pallas_kernels.attention``:

  decode_attention(q, k, v, spec, *, q_pos, kv_pos, page_table=None, scale=None,
                   num_splits=None, return_lse=False, impl="auto")
      Decode (a handful of queries per row). Split-K: the cache is cut into ``num_splits``
      contiguous splits, each split gives a partial softmax (its own max, sum and unnormalised
      output) and the splits are merged by log-sum-exp. Every split runs at once (one batched
      contraction per operand), which is what a memory-bound decode step needs on a GPU; the
      small sparse caches are one split.
  chunk_attention(q, k, v, spec, *, q_pos, kv_pos, kv_limit=None, page_table=None, block_k=512,
                  scale=None, return_lse=False)
      Prefill chunks (thousands of queries) against the cache: a flash loop over ``block_k``
      tiles with an online softmax, so scores never exceed ``[B, Hq, Tq, block_k]``. ``kv_limit``
      (a traced scalar) skips the tiles at and after slot ``kv_limit``: a chunk of a long prompt
      only reads the part of the preallocated cache that is filled, and one compiled program
      serves every chunk position.

Shapes (GQA: query head ``h`` uses KV head ``h // (Hq // Hkv)``, K/V are never repeated). The
cache is HEAD-MAJOR, so every contraction has its batch dimensions (row, KV head) outermost and
reads the cache in place (no transposed copy of K/V per step):

  q        [B, Tq, Hq, D]
  k, v     [B, Hkv, S, D]  or, with ``page_table [B, n_pages]`` int32, a page pool
           [n_pool_pages, Hkv, page, D]: logical slot ``s`` of row ``b`` is
           ``pool[page_table[b, s // page], :, s % page]``
  q_pos    [B, Tq] int32 absolute query positions
  kv_pos   [B, S] int32 absolute position held by each slot, ``-1`` for an empty slot
           (with a page table: ``S = n_pages * page``)

Key ``s`` is visible to query ``t`` iff ``kv_pos[b, s] >= 0`` and
``spec.allowed(q_pos[b, t], kv_pos[b, s])`` (the canonical predicate of ``pallas_kernels.spec``:
causal plus the layer's pattern). Returns ``out [B, Tq, Hq, D]`` in ``q.dtype`` and, with
``return_lse``, ``lse [B, Hq, Tq]`` fp32 (natural log, ``-inf`` and a zero row when nothing is
visible), the layout of ``pallas_kernels.lse_merge`` so partial results merge with the output
of ``pallas_kernels.attention``. Forward only (inference).

``impl`` (decode): ``"xla"`` (portable; what ``"auto"`` picks) or ``"pallas_gpu"``: a Pallas
(Triton lowering) split-K kernel, grid (row, KV head, split), one query per row, the G query heads
of a KV group as the rows of one program; on CPU it runs with ``interpret=True`` (tests). It is
opt-in until it has been timed against the XLA path on a GPU (``benchmarks/serving.py`` has a
cell for that).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import next_pow2
from pallas_kernels.spec import AttentionSpec, as_spec

_F32 = jnp.float32
NEG_INF = float("-inf")
IMPLS = ("auto", "xla", "pallas_gpu")


# ----------------------------------------------------------------------------- checks
def _check(q, k, v, q_pos, kv_pos, page_table):
  """One-line ValueErrors for malformed calls; returns (B, Tq, Hq, D, S, Hkv)."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be rank 4; got ranks {q.ndim}, {k.ndim}, {v.ndim}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape; got {k.shape} and {v.shape}")
  B, Tq, Hq, D = q.shape
  if k.shape[3] != D:
    raise ValueError(f"k/v head_dim {k.shape[3]} != q head_dim {D}")
  Hkv = k.shape[1]
  if Hq % Hkv:
    raise ValueError(f"query heads {Hq} are not a multiple of kv heads {Hkv}")
  if page_table is None:
    if k.shape[0] != B:
      raise ValueError(f"k/v batch {k.shape[0]} != q batch {B} (k/v are [B, Hkv, S, D])")
    S = k.shape[2]
  else:
    if page_table.ndim != 2 or page_table.shape[0] != B:
      raise ValueError(f"page_table must be [B={B}, n_pages], got {tuple(page_table.shape)}")
    S = page_table.shape[1] * k.shape[2]
  if tuple(q_pos.shape) != (B, Tq):
    raise ValueError(f"q_pos must be [B, Tq] = {(B, Tq)}, got {tuple(q_pos.shape)}")
  if tuple(kv_pos.shape) != (B, S):
    raise ValueError(f"kv_pos must be [B, S] = {(B, S)}, got {tuple(kv_pos.shape)}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
  return B, Tq, Hq, D, S, Hkv


def _visible(spec: AttentionSpec, q_pos, kv_pos):
  """[B, Tq, S] bool: the canonical predicate on explicit positions, empty slots masked."""
  qp = q_pos[:, :, None]
  kp = kv_pos[:, None, :]
  return (kp >= 0) & spec.allowed(qp, kp, xp=jnp)


def _dot(eq, a, b):
  prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jnp.einsum(eq, a, b, preferred_element_type=_F32, precision=prec)


def _gather_pages(pool, page_table):
  """Page pool [P, H, page, D] + table [B, n] -> contiguous [B, H, n * page, D]."""
  g = jnp.take(pool, page_table, axis=0)          # [B, n, H, page, D]
  B, n, H, page, D = g.shape
  return g.transpose(0, 2, 1, 3, 4).reshape(B, H, n * page, D)


def _group_queries(q, Hkv):
  """[B, Tq, Hq, D] -> [B, Hkv, G, Tq, D] (small: the queries, not the cache)."""
  B, Tq, Hq, D = q.shape
  return q.reshape(B, Tq, Hkv, Hq // Hkv, D).transpose(0, 2, 3, 1, 4)


def _finish(m, l, acc, dtype, B, Tq, Hq, D, return_lse):
  """Online-softmax state [B, Hkv, G, Tq(, D)] -> out [B, Tq, Hq, D] (+ lse [B, Hq, Tq])."""
  seen = l > 0
  out = acc / jnp.where(seen, l, 1.0)[..., None]
  out = out.transpose(0, 3, 1, 2, 4).reshape(B, Tq, Hq, D).astype(dtype)
  if not return_lse:
    return out
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), NEG_INF)
  return out, lse.reshape(B, Hq, Tq)


# ----------------------------------------------------------------------------- decode (split-K)
def default_num_splits(S: int, target: int = 1024) -> int:
  """Splits of about ``target`` slots (a divisor of ``S``; 1 for small caches)."""
  n = max(1, S // target)
  while S % n:
    n -= 1
  return n


def decode_attention(q, k, v, spec, *, q_pos, kv_pos, page_table=None, scale: float | None = None,
                     num_splits: int | None = None, return_lse: bool = False, impl: str = "auto",
                     interpret: bool = False):
  """Split-K attention of ``Tq`` (few) queries over a position-tagged cache (module docstring)."""
  spec = as_spec(spec)
  if impl not in IMPLS:
    raise ValueError(f"decode impl {impl!r} is not one of {IMPLS}")
  B, Tq, Hq, D, S, Hkv = _check(q, k, v, q_pos, kv_pos, page_table)
  scale = float(D ** -0.5 if scale is None else scale)
  n = default_num_splits(S) if num_splits is None else int(num_splits)
  if n < 1 or S % n:
    raise ValueError(f"num_splits {n} must be >= 1 and divide the cache length {S}")
  if impl == "auto":
    impl = "xla"   # pallas_gpu is opt-in until it has been timed against XLA on a GPU
  if page_table is not None:
    k, v = _gather_pages(k, page_table), _gather_pages(v, page_table)
  if impl == "pallas_gpu":
    reason = pallas_unsupported(q.shape, q.dtype, interpret)
    if reason:
      raise ValueError(f"decode impl 'pallas_gpu' cannot run this call: {reason}")
    return _decode_pallas(q, k, v, spec, q_pos, kv_pos, scale, n, return_lse, interpret)
  return _decode_xla(q, k, v, spec, q_pos, kv_pos, scale, n, return_lse)


def _decode_xla(q, k, v, spec, q_pos, kv_pos, scale, n, return_lse):
  B, Tq, Hq, D = q.shape
  Hkv, S = k.shape[1], k.shape[2]
  G = Hq // Hkv
  ss = S // n
  qg = _group_queries(q, Hkv)                                 # [B, Hkv, G, Tq, D]
  s = _dot("bhgtd,bhsd->bhgts", qg, k) * scale                # batch (B, Hkv) outermost
  s = s.reshape(B, Hkv, G, Tq, n, ss)
  vis = _visible(spec, q_pos, kv_pos).reshape(B, 1, 1, Tq, n, ss)
  s = jnp.where(vis, s, NEG_INF)
  # Partial softmax per split.
  m_i = s.max(-1)                                             # [B, Hkv, G, Tq, n]
  m_safe = jnp.where(jnp.isfinite(m_i), m_i, 0.0)
  p = jnp.exp(s - m_safe[..., None])
  l_i = p.sum(-1)
  vs = v.reshape(B, Hkv, n, ss, D)
  o_i = _dot("bhgtns,bhnsd->bhgtnd", p.astype(v.dtype), vs)   # unnormalised, fp32
  # Log-sum-exp merge of the splits.
  lse_i = jnp.where(l_i > 0, m_safe + jnp.log(jnp.where(l_i > 0, l_i, 1.0)), NEG_INF)
  m = lse_i.max(-1)                                           # [B, Hkv, G, Tq]
  m_ok = jnp.where(jnp.isfinite(m), m, 0.0)
  w = jnp.where(jnp.isfinite(lse_i), jnp.exp(m_safe - m_ok[..., None]), 0.0)  # rescale to m
  l = (w * l_i).sum(-1)
  acc = (w[..., None] * o_i).sum(-2)                          # [B, Hkv, G, Tq, D]
  return _finish(m_ok, l, acc, q.dtype, B, Tq, Hq, D, return_lse)


# ----------------------------------------------------------------------------- Pallas (Triton)
_M_INIT = -1e30          # finite start of the running max: no NaN for rows that saw nothing yet
_NT = (((1,), (1,)), ((), ()))


def pallas_unsupported(q_shape, dtype, interpret: bool = False) -> str | None:
  """Why the Pallas GPU decode kernel cannot run a call (None: it can)."""
  if q_shape[1] != 1:
    return f"it decodes one query per row (Tq = {q_shape[1]})"
  if jnp.dtype(dtype).name not in ("bfloat16", "float16", "float32"):
    return f"dtype {dtype} is not bf16 / f16 / f32"
  if not interpret and jax.default_backend() not in ("gpu", "cuda"):
    return f"needs a GPU (backend is {jax.default_backend()!r}); use interpret=True on CPU"
  return None


def _pallas_kernel(qpos_ref, q_ref, k_ref, v_ref, pos_ref, o_ref, lse_ref, *, spec, scale,
                   block_k, n_tiles):
  """One (row, KV head, split): online softmax over the split's tiles, query rows = the group."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  q = q_ref[...]
  qp = qpos_ref[...]

  def body(t, carry):
    o, m, l = carry
    sl = pl.ds(pl.multiple_of(t * block_k, block_k), block_k)
    k, v, kp = k_ref[sl, :], v_ref[sl, :], pos_ref[sl]
    prec = lax.Precision.HIGHEST if k.dtype == jnp.float32 else None
    s = lax.dot_general(q, k, _NT, precision=prec, preferred_element_type=_F32) * scale
    vis = (kp[None, :] >= 0) & spec.allowed(qp[:, None], kp[None, :], xp=jnp)
    s = jnp.where(vis, s, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    l = l * alpha + jnp.sum(p, axis=1)
    o = o * alpha[:, None] + jnp.dot(p.astype(v.dtype), v, precision=prec,
                                     preferred_element_type=_F32)
    return o, m_new, l

  mp, d = q.shape
  init = (jnp.zeros((mp, d), _F32), jnp.full((mp,), _M_INIT, _F32), jnp.zeros((mp,), _F32))
  o, m, l = lax.fori_loop(0, n_tiles, body, init)
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = o / l_safe[:, None]
  lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), NEG_INF)


def _decode_pallas(q, k, v, spec, q_pos, kv_pos, scale, n, return_lse, interpret,
                   block_k: int = 64, num_warps: int = 4, num_stages: int = 2):
  """Split-K decode in Pallas (Triton lowering): grid (row, KV head, split); each program loops
  over ``block_k`` tiles of its split; splits are merged by log-sum-exp in XLA. Query rows of a
  program are the G heads of one KV group, padded to 16 (the MMA minimum); head_dim is padded to
  a power of two >= 16. Forward only."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=import-outside-toplevel
  B, _, Hq, D = q.shape
  Hkv, S = k.shape[1], k.shape[2]
  G = Hq // Hkv
  mp, dp = max(16, next_pow2(G)), max(16, next_pow2(D))
  bk = min(block_k, max(16, next_pow2(-(-S // n))))
  ss = -(-(-(-S // n)) // bk) * bk                     # split length: whole tiles
  sp = ss * n
  qg = q.reshape(B, Hkv, G, D)
  qg = jnp.pad(qg, ((0, 0), (0, 0), (0, mp - G), (0, dp - D)))
  pad = ((0, 0), (0, 0), (0, sp - S), (0, dp - D))
  kp, vp = (jnp.pad(k, pad), jnp.pad(v, pad)) if pad[2][1] or pad[3][1] else (k, v)
  pos = jnp.pad(kv_pos.astype(jnp.int32), ((0, 0), (0, sp - S)), constant_values=-1)
  qpos = jnp.broadcast_to(q_pos.astype(jnp.int32)[:, :1], (B, mp))
  kernel = functools.partial(_pallas_kernel, spec=spec, scale=scale, block_k=bk,
                             n_tiles=ss // bk)
  o, lse = pl.pallas_call(
      kernel,
      grid=(B, Hkv, n),
      in_specs=[pl.BlockSpec((None, mp), lambda b, h, i: (b, 0)),
                pl.BlockSpec((None, None, mp, dp), lambda b, h, i: (b, h, 0, 0)),
                pl.BlockSpec((None, None, ss, dp), lambda b, h, i: (b, h, i, 0)),
                pl.BlockSpec((None, None, ss, dp), lambda b, h, i: (b, h, i, 0)),
                pl.BlockSpec((None, ss), lambda b, h, i: (b, i))],
      out_specs=[pl.BlockSpec((None, None, None, mp, dp), lambda b, h, i: (b, h, i, 0, 0)),
                 pl.BlockSpec((None, None, None, mp), lambda b, h, i: (b, h, i, 0))],
      out_shape=[jax.ShapeDtypeStruct((B, Hkv, n, mp, dp), _F32),
                 jax.ShapeDtypeStruct((B, Hkv, n, mp), _F32)],
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
  )(qpos, qg, kp, vp, pos)
  # Log-sum-exp merge of the splits (tiny: [B, Hkv, n, G]).
  o, lse = o[:, :, :, :G, :D], lse[:, :, :, :G]
  m = lse.max(2)
  m_ok = jnp.where(jnp.isfinite(m), m, 0.0)
  w = jnp.where(jnp.isfinite(lse), jnp.exp(lse - m_ok[:, :, None]), 0.0)   # [B, Hkv, n, G]
  tot = w.sum(2)
  seen = tot > 0
  out = (w[..., None] * o).sum(2) / jnp.where(seen, tot, 1.0)[..., None]  # [B, Hkv, G, D]
  out = out.reshape(B, 1, Hq, D).astype(q.dtype)
  if not return_lse:
    return out
  lse_m = jnp.where(seen, m_ok + jnp.log(jnp.where(seen, tot, 1.0)), NEG_INF)
  return out, lse_m.reshape(B, Hq, 1)


# ----------------------------------------------------------------------------- prefill chunks
def chunk_attention(q, k, v, spec, *, q_pos, kv_pos, kv_limit=None, page_table=None,
                    block_k: int = 512, scale: float | None = None, return_lse: bool = False):
  """Flash loop over ``block_k`` cache tiles (module docstring); for many queries per row."""
  spec = as_spec(spec)
  B, Tq, Hq, D, S, Hkv = _check(q, k, v, q_pos, kv_pos, page_table)
  scale = float(D ** -0.5 if scale is None else scale)
  if page_table is not None:
    page = k.shape[2]
    if block_k % page and page % block_k:
      raise ValueError(f"block_k {block_k} and page size {page} must divide one another")
    block_k = max(block_k, page)
  block_k = min(block_k, _round_up(S, 8))
  n_tiles = -(-S // block_k)
  pad = n_tiles * block_k - S
  if pad:
    if page_table is not None:  # unreachable: S is a multiple of the page and block_k >= page
      raise ValueError(f"paged cache of {S} slots is not a multiple of block_k {block_k}")
    k = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0)))
    kv_pos = jnp.pad(kv_pos, ((0, 0), (0, pad)), constant_values=-1)
  G = Hq // Hkv
  qg = _group_queries(q, Hkv)                                 # [B, Hkv, G, Tq, D]
  pages_per_tile = None if page_table is None else block_k // k.shape[2]

  def tile(t):
    if page_table is None:
      kt = lax.dynamic_slice_in_dim(k, t * block_k, block_k, axis=2)
      vt = lax.dynamic_slice_in_dim(v, t * block_k, block_k, axis=2)
    else:
      pt = lax.dynamic_slice_in_dim(page_table, t * pages_per_tile, pages_per_tile, axis=1)
      kt, vt = _gather_pages(k, pt), _gather_pages(v, pt)
    pos = lax.dynamic_slice_in_dim(kv_pos, t * block_k, block_k, axis=1)
    return kt, vt, pos

  def step(t, carry):
    m, l, acc = carry
    kt, vt, pos = tile(t)
    s = _dot("bhgtd,bhsd->bhgts", qg, kt) * scale             # [B, Hkv, G, Tq, bk]
    vis = _visible(spec, q_pos, pos)[:, None, None]
    s = jnp.where(vis, s, NEG_INF)
    m_new = jnp.maximum(m, s.max(-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)
    l = alpha * l + p.sum(-1)
    acc = alpha[..., None] * acc + _dot("bhgts,bhsd->bhgtd", p.astype(v.dtype), vt)
    return m_new, l, acc

  init = (jnp.full((B, Hkv, G, Tq), NEG_INF, _F32), jnp.zeros((B, Hkv, G, Tq), _F32),
          jnp.zeros((B, Hkv, G, Tq, D), _F32))
  if kv_limit is None:
    stop = n_tiles
  else:
    lim = jnp.asarray(kv_limit, jnp.int32)
    stop = jnp.clip((lim + block_k - 1) // block_k, 0, n_tiles)
  m, l, acc = lax.fori_loop(0, stop, step, init)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return _finish(m, l, acc, q.dtype, B, Tq, Hq, D, return_lse)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m

