"""Run the Mosaic GPU kernels on CPU: jax's GPU interpret mode plus what our kernels need of it.

jax's Mosaic GPU interpret mode (``InterpretGPUParams``) runs the warpgroups of a CTA as threads
over simulated shared memory, barriers and TMA, and can report shared-memory races
(``detect_races=True``). In jax 0.10.2 it cannot run the kernels of
``backends/pallas_gpu_mosaic*.py``. ``interpret_mode()`` adds, for the duration of a ``with``
block:

* ``pl.run_state`` over wgmma accumulators (``plgpu.ACC.init``) and closed-over values;
* ``plgpu.wgmma`` with its left operand in registers (P·V, dS·K) or a transposed operand;
* writing a whole accumulator (``acc_ref[...] = x``), ``plgpu.load``, and
  ``lax.optimization_barrier`` / ``plgpu.layout_cast`` (identities here);
* ``plgpu.copy_smem_to_gmem(..., reduction_op="add")``, atomic as on the GPU (the single-pass
  backward's dQ), and ``pl.kernel``'s arguments without a memory space (its launch);
* every interpreter callback ordered, so each warpgroup's memory and barrier operations run in
  program order around the additions (jax orders them by a token the additions cannot join);
* a producer may leave the last completion of a barrier unobserved (jax's check refuses what the
  GPU and jax's own ``attention_mgpu`` do);
* a barrier wait that sees nothing for ``wait_s`` seconds raises: a deadlock fails instead of
  hanging the process;
* named hardware barriers (``bar.sync`` / ``bar.arrive``, emitted through ``plgpu.inline_mgpu``
  by a function carrying a ``named_barrier`` dict, as ``pallas_gpu_mosaic.named_barrier`` does):
  per CTA and barrier, a sync blocks until the barrier's count of warpgroups has arrived; a
  barrier that completes with no warpgroup syncing on it (arrivals alone, which the hardware
  allows and a protocol never means) raises. Other ``inline_mgpu`` code is refused.

What it does not model: wgmma and TMA run synchronously, and ``commit_group`` / ``wgmma_wait`` /
``wait_smem_to_gmem`` are no-ops. A kernel that reads an accumulator before waiting for it, or
overwrites a slot a pending copy still reads, can pass here and fail on a GPU. What it checks:
tables, indexing, masks, formulas, head mapping, barrier pairing (deadlocks) and races between
warpgroups on shared memory. The GPU tests (``tests/gpu/test_gpu_pallas_gpu.py``) stay the word
on numerics and asynchrony. ``tests/test_mosaic_interpret.py`` runs all five kernels this way.

The additions reach into ``jax._src``; ``interpret_mode()`` raises at once, with the jax version,
where those internals are not what they were written against.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import callback

try:
  from jax._src.pallas.mosaic.interpret import utils as _iutils
  from jax._src.pallas.mosaic_gpu import core as _mgpu_core
  from jax._src.pallas.mosaic_gpu import primitives as _gpu_prims
  from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as _gcb
  from jax._src.pallas.mosaic_gpu.interpret import jaxpr_interpret as _ji
  from jax._src.pallas.mosaic_gpu.interpret import params as _params
  from jax._src.pallas.mosaic_gpu.interpret import shared_memory as _smem
  from jax._src.state import discharge as _discharge
  from jax._src.state import primitives as _state_prims
  from jax._src.state import types as _state_types
  _IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the jax version
  _IMPORT_ERROR = e


def _check_internals():
  need = [(_mgpu_core, "layout_cast_p"), (_mgpu_core, "WGMMAAbstractAccumulatorRef"),
          (_gpu_prims, "wgmma_accumulator_store_p"), (_gpu_prims, "load_p"),
          (_ji.JaxprInterpreter, "_interpret_arithmetic_primitive"),
          (_ji.JaxprInterpreter, "_interpret_wgmma_ref_p"), (_ji.JaxprInterpreter, "interpret"),
          (_ji.JaxprInterpreter, "_interpret_get_p"),
          (_gcb, "copy_smem_to_gmem"), (_gcb, "_get_shared_memory"), (_gcb, "HostAllocationKey"),
          (_gcb, "call_allocate_buffer"), (_gcb, "call_deallocate_buffer"),
          (_gcb, "call_make_allocation_request_array"),
          (_gcb, "get_thread_id_for_collective_allocation_key"), (_gcb, "get_memory_space_idx"),
          (_gcb, "_remove_noop_transforms"), (_gcb, "callback"), (_gcb, "is_gmem_memory_space"),
          (_gcb, "reset_gpu_interpret_mode_state"), (_smem, "Barrier"), (_smem, "threading"),
          (_gpu_prims, "inline_mgpu_p"), (_ji.JaxprInterpreter, "thread_id_in_block"),
          (_iutils, "to_range")]
  missing = [f"{getattr(o, '__name__', o)}.{a}" for o, a in need if not hasattr(o, a)]
  if missing:
    raise RuntimeError(f"Mosaic GPU interpret mode: jax {jax.__version__} lacks {missing}; "
                       "pallas_kernels/mosaic_interpret.py was written against jax 0.10.2")


def _token():
  # Every callback runs ordered (see ``_OrderedCallbacks``); the token is only data here.
  return jnp.int32(0)


class _OrderedCallbacks:
  """Stands in for ``jax._src.callback`` inside ``gpu_callbacks``: every io_callback ordered.

  jax's interpreter orders a thread's memory and barrier callbacks by threading a token through
  them, unordered. The additions here cannot join that chain (an unknown primitive's handler
  returns no token), so a barrier arrive after a ``run_state`` could run before the wgmma inside
  it. With every callback ordered, each thread's callbacks run in program order."""

  def __getattr__(self, name):
    return getattr(callback, name)

  @staticmethod
  def io_callback(*args, ordered=False, **kwargs):
    del ordered
    return callback.io_callback(*args, ordered=True, **kwargs)


