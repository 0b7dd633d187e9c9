"""The serving engine: bucketed, jit-compiled prefill and decode over a hybrid KV cache.

  engine = Engine(cfg, params)                               # canonical params
  result = engine.generate([ids_a, ids_b], max_new_tokens=64,
                           sampling=SamplingParams(temperature=0.7, top_p=0.9),
                           stop_tokens={eos}, on_token=print_callback)

* A batch of prompts of different lengths is RIGHT-padded to one prompt bucket and prefilled in
  chunks of ``prefill_chunk`` tokens (``forward.prefill_chunk``): two compiled programs (first
  chunk, later chunks) per (batch, chunk, capacity); a prompt within one chunk is one-shot.
* Decode runs one compiled step per (batch, capacity, kv bucket); the step samples on device and
  only the new token ids come back to the host (stop tokens, streaming).
* The cache capacity (positions per row) is bucketed too (``buckets.bucket_len``) unless given.
* ``kv_drop``: serve every full layer with a sparse pattern instead (inference-time KV dropping,
  the StreamingLLM-style baseline); ``serve_full``: serve every layer as full attention (the
  reverse). The model runs unchanged otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.spec import AttentionSpec, as_spec

from longgen_jax.infer import buckets, forward
from longgen_jax.infer.cache import HybridCache, init_cache
from longgen_jax.infer.errors import InferError
from longgen_jax.infer.paged import PageAllocator
from longgen_jax.infer.sampling import SamplingParams, sample
from longgen_jax.model.config import ModelConfig

TokenCallback = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]


@dataclasses.dataclass
class GenerationResult:
  """Output of ``Engine.generate`` (host values)."""

  tokens: list            # generated ids per row (stop token excluded)
  finish_reasons: list    # "stop" | "length" per row
  prompt_lengths: list
  capacity: int
  prefill_seconds: float
  decode_seconds: float
  decode_steps: int
  cache: HybridCache | None = None   # the final cache, with ``generate(..., return_cache=True)``


def cast_params(cfg: ModelConfig, params):
  """Matrices to the compute dtype once (norm scales stay: they are used in fp32)."""
  dt = jnp.dtype(cfg.dtype)

  def cast(path, x):
    name = getattr(path[-1], "key", None) if path else None
    if name in ("attn_norm", "mlp_norm", "final_norm"):
      return jnp.asarray(x)
    return jnp.asarray(x, dt)

  return jax.tree_util.tree_map_with_path(cast, params)


def _decode_and_sample(cfg, params, cache, tokens, key, *, kv_bucket, sampling, impl):
  logits, cache = forward.decode_step(cfg, params, cache, tokens, kv_bucket=kv_bucket, impl=impl)
  return sample(logits, key, sampling), logits, cache


@functools.lru_cache(maxsize=None)
def _jit_prefill(cfg: ModelConfig):
  """One jitted prefill per model config, shared by every engine of that config."""
  return jax.jit(functools.partial(forward.prefill_chunk, cfg),
                 static_argnames=("first", "backend", "block_k"), donate_argnames=("cache",))


@functools.lru_cache(maxsize=None)
def _jit_decode(cfg: ModelConfig):
  return jax.jit(functools.partial(_decode_and_sample, cfg),
                 static_argnames=("kv_bucket", "sampling", "impl"), donate_argnames=("cache",))


@functools.lru_cache(maxsize=None)
def _jit_sample():
  return jax.jit(sample, static_argnames=("params",))


class Engine:
  """Prefill / decode / generate for one model (see the module docstring).

  Args:
    cfg: the model config; params: canonical parameters (any float dtype).
    kv_drop: a sparse spec (or its string) served in place of every full layer.
    serve_full: serve every layer as full attention (``forward.serving_specs``).
    prefill_chunk: tokens per row per prefill chunk (a multiple of ``buckets.chunk_multiple``;
      default ``buckets.default_chunk``: 16384 rounded up to a valid chunk).
    min_prompt_bucket: smallest padded prompt length.
    cache_dtype: KV dtype (default: the compute dtype).
    paged, page_size, num_pages: paged layout for full layers (``cache.py``).
    backend: ``pallas_kernels.attention`` backend of the prefill self part.
    decode_impl: ``pallas_kernels.decode.decode_attention`` implementation.
    block_k: cache tile of the prefill cache part.
    per_octave: bucket sizes per doubling (capacity and decode kv bucket).
    max_capacity: refuse requests needing more positions per row (None: no limit).
  """

  def __init__(self, cfg: ModelConfig, params, *, kv_drop: AttentionSpec | str | None = None,
               serve_full: bool = False, prefill_chunk: int | None = None, min_prompt_bucket: int = 64, cache_dtype=None,
               paged: bool = False, page_size: int = 128, num_pages: int | None = None,
               backend: str = "auto", decode_impl: str = "auto", block_k: int = 512,
               per_octave: int = 4, max_capacity: int | None = None, cast: bool = True):
    self.cfg = cfg
    self.kv_drop = None if kv_drop is None else as_spec(kv_drop)
    if self.kv_drop is not None and self.kv_drop.is_full:
      raise InferError(f"kv_drop must be a sparse pattern, got {self.kv_drop}")
    if self.kv_drop is not None and serve_full:
      raise InferError("kv_drop and serve_full contradict each other: give one")
    self.specs = forward.serving_specs(cfg, self.kv_drop, serve_full=serve_full)
    self.paged = bool(paged)
    self.page_size = int(page_size)
    if self.paged and (self.page_size < 8 or self.page_size & (self.page_size - 1)):
      raise InferError(f"page_size must be a power of two >= 8, got {page_size}")
    if decode_impl not in ("auto", "xla", "pallas_gpu"):
      raise InferError(f"decode_impl {decode_impl!r} is not one of auto, xla, pallas_gpu")
    page = self.page_size if paged else 0
    if prefill_chunk is None:
      prefill_chunk = buckets.default_chunk(self.specs, page)
    buckets.check_chunk(prefill_chunk, self.specs, page)
    self.prefill_chunk = int(prefill_chunk)
    self.quantum = math.lcm(128, self.page_size if paged else 1, *[s.block for s in self.specs])
    self.min_prompt_bucket = max(int(min_prompt_bucket), self.page_size if paged else 1)
    self.cache_dtype = jnp.dtype(cache_dtype or cfg.dtype)
    self.num_pages = num_pages
    self.backend = backend
    self.decode_impl = decode_impl
    self.block_k = int(block_k)
    self.per_octave = int(per_octave)
    self.max_capacity = max_capacity
    self.params = cast_params(cfg, params) if cast else params
    self._prefill = _jit_prefill(cfg)
    self._decode = _jit_decode(cfg)
    self._sample = _jit_sample()
    self.allocator: PageAllocator | None = None
    self._table: np.ndarray | None = None

  # ---------------------------------------------------------------- planning
  def plan(self, prompt_lengths: Sequence[int], max_new_tokens: int = 0,
           capacity: int | None = None) -> tuple[int, int, int]:
    """``(padded prompt length, chunk, capacity)`` for a request (raises InferError)."""
    if not prompt_lengths:
      raise InferError("no prompts given")
    for i, n in enumerate(prompt_lengths):
      if n < 1:
        raise InferError(f"prompt {i} is empty (0 tokens)")
    if max_new_tokens < 0:
      raise InferError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    longest = max(prompt_lengths)
    t_pad = buckets.prompt_bucket(longest, self.prefill_chunk, self.min_prompt_bucket)
    chunk = min(t_pad, self.prefill_chunk)
    needed = longest + max_new_tokens
    if capacity is None:
      capacity = max(buckets.bucket_len(needed, self.quantum, self.per_octave),
                     buckets.round_up(t_pad, self.quantum))
    else:
      if capacity < needed:
        raise InferError(f"prompt of {longest} tokens + {max_new_tokens} new tokens needs "
                         f"{needed} positions but the cache holds {capacity}")
      capacity = max(buckets.round_up(capacity, self.quantum),
                     buckets.round_up(t_pad, self.quantum))
    if self.max_capacity is not None and needed > self.max_capacity:
      raise InferError(f"prompt of {longest} tokens + {max_new_tokens} new tokens needs "
                       f"{needed} positions but the cache is limited to {self.max_capacity}")
    return t_pad, chunk, int(capacity)

  def new_cache(self, batch: int, capacity: int) -> HybridCache:
    """An empty cache (and, paged, a fresh page allocator for it)."""
    cache = init_cache(self.specs, batch=batch, capacity=capacity,
                       n_kv_heads=self.cfg.n_kv_heads, head_dim=self.cfg.head_dim,
                       dtype=self.cache_dtype, paged=self.paged, page_size=self.page_size,
                       num_pages=self.num_pages)
    pools = [lc.k.shape[0] for lc in cache.layers if lc.kind == "paged"]
    if pools:
      self.allocator = PageAllocator(pools[0], self.page_size)
      self._table = np.zeros(cache.page_table.shape, np.int32)
    return cache

  def abstract_cache(self, batch: int, capacity: int) -> HybridCache:
    """The cache's shapes and dtypes without allocating it (for reports)."""
    return jax.eval_shape(lambda: init_cache(
        self.specs, batch=batch, capacity=capacity, n_kv_heads=self.cfg.n_kv_heads,
        head_dim=self.cfg.head_dim, dtype=self.cache_dtype, paged=self.paged,
        page_size=self.page_size, num_pages=self.num_pages))

  def _sync_pages(self, cache: HybridCache, lengths: np.ndarray) -> HybridCache:
    if not self.paged or self.allocator is None:
      return cache
    if self.allocator.ensure(self._table, lengths):
      cache = dataclasses.replace(cache, page_table=jnp.asarray(self._table))
    return cache

  def kv_bucket(self, max_length: int, capacity: int) -> int:
    """Static prefix of the full caches a decode step reads (>= ``max_length``); the capacity
    when no layer is full (one decode program for the whole generation)."""
    if not any(s.is_full for s in self.specs):
      return capacity
    return min(capacity, buckets.bucket_len(max_length, self.quantum, self.per_octave))

  # ---------------------------------------------------------------- prefill / decode
  def prefill(self, prompts: Sequence[Sequence[int]], *, capacity: int | None = None,
              max_new_tokens: int = 0, targets: Sequence[Sequence[int]] | None = None):
    """Prefills a batch of prompts (right-padded). Returns ``(last_logits [B, V], cache)``.

    ``targets`` (one id per prompt token and row): also returns the log-probability of
    ``targets[b][t]`` under the logits at position ``t``, ``[B, T_pad]`` (padding: garbage).
    """
    lens = [len(p) for p in prompts]
    t_pad, chunk, capacity = self.plan(lens, max_new_tokens, capacity)
    B = len(prompts)
    tokens = np.zeros((B, t_pad), np.int32)
    for b, p in enumerate(prompts):
      tokens[b, :len(p)] = np.asarray(p, np.int32)
    tgt_all = None
    if targets is not None:
      tgt_all = np.zeros((B, t_pad), np.int32)
      for b, t in enumerate(targets):
        if len(t) != lens[b]:
          raise InferError(f"row {b}: {len(t)} targets for a prompt of {lens[b]} tokens")
        tgt_all[b, :len(t)] = np.asarray(t, np.int32)
    limit = jnp.asarray(lens, jnp.int32)
    cache = self.new_cache(B, capacity)
    cache = self._sync_pages(cache, np.asarray(lens))
    logits, logprobs = None, []
    for c in range(t_pad // chunk):
      s = c * chunk
      tok = jnp.asarray(tokens[:, s:s + chunk])
      tgt = None if tgt_all is None else jnp.asarray(tgt_all[:, s:s + chunk])
      logits, lp, cache = self._prefill(self.params, cache, tok, jnp.int32(s), limit,
                                        first=(c == 0), backend=self.backend,
                                        block_k=self.block_k, last_logits=logits, targets=tgt)
      if tgt_all is not None:
        logprobs.append(lp)
    if tgt_all is not None:
      return logits, cache, jnp.concatenate(logprobs, axis=1)
    return logits, cache

  def decode(self, cache: HybridCache, tokens, *, sampling: SamplingParams = SamplingParams(),
             key=None, lengths: np.ndarray | None = None):
    """One decode step with given input ``tokens [B]``: ``(next_tokens, logits, cache)``.

    ``lengths`` (host copy of ``cache.lengths``) saves a device read when known.
    """
    if lengths is None:
      lengths = np.asarray(cache.lengths)
    top = int(np.max(lengths)) + 1
    if top > cache.capacity:
      raise InferError(f"decoding position {top - 1} exceeds the cache capacity "
                       f"{cache.capacity}")
    cache = self._sync_pages(cache, np.asarray(lengths) + 1)
    key = jax.random.PRNGKey(0) if key is None else key
    return self._decode(self.params, cache, jnp.asarray(tokens, jnp.int32), key,
                        kv_bucket=self.kv_bucket(top, cache.capacity), sampling=sampling,
                        impl=self.decode_impl)

  # ---------------------------------------------------------------- generate
  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               sampling: SamplingParams = SamplingParams(), stop_tokens: Iterable[int] = (),
               seed: int = 0, capacity: int | None = None,
               on_token: TokenCallback | None = None,
               should_stop: Callable[[int, list], bool] | None = None,
               return_cache: bool = False) -> GenerationResult:
    """Generates up to ``max_new_tokens`` per prompt.

    ``on_token(step, tokens [B], emitted [B], active [B])`` is called after each step (streaming):
    ``emitted[b]``: ``tokens[b]`` was appended to row ``b``; ``active[b]``: row ``b`` goes on. A
    row stops at a token of ``stop_tokens`` (not emitted) or when ``should_stop(row,
    generated_ids)`` says so; the loop ends when every row stopped.
    """
    prompts = [list(p) for p in prompts]
    lens = np.asarray([len(p) for p in prompts], np.int64)
    stop = set(int(t) for t in stop_tokens)
    t0 = time.perf_counter()
    logits, cache = self.prefill(prompts, capacity=capacity, max_new_tokens=max_new_tokens)
    key = jax.random.PRNGKey(seed)
    B = len(prompts)
    out: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    active = np.ones(B, bool)
    if max_new_tokens == 0:
      jax.block_until_ready(logits)
      return GenerationResult(out, reasons, lens.tolist(), cache.capacity,
                              time.perf_counter() - t0, 0.0, 0)
    tok = np.asarray(self._sample(logits, jax.random.fold_in(key, 0), sampling))
    t1 = time.perf_counter()
    lengths = lens.copy()
    steps = 0
    for i in range(max_new_tokens):
      emitted = np.zeros(B, bool)
      for b in np.nonzero(active)[0]:
        t = int(tok[b])
        if t in stop:
          active[b] = False
          reasons[b] = "stop"
          continue
        out[b].append(t)
        emitted[b] = True
        if should_stop is not None and should_stop(int(b), out[b]):
          active[b] = False
          reasons[b] = "stop"
      if on_token is not None:
        on_token(i, tok, emitted, active.copy())
      if not active.any() or i == max_new_tokens - 1:
        break
      nxt, _, cache = self.decode(cache, tok, sampling=sampling,
                                  key=jax.random.fold_in(key, i + 1), lengths=lengths)
      lengths = lengths + 1
      steps += 1
      tok = np.asarray(nxt)
    t2 = time.perf_counter()
    if self.paged and self.allocator is not None:
      self.allocator.release(self._table)
    return GenerationResult(out, reasons, lens.tolist(), cache.capacity, t1 - t0, t2 - t1, steps,
                            cache if return_cache else None)

  # ---------------------------------------------------------------- scoring
  def score(self, tokens: Sequence[int]) -> np.ndarray:
    """Log-probability of ``tokens[t + 1]`` given ``tokens[:t + 1]`` for every ``t`` (fp32 numpy
    ``[len(tokens) - 1]``), computed through the cached, chunked prefill path."""
    tokens = list(tokens)
    if len(tokens) < 2:
      raise InferError(f"scoring needs >= 2 tokens, got {len(tokens)}")
    _, _, lp = self.prefill([tokens[:-1]], targets=[tokens[1:]])
    return np.asarray(lp[0, :len(tokens) - 1])
