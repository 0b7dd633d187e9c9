"""The Triton kernels of the ``triton_native`` backend (host side, checks and entry:
``triton_native.py``).

Forward, dQ and dK/dV flash kernels over the ``gpu_tables.kernel_tables`` visit lists. The token
predicate is not spelled here: ``kernels_for(spec)`` compiles this module's source once per
pattern predicate, with ``_visible`` ending in the pattern's own ``visible`` (traced to source by
``patterns.source.predicate_source``), so any registered pattern runs with no edit to this file.
Defined only when ``triton`` imports (``triton`` is None otherwise, and
``triton_native.why_unsupported`` says so).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import linecache
import sys
import types

from pallas_kernels.patterns.source import predicate_source

try:
  import triton
  import triton.language as tl
except Exception:  # pylint: disable=broad-except
  triton = tl = None


# ----------------------------------------------------------------------------- kernels
if triton is not None:

  @triton.jit
  def _visible(qpos, kpos, krel, TK_REAL: tl.constexpr):
    """Causality and the ragged KV tail; ``kernels_for`` appends the pattern's predicate."""
    ok = (kpos <= qpos) & (krel < TK_REAL)
    return ok  # <pattern predicate>

  @triton.jit
  def _fwd_step(q, qs, kt_ptrs, v_ptrs, KSEG, row, it, b, offs_m, offs_n, m_i, l_i, acc, qk_scale,
                MASKED: tl.constexpr, TK: tl.constexpr, TK_REAL: tl.constexpr,
                HKV: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_SEG: tl.constexpr, Q_OFF: tl.constexpr, KV_OFF: tl.constexpr):
    """One KV tile of the online softmax."""
    start = tl.load(row + 2 + it) * BLOCK_N
    kt = tl.load(kt_ptrs + start * (HKV * D))
    s = tl.dot(q, kt) * qk_scale
    if MASKED:
      ok = _visible(Q_OFF + offs_m[:, None], KV_OFF + start + offs_n[None, :],
                    start + offs_n[None, :], TK_REAL)
      s = tl.where(ok, s, float("-inf"))
    if HAS_SEG:
      ks = tl.load(KSEG + b * TK + start + offs_n)
      s = tl.where(qs[:, None] == ks[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED or HAS_SEG:
      m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
      m_use = m_new
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs + start * (HKV * D))
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc

  @triton.jit
  def _fwd_kernel(Q, K, V, QSEG, KSEG, TAB, O, LSE, SCALE: tl.constexpr, TQ: tl.constexpr,
                  TK: tl.constexpr, TK_REAL: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr,
                  D: tl.constexpr, TAB_W: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, HAS_SEG: tl.constexpr, Q_OFF: tl.constexpr,
                  KV_OFF: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)
    h = pid_bh % HQ
    hk = h // (HQ // HKV)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * TQ * HQ * D + h * D + offs_m[:, None] * (HQ * D) + offs_d[None, :])
    kv_base = b * TK * HKV * D + hk * D
    kt_ptrs = K + kv_base + offs_d[:, None] + offs_n[None, :] * (HKV * D)
    v_ptrs = V + kv_base + offs_n[:, None] * (HKV * D) + offs_d[None, :]
    qs = tl.zeros([BLOCK_M], tl.int32)
    if HAS_SEG:
      qs = tl.load(QSEG + b * TQ + offs_m)
    row = TAB + pid_m * TAB_W
    n_full = tl.load(row)
    n_tot = tl.load(row + 1)
    qk_scale = SCALE * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for it in range(0, n_full):
      m_i, l_i, acc = _fwd_step(q, qs, kt_ptrs, v_ptrs, KSEG, row, it, b, offs_m, offs_n, m_i,
                                l_i, acc, qk_scale, False, TK, TK_REAL, HKV, D, BLOCK_N, HAS_SEG,
                                Q_OFF, KV_OFF)
    for it in range(n_full, n_tot):
      m_i, l_i, acc = _fwd_step(q, qs, kt_ptrs, v_ptrs, KSEG, row, it, b, offs_m, offs_n, m_i,
                                l_i, acc, qk_scale, True, TK, TK_REAL, HKV, D, BLOCK_N, HAS_SEG,
                                Q_OFF, KV_OFF)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + b * TQ * HQ * D + h * D + offs_m[:, None] * (HQ * D) + offs_d[None, :],
             out.to(O.dtype.element_ty))
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    tl.store(LSE + (b * HQ + h) * TQ + offs_m, lse)

  @triton.jit
  def _dq_step(q, do, qs, lse2, delta, kt_ptrs, vt_ptrs, KSEG, row, it, b, offs_m, offs_n, dq,
               qk_scale, MASKED: tl.constexpr, TK: tl.constexpr, TK_REAL: tl.constexpr,
               HKV: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
               HAS_SEG: tl.constexpr, Q_OFF: tl.constexpr, KV_OFF: tl.constexpr):
    """One KV tile of dQ = sum_j dS_ij k_j (scale applied by the caller)."""
    start = tl.load(row + 2 + it) * BLOCK_N
    kt = tl.load(kt_ptrs + start * (HKV * D))
    vt = tl.load(vt_ptrs + start * (HKV * D))
    p = tl.exp2(tl.dot(q, kt) * qk_scale - lse2[:, None])
    if MASKED:
      ok = _visible(Q_OFF + offs_m[:, None], KV_OFF + start + offs_n[None, :],
                    start + offs_n[None, :], TK_REAL)
      p = tl.where(ok, p, 0.0)
    if HAS_SEG:
      ks = tl.load(KSEG + b * TK + start + offs_n)
      p = tl.where(qs[:, None] == ks[None, :], p, 0.0)
    dp = tl.dot(do, vt)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(kt.dtype), tl.trans(kt))

  @triton.jit
  def _dq_kernel(Q, K, V, QSEG, KSEG, TAB, DO, LSE2, DELTA, DQ, SCALE: tl.constexpr,
                 TQ: tl.constexpr, TK: tl.constexpr, TK_REAL: tl.constexpr, HQ: tl.constexpr,
                 HKV: tl.constexpr, D: tl.constexpr, TAB_W: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, HAS_SEG: tl.constexpr, Q_OFF: tl.constexpr,
                 KV_OFF: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)
    h = pid_bh % HQ
    hk = h // (HQ // HKV)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q_off = b * TQ * HQ * D + h * D + offs_m[:, None] * (HQ * D) + offs_d[None, :]
    q = tl.load(Q + q_off)
    do = tl.load(DO + q_off)
    lse2 = tl.load(LSE2 + (b * HQ + h) * TQ + offs_m)
    delta = tl.load(DELTA + (b * HQ + h) * TQ + offs_m)
    kv_base = b * TK * HKV * D + hk * D
    kt_ptrs = K + kv_base + offs_d[:, None] + offs_n[None, :] * (HKV * D)
    vt_ptrs = V + kv_base + offs_d[:, None] + offs_n[None, :] * (HKV * D)
    qs = tl.zeros([BLOCK_M], tl.int32)
    if HAS_SEG:
      qs = tl.load(QSEG + b * TQ + offs_m)
    row = TAB + pid_m * TAB_W
    n_full = tl.load(row)
    n_tot = tl.load(row + 1)
    qk_scale = SCALE * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    for it in range(0, n_full):
      dq = _dq_step(q, do, qs, lse2, delta, kt_ptrs, vt_ptrs, KSEG, row, it, b, offs_m, offs_n,
                    dq, qk_scale, False, TK, TK_REAL, HKV, D, BLOCK_N, HAS_SEG, Q_OFF, KV_OFF)
    for it in range(n_full, n_tot):
      dq = _dq_step(q, do, qs, lse2, delta, kt_ptrs, vt_ptrs, KSEG, row, it, b, offs_m, offs_n,
                    dq, qk_scale, True, TK, TK_REAL, HKV, D, BLOCK_N, HAS_SEG, Q_OFF, KV_OFF)
    tl.store(DQ + q_off, (dq * SCALE).to(DQ.dtype.element_ty))

  @triton.jit
  def _dkv_step(Q, DO, LSE2, DELTA, QSEG, k, v, ks, row, it, b, q_base, st_base, offs_m0,
                offs_n, offs_d, dk, dv, qk_scale, MASKED: tl.constexpr, TQ: tl.constexpr,
                TK_REAL: tl.constexpr, HQ: tl.constexpr, D: tl.constexpr,
                BLOCK_M: tl.constexpr, HAS_SEG: tl.constexpr, Q_OFF: tl.constexpr,
                KV_OFF: tl.constexpr):
    """One query tile of dK, dV for this KV block (transposed scores [BLOCK_N, BLOCK_M])."""
    offs_m = tl.load(row + 2 + it) * BLOCK_M + offs_m0
    qt_off = q_base + offs_d[:, None] + offs_m[None, :] * (HQ * D)
    qt = tl.load(Q + qt_off)
    dot_ = tl.load(DO + qt_off)
    lse2 = tl.load(LSE2 + st_base + offs_m)
    delta = tl.load(DELTA + st_base + offs_m)
    pt = tl.exp2(tl.dot(k, qt) * qk_scale - lse2[None, :])
    if MASKED:
      ok = _visible(Q_OFF + offs_m[None, :], KV_OFF + offs_n[:, None], offs_n[:, None], TK_REAL)
      pt = tl.where(ok, pt, 0.0)
    if HAS_SEG:
      qs = tl.load(QSEG + b * TQ + offs_m)
      pt = tl.where(ks[:, None] == qs[None, :], pt, 0.0)
    dv += tl.dot(pt.to(dot_.dtype), tl.trans(dot_))
    dst = pt * (tl.dot(v, dot_) - delta[None, :])
    dk += tl.dot(dst.to(qt.dtype), tl.trans(qt))
    return dk, dv

  @triton.jit
  def _dkv_kernel(Q, K, V, QSEG, KSEG, TAB, DO, LSE2, DELTA, DK, DV, SCALE: tl.constexpr,
                  TQ: tl.constexpr, TK: tl.constexpr, TK_REAL: tl.constexpr, HQ: tl.constexpr,
                  HKV: tl.constexpr, D: tl.constexpr, TAB_W: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, HAS_SEG: tl.constexpr, Q_OFF: tl.constexpr,
                  KV_OFF: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hk = pid_bh % HKV
    G: tl.constexpr = HQ // HKV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    kv_off = b * TK * HKV * D + hk * D + offs_n[:, None] * (HKV * D) + offs_d[None, :]
    k = tl.load(K + kv_off)
    v = tl.load(V + kv_off)
    ks = tl.zeros([BLOCK_N], tl.int32)
    if HAS_SEG:
      ks = tl.load(KSEG + b * TK + offs_n)
    row = TAB + pid_n * TAB_W
    n_full = tl.load(row)
    n_tot = tl.load(row + 1)
    qk_scale = SCALE * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    for g in range(0, G):
      h = hk * G + g
      q_base = b * TQ * HQ * D + h * D
      st_base = (b * HQ + h) * TQ
      for it in range(0, n_full):
        dk, dv = _dkv_step(Q, DO, LSE2, DELTA, QSEG, k, v, ks, row, it, b, q_base, st_base,
                           offs_m0, offs_n, offs_d, dk, dv, qk_scale, False, TQ, TK_REAL, HQ, D,
                           BLOCK_M, HAS_SEG, Q_OFF, KV_OFF)
      for it in range(n_full, n_tot):
        dk, dv = _dkv_step(Q, DO, LSE2, DELTA, QSEG, k, v, ks, row, it, b, q_base, st_base,
                           offs_m0, offs_n, offs_d, dk, dv, qk_scale, True, TQ, TK_REAL, HQ, D,
                           BLOCK_M, HAS_SEG, Q_OFF, KV_OFF)
    tl.store(DK + kv_off, (dk * SCALE).to(DK.dtype.element_ty))
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty))