def _memory(device_id, thread_id):
  """The simulated memory and the calling thread's global id in it (inside a callback)."""
  shared = _gcb._get_shared_memory()
  return shared, shared.get_global_thread_id(int(device_id), int(thread_id))


def _range(transforms):
  """The index range of a ref's indexers (its tiling and swizzling dropped, as jax's callbacks
  do)."""
  return _iutils.to_range(jax.tree.map(int, _gcb._remove_noop_transforms(transforms)))


def _read_whole(self, key, aval):
  """The whole content of one allocation (an accumulator) as a value."""
  def read(*, device_id, thread_id, key):
    shared, gtid = _memory(device_id, thread_id)
    return np.array(_view(shared, key, (), gtid), aval.dtype, copy=True)
  return callback.io_callback(read, aval, device_id=self.device_info.device_id,
                              thread_id=self.thread_id, key=key, ordered=True)


def _store_whole(self, key, val):
  """Overwrites an accumulator allocation with ``val``; returns ``val`` (the primitive's result)."""
  def store(*, device_id, thread_id, key, val):
    shared, gtid = _memory(device_id, thread_id)
    shared.store_buffer_content(_gcb.HostAllocationKey.from_array(key), (), np.array(val), gtid)
    return np.int32(0)
  callback.io_callback(store, _gcb.TOKEN_SHAPE_DTYPE, device_id=self.device_info.device_id,
                       thread_id=self.thread_id, key=key, val=val, ordered=True)
  return val


