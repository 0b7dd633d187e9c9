"""Learning-rate schedules and the optax optimizer (AdamW + global-norm clipping)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def _cosine(lr: float, warmup: int, steps: int, train: Any) -> optax.Schedule:
  """Linear warmup, then cosine decay to ``train.min_lr_ratio * lr`` at ``steps``."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
      end_value=lr * float(train.min_lr_ratio))


def _constant(lr: float, warmup: int, steps: int, train: Any) -> optax.Schedule:
  """Linear warmup, then ``lr``."""
  del steps, train
  sched = optax.constant_schedule(lr)
  if warmup > 0:
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
  return sched


# The one table of schedules: ``train.schedule`` name -> builder(lr, warmup_steps, steps, train).
# Config validation (``config_utils.validate_config``) accepts exactly these names.
SCHEDULES: dict[str, Callable[[float, int, int, Any], optax.Schedule]] = {
    "cosine": _cosine,
    "constant": _constant,
}


def make_schedule(train: Any) -> optax.Schedule:
  """Linear warmup from 0 to ``train.lr``, then the ``train.schedule`` builder of ``SCHEDULES``.

  Reads ``train.schedule`` (``"cosine"`` | ``"constant"``), ``lr``, ``warmup_steps``, ``steps``
  and ``min_lr_ratio`` (cosine end value as a fraction of ``lr``). The schedule is evaluated at
  the optimizer's update count, i.e. ``schedule(s - 1)`` is the rate of training step ``s``.

  ``train.debug_inf_lr_at_step`` (test-only, 0 = off) makes the rate of that training step
  ``inf``, which turns the parameters non-finite: the trainer must stop at that step.
  """
  if train.schedule not in SCHEDULES:
    raise ValueError(f"train.schedule {train.schedule!r} is not one of {tuple(SCHEDULES)}")
  sched = SCHEDULES[train.schedule](float(train.lr), int(train.warmup_steps), int(train.steps),
                                    train)
  bad = int(train.get("debug_inf_lr_at_step", 0) or 0)
  if bad <= 0:
    return sched
  return lambda count: jnp.where(count == bad - 1, jnp.inf, sched(count))


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices only (not on norm scales or other vectors)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(train: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """``clip_by_global_norm(train.grad_clip)`` (if > 0) followed by AdamW at ``schedule``."""
  parts = []
  if float(train.grad_clip) > 0:
    parts.append(optax.clip_by_global_norm(float(train.grad_clip)))
  parts.append(optax.adamw(schedule, b1=float(train.b1), b2=float(train.b2),
                           eps=float(train.eps), weight_decay=float(train.weight_decay),
                           mask=decay_mask))
  return optax.chain(*parts)
