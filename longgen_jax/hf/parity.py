"""Comparisons between our JAX model and a transformers model (tests, notebooks, sanity checks).

``greedy_full_forward`` is the reference decoder: it re-runs the whole forward at every step (no
KV cache), so it checks a cache-based generator without sharing any code with it.
"""

from __future__ import annotations

import numpy as np


def greedy_full_forward(model, prompt, n_new: int, pad_id: int = 0) -> np.ndarray:
  """Greedy continuation of ``prompt [B, T]`` by ``n_new`` tokens; returns ``[B, T + n_new]``.

  Every step runs the whole forward over a fixed ``[B, T + n_new]`` buffer (future slots hold
  ``pad_id``; attention is causal, so they cannot change the logits read at position t - 1),
  which compiles once instead of once per length.
  """
  import jax
  from flax import nnx
  graphdef, state = nnx.split(model)

  @jax.jit
  def logits_at(state, tokens, t):
    logits = nnx.merge(graphdef, state)(tokens)
    return jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False)

  prompt = np.asarray(prompt, dtype=np.int32)
  b, t0 = prompt.shape
  tokens = np.full((b, t0 + n_new), pad_id, dtype=np.int32)
  tokens[:, :t0] = prompt
  for t in range(t0, t0 + n_new):
    tokens[:, t] = np.asarray(logits_at(state, tokens, t)).argmax(-1)
  return tokens


def jax_logits(model, tokens) -> np.ndarray:
  """fp32 numpy logits of our NNX model on ``tokens [B, T]``, as one jitted call."""
  import jax
  from flax import nnx
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))
  return np.asarray(fn(state, np.asarray(tokens, dtype=np.int32)), dtype=np.float32)


def torch_logits(hf_model, tokens) -> np.ndarray:
  """fp32 numpy logits of a transformers causal LM on ``tokens [B, T]`` (no cache)."""
  import torch
  with torch.no_grad():
    out = hf_model(torch.as_tensor(np.asarray(tokens), dtype=torch.long), use_cache=False)
  return out.logits.float().numpy()


def hf_greedy(hf_model, prompt, n_new: int):
  """Greedy ``generate`` with the model's own cache; returns ``(tokens [B, T+n], cache)``."""
  import torch
  ids = torch.as_tensor(np.asarray(prompt), dtype=torch.long)
  with torch.no_grad():
    # eos_token_id=None: never stop early (ours has no EOS rule) and never mask EOS logits.
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                            do_sample=False, return_dict_in_generate=True, eos_token_id=None,
                            pad_token_id=hf_model.config.pad_token_id)
  return out.sequences.numpy(), generated_cache(out)


def generated_cache(out):
  """The cache held by a ``generate(..., return_dict_in_generate=True)`` output.

  transformers renamed the field: ``past_key_values`` up to 5.17, ``cache`` in later 5.x.
  """
  for name in ("cache", "past_key_values"):
    if hasattr(out, name):
      return getattr(out, name)
  raise AttributeError(f"{type(out).__name__} has neither 'cache' nor 'past_key_values'")


def max_abs_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