def _run_state(self, eqn, get_invals):
  """``run_state`` as the Mosaic GPU lowering runs it: each value operand (accumulators from
  ``plgpu.ACC.init`` and values the body closed over) becomes a register allocation holding it,
  refs the body closed over pass through; the results are the allocations' final contents and
  the passed-through refs."""
  jaxpr = eqn.params["jaxpr"]
  if not all(eqn.params["is_initialized"]):
    raise NotImplementedError("run_state with uninitialised refs in Mosaic GPU interpret mode")
  token, args, accs = _token(), [], []
  regs = _gcb.get_memory_space_idx(_mgpu_core.MemorySpace.REGS)
  tid = _gcb.get_thread_id_for_collective_allocation_key(   # registers: this thread's own
      thread_id=jnp.int32(self.thread_id), axes_dims=self.thread_cluster_shape,
      is_last_thread_axis_collective=False)
  for var, val, out in zip(jaxpr.invars, get_invals(), eqn.outvars):
    if isinstance(out.aval, _state_types.AbstractRef):  # a ref the body closed over
      args.append(val)
      continue
    token, request = _gcb.call_make_allocation_request_array(
        token=token, device_id=jnp.int32(self.device_info.device_id), memory_space_id=regs,
        thread_id=jnp.int32(tid), initial_ref_count=1)
    token, key = _gcb.call_allocate_buffer(
        token=token, device_id=jnp.int32(self.device_info.device_id),
        grid_point_coords=self.grid_point_coords, thread_id=self.thread_id,
        allocation_request_as_array=request, value=jnp.asarray(val, var.aval.inner_aval.dtype),
        source_info=eqn.source_info)
    args.append(key)
    accs.append(len(args) - 1)
  token, _ = self.interpret(jaxpr, token, *args)
  outs = list(args)
  for i in accs:
    outs[i] = _read_whole(self, args[i], jaxpr.invars[i].aval.inner_aval)
    token = _gcb.call_deallocate_buffer(
        token=token, device_id=jnp.int32(self.device_info.device_id),
        grid_point_coords=self.grid_point_coords, thread_id=self.thread_id,
        allocation_key_as_array=args[i], source_info=eqn.source_info)
  return outs


def _view(shared, key, transforms, gtid):
  """The content of an allocation seen through ``transforms``: indexers, then transposes (what
  ``plgpu.transpose_ref`` adds; jax's interpreter reads indexers only)."""
  transforms = _gcb._remove_noop_transforms(transforms)
  n = next((i for i, t in enumerate(transforms)
            if isinstance(t, _state_types.TransposeTransform)), len(transforms))
  if not all(isinstance(t, _state_types.TransposeTransform) for t in transforms[n:]):
    raise NotImplementedError(f"an indexer after a transpose in interpret mode: {transforms}")
  val, _, _ = shared.get_buffer_content(_gcb.HostAllocationKey.from_array(key),
                                        _range(transforms[:n]), gtid)
  val = np.asarray(val)
  for t in transforms[n:]:
    val = np.transpose(val, t.permutation)
  return val


def _wgmma(*, device_id, thread_id, acc_key, acc_transforms, acc_dtype, a, a_is_ref, a_transforms,
           b_key, b_transforms):
  """``gpu_callbacks.wgmma`` that also takes transposed operands and a left operand in
  registers (``a`` a value when ``a_is_ref`` is False)."""
  shared, gtid = _memory(device_id, thread_id)
  a = _view(shared, a, a_transforms, gtid) if a_is_ref else np.asarray(a)
  b = _view(shared, b_key, b_transforms, gtid)
  acc_key = _gcb.HostAllocationKey.from_array(acc_key)
  acc_range = _range(acc_transforms)
  acc, _, _ = shared.get_buffer_content(acc_key, acc_range, gtid)
  shared.store_buffer_content(acc_key, acc_range, acc + np.matmul(a, b, dtype=acc_dtype), gtid)
  return np.int32(0)


def _barrier_deallocate(self):
  """``shared_memory.Barrier.deallocate`` allowing a thread to leave the last completion of a
  barrier unobserved. A producer waits on a slot's release only to reuse the slot, so it never
  waits for the final release; on the GPU that is fine (jax's ``attention_mgpu`` does the same),
  jax's check refuses it. Any earlier completion a thread skipped is still an error."""
  with self.cv:
    self.ref_count -= 1
    if self.ref_count > 0:
      return
    for tid, nxt in enumerate(self.next_awaited_phase_by_thread):
      seen = nxt - 1
      if 0 < seen < self.phase - 1:
        raise ValueError(f"Thread {tid} did not observe phases {seen + 1}..{self.phase - 1} "
                         f"of a barrier that completed {self.phase} times")


class _Threading:
  """Stands in for ``threading`` inside jax's ``shared_memory``: a barrier's condition variable
  gives up after ``wait_s`` seconds without a wake-up and raises, so a deadlocked kernel fails
  instead of hanging the process (no Python-level timeout can interrupt it otherwise)."""

  def __init__(self, wait_s):
    outer = self

    class Condition(threading.Condition):
      def wait(self, timeout=None):
        if timeout is not None:
          return super().wait(timeout)
        if not super().wait(outer.wait_s):
          raise TimeoutError(f"Mosaic GPU interpret mode: a barrier wait saw nothing for "
                             f"{outer.wait_s} s; the kernel deadlocks (or raise wait_s)")
        return True

    self.wait_s, self.Condition = wait_s, Condition

  def __getattr__(self, name):
    return getattr(threading, name)


