"""Config helpers: the full field list with defaults, ``get_config`` argument parsing, validation.

Every config in ``configs/`` starts from :func:`base_config` (so ``lock_config=True`` overrides
like ``--config.train.steps=10`` work for every field) and sets what it needs. The fields:

``seed``          int: parameter init and data order.
``init_from``     str: where the weights come from when the workdir has no checkpoint (see the
                  resume order in ``train.py``); "" = random init.
``model``         ``longgen_jax.model.ModelConfig`` fields plus the layout keys (``layout``,
                  ``sparse``, ``n_full``, ``full``, ``full_layers``, ``layers``).
                  ``model.max_seq_len`` is tied to ``train.seq_len`` (a FieldReference).
``data``          passed to ``longgen_jax.data.build_train_iterator``; ``data.tokenizer`` to
                  ``get_tokenizer``.
``train``         steps, batch and optimizer settings (documented inline below).
``checkpoint``    every / keep / async_save.
``mesh``          ``longgen_jax.parallel.mesh.MeshConfig`` fields (data / fsdp / sequence /
                  tensor sizes, -1 = the rest; sequence-parallel options).

The schedule names are the keys of ``training.optim.SCHEDULES`` (the optimizer's one table).
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from longgen_jax.model.errors import ConfigError
from longgen_jax.training.optim import SCHEDULES

MESH_AXES = ("data", "fsdp", "sequence", "tensor")


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, at its default. Configs override values, never add keys."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""

  t = c.train = ml_collections.ConfigDict()
  t.steps = 100                # optimizer steps in the whole run
  t.batch_size = 8             # sequences per optimizer step (all processes together)
  t.grad_accum = 1             # micro-batches per step: each is batch_size // grad_accum rows
  t.seq_len = 128              # tokens per row (also model.max_seq_len)
  t.loss_chunk = 0             # tokens per cross-entropy chunk (0 = whole row at once)
  t.lr = 3e-4                  # peak learning rate
  t.schedule = "cosine"        # "cosine" (to min_lr_ratio * lr at `steps`) | "constant"
  t.warmup_steps = 10          # linear warmup from 0
  t.min_lr_ratio = 0.1         # cosine end value, as a fraction of lr
  t.b1 = 0.9
  t.b2 = 0.95
  t.eps = 1e-8
  t.weight_decay = 0.1         # AdamW, matrices only
  t.grad_clip = 1.0            # global-norm clipping (0 = off)
  t.log_every = 10             # console line every N steps (JSONL and TensorBoard: every step)
  t.peak_tflops = 0.0          # per-device peak for MFU; 0 = from the device kind (none on CPU)
  t.prefetch = 2               # batches read + transferred ahead in a thread (0 = in the loop)
  t.debug_inf_lr_at_step = 0   # TEST ONLY: lr = inf at this step (exercises the NaN guard)

  k = c.checkpoint = ml_collections.ConfigDict()
  k.every = 50                 # save every N steps (and always at the last step)
  k.keep = 3                   # most recent checkpoints kept
  k.async_save = True          # write in a background thread

  m = c.mesh = ml_collections.ConfigDict()
  m.data = 1
  m.fsdp = -1                  # -1 = all remaining devices
  m.sequence = 1
  m.tensor = 1
  m.sequence_attention = "ring"   # "ring" | "allgather" (full layers under sequence parallel)
  m.sequence_layout = "zigzag"    # "zigzag" | "striped" | "contiguous"

  c.model = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()
  return c


def link_seq_len(config: ml_collections.ConfigDict) -> None:
  """Makes ``model.max_seq_len`` follow ``train.seq_len`` (one override changes both)."""
  config.model.max_seq_len = config.train.get_ref("seq_len")


# ----------------------------------------------------------------------------- get_config(arg)
def _convert(key: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ConfigError(f"config argument {key}={text!r} is not a boolean")
  if isinstance(default, (int, float)):
    kind = "an int" if isinstance(default, int) else "a number"
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
        or (isinstance(default, int) and value != int(value))):
      raise ConfigError(f"config argument {key}={text!r} is not {kind} (e.g. {key}={default})")
    return type(default)(value)
  return text


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """big_vision-style ``get_config`` argument: ``"full,steps=200"`` -> typed ConfigDict.

  ``spec`` gives every accepted key with its default (its type types the value). A bare word
  sets a boolean key to True (``configs/tiny_cpu.py:full``). Unknown keys fail with one line.
  """
  out = dict(spec)
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, sep, value = part.partition("=")
    key = key.strip()
    if key not in spec:
      raise ConfigError(f"unknown config argument {key!r}; accepted: {sorted(spec)}")
    if not sep:
      if not isinstance(spec[key], bool):
        raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    else:
      out[key] = _convert(key, value.strip(), spec[key])
  return ml_collections.ConfigDict(out)


# ----------------------------------------------------------------------------- validation
def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
  return value


def _number(value: Any, name: str, lo: float = 0.0, hi: float | None = None,
            lo_open: bool = False) -> float:
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    raise ConfigError(f"{name} must be a number, got {value!r}")
  if value < lo or (lo_open and value == lo) or (hi is not None and value >= hi):
    bound = f"{'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi is not None else "")
    raise ConfigError(f"{name} must be {bound}, got {value!r}")
  return float(value)


def validate_config(config: ml_collections.ConfigDict, process_count: int = 1):
  """Checks every trainer field and builds the ``ModelConfig``; first problem -> ``ConfigError``.

  Returns the ``ModelConfig``. Runs before any array is allocated, so a bad config costs
  seconds, not a compile.
  """
  from longgen_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel

  for section in ("model", "data", "train", "checkpoint", "mesh"):
    if section not in config:
      raise ConfigError(f"config has no '{section}' section")
  t = config.train
  _positive_int(t.steps, "train.steps")
  _positive_int(t.batch_size, "train.batch_size")
  _positive_int(t.grad_accum, "train.grad_accum")
  _positive_int(t.seq_len, "train.seq_len")
  _positive_int(t.loss_chunk, "train.loss_chunk", minimum=0)
  _positive_int(t.log_every, "train.log_every")
  _positive_int(t.prefetch, "train.prefetch", minimum=0)
  _positive_int(t.warmup_steps, "train.warmup_steps", minimum=0)
  _positive_int(t.debug_inf_lr_at_step, "train.debug_inf_lr_at_step", minimum=0)
  if t.batch_size % t.grad_accum:
    raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by train.grad_accum "
                      f"{t.grad_accum}")
  if (t.batch_size // t.grad_accum) % process_count:
    raise ConfigError(f"micro-batch {t.batch_size // t.grad_accum} rows cannot be split over "
                      f"{process_count} processes")
  if t.loss_chunk and t.seq_len % t.loss_chunk:
    raise ConfigError(f"train.seq_len {t.seq_len} is not a multiple of train.loss_chunk "
                      f"{t.loss_chunk}")
  if t.schedule not in SCHEDULES:
    raise ConfigError(f"train.schedule {t.schedule!r} is not one of {tuple(SCHEDULES)}")
  _number(t.lr, "train.lr")
  _number(t.min_lr_ratio, "train.min_lr_ratio")
  _number(t.b1, "train.b1", 0.0, 1.0)
  _number(t.b2, "train.b2", 0.0, 1.0)
  _number(t.eps, "train.eps", lo_open=True)
  _number(t.weight_decay, "train.weight_decay")
  _number(t.grad_clip, "train.grad_clip")
  _number(t.peak_tflops, "train.peak_tflops")
  k = config.checkpoint
  _positive_int(k.every, "checkpoint.every")
  _positive_int(k.keep, "checkpoint.keep")
  if not isinstance(config.init_from, str):
    raise ConfigError(f"init_from must be a path string ('' for none), got {config.init_from!r}")
  for axis in MESH_AXES:
    size = config.mesh.get(axis)
    if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ConfigError(f"mesh.{axis} must be a positive int or -1, got {size!r}")
  seq_shards = config.mesh.sequence if config.mesh.sequence > 0 else 1
  if t.seq_len % seq_shards:
    raise ConfigError(f"train.seq_len {t.seq_len} is not divisible by mesh.sequence {seq_shards}")

  try:
    model_cfg = ModelConfig.from_dict(config.model.to_dict())
  except ConfigError as e:
    raise ConfigError(f"model: {e}") from None
  except (TypeError, ValueError) as e:  # e.g. a SpecError or a wrong type deep in a field
    raise ConfigError(f"model: {str(e).splitlines()[0]}") from None
  if t.seq_len > model_cfg.max_seq_len:
    raise ConfigError(f"train.seq_len {t.seq_len} exceeds model.max_seq_len "
                      f"{model_cfg.max_seq_len}")
  for i, spec in enumerate(model_cfg.layers):
    if t.seq_len % spec.block:
      raise ConfigError(f"train.seq_len {t.seq_len} is not a multiple of layer {i}'s attention "
                        f"block {spec.block} ({spec})")
  _check_attention(model_cfg, config.mesh, t.seq_len)
  return model_cfg


def _check_attention(model_cfg, mesh, seq_len: int) -> None:
  """The attention backend exists, and every sparse layer fits the sequence-parallel chunks."""
  from pallas_kernels import api  # pylint: disable=import-outside-toplevel
  from longgen_jax.parallel import halo  # pylint: disable=import-outside-toplevel
  problem = api.unknown_backend(model_cfg.attention_backend)
  if problem:
    raise ConfigError(f"model.attention_backend: {problem}")
  try:
    halo.check_specs(model_cfg.layers, mesh.sequence_layout, mesh.sequence, seq_len)
  except halo.HaloError as e:
    raise ConfigError(f"mesh.sequence={mesh.sequence}: {str(e).splitlines()[0]}") from None


def load_sibling_config(this_file: str, name: str):
  """Loads the config module ``name`` next to ``this_file`` (config files are loaded by path)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
  spec = importlib.util.spec_from_file_location(f"longgen_config_{name[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
