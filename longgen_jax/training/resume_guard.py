"""Checks before a run continues in an existing workdir: same config, no silent fresh start.

* :func:`compare_configs`: the config of this start against ``WORKDIR/train_config.json`` (the
  config the checkpoints were written under). Changes that make the continued run differ from
  the one the checkpoints started (the data, the model, the seed, the batch, the sequence length,
  the optimizer) are refused unless the user allows them (``--allow_config_change``); the others
  (``train.steps``, logging, checkpoint cadence, mesh, remat, ``init_from``, and any ``train``
  field not listed in :data:`BREAKING`, such as a prefetch depth) get one note each.
* :func:`check_fresh_start`: when ``WORKDIR/checkpoints`` holds no step but
  ``WORKDIR/checkpoints_corrupt/`` does (every checkpoint was found damaged and set aside), a
  start from scratch would silently throw the run away, so it is refused unless the user asks
  for it (``--allow_fresh_start``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from longgen_jax.model.errors import ConfigError

CONFIG_NAME = "train_config.json"
# Dotted config keys (or prefixes ending in ".") whose change breaks an exact continuation.
BREAKING = ("seed", "data.", "model.", "train.batch_size", "train.seq_len", "train.lr",
            "train.schedule", "train.warmup_steps", "train.min_lr_ratio", "train.b1", "train.b2",
            "train.eps", "train.weight_decay", "train.grad_clip")
# Exceptions inside BREAKING prefixes: how the same computation runs, not what it computes.
HARMLESS = ("model.remat", "model.attention_backend", "data.read_threads", "data.read_prefetch")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a.b.0.c": leaf}`` of nested dicts and lists."""
  if isinstance(value, dict):
    items = value.items()
  elif isinstance(value, list):
    items = ((str(i), v) for i, v in enumerate(value))
  else:
    return {prefix: value}
  out: dict[str, Any] = {}
  for k, v in items:
    out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  if not out and prefix:
    out[prefix] = value
  return out


def is_breaking(key: str) -> bool:
  if any(key == h or key.startswith(h + ".") for h in HARMLESS):
    return False
  return any(key.startswith(b) if b.endswith(".") else key == b for b in BREAKING)


def has_checkpoints(directory: str) -> bool:
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def compare_configs(workdir: str, config_json: str, allow_change: bool) -> list[str]:
  """Notes for the harmless changes since the saved config; ``ConfigError`` for a breaking one.

  Only checked when the workdir has checkpoints to continue from (and a saved config).
  """
  path = os.path.join(workdir, CONFIG_NAME)
  if not (has_checkpoints(os.path.join(workdir, "checkpoints")) and os.path.isfile(path)):
    return []
  try:
    with open(path, encoding="utf-8") as f:
      old = flatten(json.load(f))
  except (OSError, ValueError) as e:
    return [f"cannot compare with the saved config {path} ({e}); continuing"]
  new = flatten(json.loads(config_json))
  changed = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
  if not changed:
    return []
  desc = {k: f"{k} {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed}
  breaking = [k for k in changed if is_breaking(k)]
  if breaking and not allow_change:
    more = f" (and {len(breaking) - 1} more)" if len(breaking) > 1 else ""
    raise ConfigError(f"the config differs from the one this run's checkpoints were written "
                      f"with ({path}): {desc[breaking[0]]}{more}; that changes what is trained, "
                      "so the run would not continue exactly: use the saved config, a new "
                      "--workdir, or --allow_config_change")
  notes = [f"config change on resume: {desc[k]}" for k in changed if k not in breaking]
  notes += [f"config change on resume (allowed by --allow_config_change): {desc[k]}"
            for k in breaking]
  if "train.steps" in changed and new.get("train.schedule") == "cosine":
    notes.append("train.steps changed under the cosine schedule: the learning rate from here on "
                 "follows the new length")
  return notes


def check_fresh_start(workdir: str, allow_fresh_start: bool) -> str | None:
  """Refuses (``ConfigError``) a start from scratch while every checkpoint is set aside.

  Returns a note when the user allowed it, else None.
  """
  ckpts = os.path.join(workdir, "checkpoints")
  corrupt = os.path.join(workdir, "checkpoints_corrupt")
  if has_checkpoints(ckpts) or not os.path.isdir(corrupt):
    return None
  bad = sorted(os.listdir(corrupt))
  if not bad:
    return None
  if not allow_fresh_start:
    raise ConfigError(f"{corrupt} holds {len(bad)} damaged checkpoint(s) ({', '.join(bad[:4])}"
                      f"{', ...' if len(bad) > 4 else ''}) and {ckpts} none: refusing to start "
                      "this run from scratch; pass --allow_fresh_start to do so anyway")
  return (f"starting from scratch although {corrupt} holds {len(bad)} damaged checkpoint(s) "
          "(--allow_fresh_start)")