_REDUCE_LOCK = threading.Lock()


class _NamedBarriers:
  """Named hardware barriers (``bar.sync`` / ``bar.arrive`` with a thread count), one set per
  CTA: ``op(key, kind, count)`` arrives at barrier ``key``, and for ``kind`` "sync" also waits
  until ``count`` warpgroups have arrived (then the barrier resets for its next use)."""

  def __init__(self, wait_s):
    self.wait_s, self.cv, self.state = wait_s, threading.Condition(), {}

  def op(self, key, kind, count):
    with self.cv:
      st = self.state.setdefault(key, {"arrived": 0, "syncing": 0, "generation": 0})
      st["arrived"] += 1
      st["syncing"] += kind == "sync"
      if st["arrived"] == count:
        if not st["syncing"]:
          raise RuntimeError(f"Mosaic GPU interpret mode: named barrier {key[-1]} completed by "
                             f"{count} arrives and no sync (an arrival was left pending)")
        st.update(arrived=0, syncing=0, generation=st["generation"] + 1)
        self.cv.notify_all()
        return
      if kind == "sync":
        gen = st["generation"]
        if not self.cv.wait_for(lambda: st["generation"] != gen, self.wait_s):
          raise TimeoutError(f"Mosaic GPU interpret mode: bar.sync on named barrier {key[-1]} "
                             f"saw nothing for {self.wait_s} s; the kernel deadlocks")


def _named_barrier(self, spec, barriers):
  """An ``inline_mgpu`` equation emitting a named barrier (``spec``: its ``named_barrier``
  dict), run through ``barriers`` (a ``_NamedBarriers``) in program order."""
  def run(*, device_id, grid, wg):
    wg = int(wg)
    index = spec["base"] + (wg if spec["whose"] == "own" else 1 - wg)
    barriers.op((int(device_id), tuple(np.asarray(grid).ravel().tolist()), index), spec["op"],
                spec["warpgroups"])
    return np.int32(0)
  callback.io_callback(run, _gcb.TOKEN_SHAPE_DTYPE, device_id=self.device_info.device_id,
                       grid=jnp.asarray(self.grid_point_coords), wg=self.thread_id_in_block,
                       ordered=True)
  return []


def _copy_smem_to_gmem_reduce(orig, **kw):
  """``copy_smem_to_gmem`` with ``reduction_op="add"``: destination += source."""
  if kw.get("reduction_op") is None:
    return orig(**kw)
  if kw["reduction_op"] != "add":
    raise NotImplementedError(f"reduction_op {kw['reduction_op']!r} in interpret mode")
  if kw.get("predicate") is not None:
    raise NotImplementedError("predicate in interpret mode")
  shared, gtid = _memory(kw["device_id"], kw["thread_id"])
  src = _view(shared, kw["src_allocation_key_as_array"], kw["src_transforms"], gtid)
  dst_key = _gcb.HostAllocationKey.from_array(kw["dst_allocation_key_as_array"])
  dst_range = _range(kw["dst_transforms"])
  with _REDUCE_LOCK:   # atomic, as TMA's reduce-add: warpgroups add into the same rows
    dst, _, _ = shared.get_buffer_content(dst_key, dst_range, gtid)
    shared.store_buffer_content(dst_key, dst_range, (dst + src).astype(dst.dtype), gtid)
  return kw["token"]