_MARK = "    return ok  # <pattern " + "predicate>"  # split: this line must not match itself


def kernel_source(predicate: str) -> str:
  """This module's source with ``_visible`` ending in ``ok & (predicate)``."""
  src = inspect.getsource(sys.modules[__name__])
  if src.count(_MARK) != 1:
    raise RuntimeError("triton_native_kernels: the pattern predicate marker is missing")
  return src if predicate == "True" else src.replace(_MARK, f"    return ok & ({predicate})")


@functools.lru_cache(maxsize=None)
def _kernels_for_predicate(predicate: str):
  src = kernel_source(predicate)
  digest = hashlib.sha1(predicate.encode()).hexdigest()[:12]
  filename = f"<triton_native kernels {digest}: {predicate}>"
  # Triton reads a kernel's source through inspect / linecache: register the generated text.
  linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
  module = types.ModuleType(f"{__name__}_{digest}")
  module.__file__ = filename
  sys.modules[module.__name__] = module
  exec(compile(src, filename, "exec"), module.__dict__)  # pylint: disable=exec-used
  # pylint: disable-next=protected-access
  return module._fwd_kernel, module._dq_kernel, module._dkv_kernel


def kernels_for(spec):
  """(forward, dQ, dK/dV) Triton kernels masking partial tiles with ``spec``'s predicate."""
  if triton is None:
    raise RuntimeError("triton_native needs triton (pip install triton)")
  return _kernels_for_predicate(predicate_source(spec, "qpos", "kpos"))