@contextlib.contextmanager
def interpret_mode(wait_s: float = 60.0, **params):
  """Run every Mosaic GPU kernel traced inside on CPU (``InterpretGPUParams(**params)``, e.g.
  ``detect_races=True``), with the additions listed in the module docstring. A barrier wait that
  sees nothing for ``wait_s`` seconds raises (a deadlock). Not thread-safe: it patches jax's
  interpreter."""
  if _IMPORT_ERROR is not None:
    raise RuntimeError(f"Mosaic GPU interpret mode needs jax's GPU interpreter: {_IMPORT_ERROR}")
  _check_internals()
  cls = _ji.JaxprInterpreter
  orig_arith, orig_wgmma, orig_copy = (cls._interpret_arithmetic_primitive,
                                       cls._interpret_wgmma_ref_p, _gcb.copy_smem_to_gmem)
  orig_dealloc = _smem.Barrier.deallocate
  named = _NamedBarriers(wait_s)

  def arith(self, eqn, get_invals):
    if eqn.primitive is _discharge.run_state_p:
      return _run_state(self, eqn, get_invals)
    if eqn.primitive is _gpu_prims.inline_mgpu_p:
      spec = getattr(eqn.params["mgpu_fn"], "named_barrier", None)
      if spec is None:
        raise NotImplementedError("inline_mgpu in Mosaic GPU interpret mode (only named barriers)")
      return _named_barrier(self, spec, named)
    if eqn.primitive is lax.optimization_barrier_p:
      return list(get_invals())
    if eqn.primitive is _mgpu_core.layout_cast_p:  # register layouts do not exist on CPU
      return get_invals()[0]
    if eqn.primitive is _gpu_prims.wgmma_accumulator_store_p:  # acc_ref[...] = value
      return _store_whole(self, *get_invals())
    if eqn.primitive is _gpu_prims.load_p:  # plgpu.load: a read with a register layout
      return self._interpret_get_p(
          eqn.replace(primitive=_state_prims.get_p, params={"tree": eqn.params["tree"]}),
          _token(), get_invals)[1]
    return orig_arith(self, eqn, get_invals)

  def wgmma(self, eqn, token, get_invals):
    acc, a, b, *leaves = get_invals()
    empty = jax.tree.structure([])
    acc_t, a_t, b_t = jax.tree.unflatten(
        jax.tree_util.treedef_tuple((eqn.params["acc_transforms_tree"] or empty,
                                     eqn.params["a_transforms_tree"] or empty,
                                     eqn.params["b_transforms_tree"] or empty)), leaves)
    token = callback.io_callback(
        functools.partial(_wgmma, acc_dtype=eqn.invars[0].aval.dtype,
                          a_is_ref=isinstance(eqn.invars[1].aval, _state_types.AbstractRef)),
        _gcb.TOKEN_SHAPE_DTYPE, device_id=self.device_info.device_id, thread_id=self.thread_id,
        acc_key=acc, acc_transforms=acc_t, a=a, a_transforms=a_t, b_key=b, b_transforms=b_t,
        ordered=True)
    return token, []

  cls._interpret_arithmetic_primitive = arith
  cls._interpret_wgmma_ref_p = wgmma
  _gcb.copy_smem_to_gmem = functools.partial(_copy_smem_to_gmem_reduce, orig_copy)
  _smem.Barrier.deallocate = _barrier_deallocate
  orig_threading, _smem.threading = _smem.threading, _Threading(wait_s)
  # Kernel arguments of ``pl.kernel`` (the fused backward's launch) carry no memory space; like
  # ``plgpu.kernel``'s they live in global memory.
  orig_is_gmem = _gcb.is_gmem_memory_space
  _gcb.is_gmem_memory_space = lambda space: space is None or orig_is_gmem(space)
  orig_callback, _gcb.callback = _gcb.callback, _OrderedCallbacks()
  try:
    with _params.force_gpu_interpret_mode(_params.InterpretGPUParams(**params)):
      yield
      # Dispatch is asynchronous: a kernel's callbacks may still be running when the body
      # returns. Finish them under the patches above, not jax's originals (whose barrier check
      # then failed now and then: tests/test_mosaic_interpret.py, 2026-12-06).
      jax.effects_barrier()
  except BaseException:
    _gcb.reset_gpu_interpret_mode_state()   # jax leaves its simulated GPU behind on an error
    raise
  finally:
    cls._interpret_arithmetic_primitive = orig_arith
    cls._interpret_wgmma_ref_p = orig_wgmma
    _gcb.copy_smem_to_gmem = orig_copy
    _smem.Barrier.deallocate = orig_dealloc
    _smem.threading = orig_threading
    _gcb.callback = orig_callback
    _gcb.is_gmem_memory_space = orig_is_gmem
