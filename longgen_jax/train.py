r"""LongGen trainer: one readable loop (absl + ml_collections + optax + orbax + grain).

Usage::

  python -m longgen_jax.train --config=configs/tiny_cpu.py --workdir=/tmp/tiny
  python -m longgen_jax.train --config=configs/tiny_cpu.py:full --workdir=/tmp/tiny_full \
      --config.train.steps=50 --config.train.lr=1e-3

Every config field can be overridden with ``--config.<path>=<value>`` (the config is locked: a
misspelt field is an error). Running the same command again continues the run.

Resume order (the first that applies):

  1. ``WORKDIR/checkpoints``: the newest checkpoint that restores and verifies intact (a damaged
     newest step is reported, moved to ``WORKDIR/checkpoints_corrupt/`` and the previous step is
     used). Parameters, optimizer state, step and data position continue exactly, so a killed
     and restarted run ends bit-identical to an uninterrupted one (same hardware).
  2. ``config.init_from``: weights only (optimizer, step and data start fresh). An orbax
     checkpoint of this trainer (``WORKDIR``, ``WORKDIR/checkpoints`` or
     ``WORKDIR/checkpoints/<step>``: its newest step), else a directory with ``config.json``
     (Hugging Face) or ``longgen_checkpoint.json`` (an imported checkpoint), loaded by
     ``longgen_jax.hf.import_hf.load_for_training``.
  3. Random initialisation from ``config.seed``.

Outputs in WORKDIR: ``checkpoints/`` (orbax; layout in ``training/checkpoint.py``),
``metrics.jsonl`` (one line per step), ``tb/`` (TensorBoard) and ``train_config.json``.

Sharded: with more than one device (or a non-trivial ``config.mesh``) the run uses the mesh of
``config.mesh`` via ``longgen_jax.parallel.trainer_shardings`` (docs/training.md, "Sharded
training"; docs/parallel.md); multi-process jobs start ``jax.distributed`` in ``main``.

A step whose loss, gradient norm or updated parameters are not finite stops the run (exit code 1)
with a message naming the step; nothing is saved at or after that step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from longgen_jax import data as data_lib
from longgen_jax import parallel
from longgen_jax.data.errors import DataError
from longgen_jax.data.packing import BATCH_KEYS
from longgen_jax.hf.errors import HFConversionError
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.errors import ConfigError
from longgen_jax.model.flops import flops_per_token
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import load_canonical, param_count
from longgen_jax.training import checkpoint as ckpt_lib
from longgen_jax.training import config_utils
from longgen_jax.training import metrics as metrics_lib
from longgen_jax.training import optim
from longgen_jax.training.step import make_step

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/tiny_cpu.py (optionally :ARG).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, logs).")

# Test-only crash hook: "STEP" SIGKILLs this process right after the checkpoint of STEP is
# committed; "STEP:during" right after that save started (files possibly half-written).
KILL_ENV = "LONGGEN_TEST_SIGKILL_AT_CHECKPOINT"


class NonFiniteError(RuntimeError):
  """A training step produced a non-finite loss, gradient or parameter."""


def note(msg: str) -> None:
  """A progress note on the console (process 0) and in the absl log."""
  logging.info("%s", msg)
  if jax.process_index() == 0:
    tqdm.write(msg)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- model and state
def abstract_state(model_cfg: ModelConfig, tx: optax.GradientTransformation):
  """``(graphdef, {"params", "opt_state"} of ShapeDtypeStructs, abstract rest)``; no allocation.

  ``rest`` is the model's non-parameter state (empty for ``Llama`` today).
  """
  model = nnx.eval_shape(lambda: Llama(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, {"params": params, "opt_state": jax.eval_shape(tx.init, params)}, rest


def init_params(model_cfg: ModelConfig, seed: int, shardings: Any = None):
  """Random parameters, initialised inside ``jit`` (deterministic for a seed)."""
  def init():
    return nnx.split(Llama(model_cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)[1]
  return jax.jit(init, **({} if shardings is None else {"out_shardings": shardings}))()


def init_rest(model_cfg: ModelConfig, abstract_rest: Any):
  """The model's non-parameter state; the parameter init in here is dead code for XLA."""
  if not jax.tree.leaves(abstract_rest):
    return abstract_rest
  return jax.jit(lambda: nnx.split(Llama(model_cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[2])()


def load_init_from(path: str, model_cfg: ModelConfig, abstract: dict[str, Any]) -> Any:
  """Parameters from ``config.init_from`` (resume order, step 2), placed like ``abstract``.

  An orbax checkpoint of this trainer is restored (params only, checksum-verified). A directory
  with ``config.json`` (Hugging Face) or ``longgen_checkpoint.json`` goes through
  ``longgen_jax.hf.import_hf.load_for_training(path, model_cfg, sharding_fn=...)``: each tensor
  is read straight into its shards (the train state's sharding of that parameter, one layer of it
  for a scanned stack), so no device or host ever holds the whole model.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise ConfigError(f"init_from={path!r} does not exist")
  try:
    directory, step = ckpt_lib.latest_step_dir(path)
  except ckpt_lib.CheckpointError:
    directory = None
  if directory is not None:
    reader = ckpt_lib.Checkpointer(directory, read_only=True)
    try:
      state, _ = reader.restore(step, abstract, params_only=True)
    finally:
      reader.close()
    note(f"init_from: parameters of step {step} in {directory}")
    return state["params"]
  if not any(os.path.isfile(os.path.join(path, f))
             for f in ("config.json", "longgen_checkpoint.json")):
    raise ConfigError(f"init_from={path!r} is neither a trainer checkpoint (WORKDIR, "
                      "WORKDIR/checkpoints or a step dir) nor a Hugging Face directory "
                      "(config.json) nor an imported checkpoint (longgen_checkpoint.json)")
  try:
    from longgen_jax.hf import import_hf  # pylint: disable=import-outside-toplevel
    from longgen_jax.hf import shardings as hf_shardings  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError(f"init_from={path!r} is a Hugging Face directory, but "
                      f"longgen_jax.hf.import_hf cannot be imported ({e})") from None
  # An abstract model holding the train state's shardings: its canonical view gives each
  # tensor's target sharding, and load_canonical then stacks the layers into those shardings.
  model, targets = hf_shardings.model_targets(model_cfg, abstract["params"])
  loaded = import_hf.load_for_training(path, model_cfg,
                                       sharding_fn=hf_shardings.sharding_fn(targets))
  load_canonical(model, loaded)
  note(f"init_from: Hugging Face weights in {path}")
  return nnx.state(model, nnx.Param)


# ----------------------------------------------------------------------------- the train step
def make_train_step(graphdef: Any, tx: optax.GradientTransformation, schedule: Callable,
                    train: ml_collections.ConfigDict, shardings: dict[str, Any] | None = None,
                    ) -> Callable:
  """``training.step.make_step`` jitted with ``state`` donated.

  ``shardings`` (see :func:`mesh_shardings`) pins in/out shardings and hands the model the
  mesh's sequence-parallel attention (``Parallel.attention_fn``); None leaves placement to JAX
  and runs the kernel on one device.
  """
  step = make_step(graphdef, tx, schedule, grad_accum=train.grad_accum,
                   loss_chunk=train.loss_chunk,
                   attention_fn=None if shardings is None else shardings["parallel"].attention_fn)
  if shardings is None:
    return jax.jit(step, donate_argnums=(0,))
  state_sh = {"step": shardings["replicated"], "params": shardings["params"],
              "opt_state": shardings["opt_state"]}
  return jax.jit(step, donate_argnums=(0,),
                 in_shardings=(state_sh, shardings["rest"], shardings["batch"]),
                 out_shardings=(state_sh, shardings["replicated"]))


def mesh_shardings(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """Where arrays live: None on one device with a trivial mesh (JAX's default placement).

  Otherwise ``parallel.trainer_shardings(config)``: the mesh built from ``config.mesh`` and
  ``{"params", "opt_state", "rest", "batch", "replicated", "parallel"}`` (``"parallel"`` is the
  ``parallel.Parallel`` object: data shard, layout-aware batch assembly, the model's attention fn).
  A mesh that does not fit the devices or the batch is a ``ConfigError``.
  """
  n = jax.device_count()
  sizes = {a: config.mesh[a] for a in config_utils.MESH_AXES}
  if n == 1 and math.prod(s for s in sizes.values() if s != -1) == 1:
    return None
  try:
    return parallel.trainer_shardings(config)
  except parallel.MeshError as e:
    raise ConfigError(f"mesh {sizes} on {n} device(s): {e}") from None


def device_batch(host_batch: dict[str, np.ndarray], shardings: dict[str, Any] | None):
  """Host numpy batch -> device arrays (one device, or this process's rows of a global array).

  Sharded: ``Parallel.device_batch`` applies the sequence layout (zigzag / striped) and builds
  the global arrays from this process's rows (processes of one row group load the same rows).
  """
  if shardings is None:
    return {k: jnp.asarray(host_batch[k]) for k in BATCH_KEYS}
  return shardings["parallel"].device_batch({k: host_batch[k] for k in BATCH_KEYS})


def batch_fingerprint(batch: dict[str, np.ndarray]) -> str:
  """Short hash of the input tokens; logged per step to prove no batch repeats or is skipped."""
  return hashlib.blake2b(np.ascontiguousarray(batch["inputs"]).tobytes(),
                         digest_size=8).hexdigest()


# ----------------------------------------------------------------------------- the run
class _Preemption:
  """Turns SIGTERM into a flag: the loop then saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, *_):
    self.requested = True

  def __exit__(self, *_):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or continues) the run in ``workdir``; returns the last step's metrics record."""
  # ---- config, workdir, data, model shapes: everything is checked before any allocation.
  # Per-process divisibility is the mesh's business (trainer_shardings checks the micro-batch
  # against data x fsdp; processes sharing rows load the same rows).
  model_cfg = config_utils.validate_config(config, 1)
  data_lib.normalize_data_config(config.data)
  shardings = mesh_shardings(config)
  t, is_main = config.train, jax.process_index() == 0
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  config_json = config.to_json_best_effort(indent=2)
  if is_main:
    with open(os.path.join(workdir, "train_config.json"), "w", encoding="utf-8") as f:
      f.write(config_json)
  note(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}; "
       f"workdir {workdir}")
  note(f"model: {model_cfg.describe()}; {param_count(model_cfg) / 1e6:,.2f}M parameters")

  tokenizer = data_lib.get_tokenizer(config.data.tokenizer)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ConfigError(f"tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size} ids but "
                      f"model.vocab_size is {model_cfg.vocab_size}")
  if shardings is None:
    rows, row_group, row_groups = t.batch_size, 0, 1
  else:   # this process's row group (see parallel.DataShard)
    shard = shardings["parallel"].data
    rows, row_group, row_groups = shard.rows, shard.index, shard.count
    note(f"mesh {dict(shardings['parallel'].mesh.shape)}; this process loads {rows} of "
         f"{t.batch_size} rows (row group {row_group} of {row_groups})")
  data_iter = data_lib.build_train_iterator(
      config.data, tokenizer=tokenizer, seq_len=t.seq_len, batch_size=rows, seed=config.seed,
      process_index=row_group, process_count=row_groups)

  schedule = optim.make_schedule(t)
  tx = optim.make_optimizer(t, schedule)
  graphdef, abstract, abstract_rest = abstract_state(model_cfg, tx)
  abstract = ckpt_lib.abstract_like(abstract, shardings and {
      "params": shardings["params"], "opt_state": shardings["opt_state"]})
  rest = init_rest(model_cfg, abstract_rest)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                               async_save=config.checkpoint.async_save)

  # ---- resume order: workdir checkpoint -> config.init_from -> random init.
  restored = ckpt.restore_latest(abstract, data_iter)
  if restored is not None:
    start, state, meta = restored
    note(f"resumed from checkpoint step {start} ({meta.get('tokens_seen', 0) / 1e6:,.2f}M "
         "tokens seen)" + ("; config.init_from is ignored once the workdir has checkpoints"
                           if config.init_from else ""))
  else:
    start = 0
    if config.init_from:
      params = load_init_from(config.init_from, model_cfg, abstract)
    else:
      params = init_params(model_cfg, config.seed, shardings and shardings["params"])
      note(f"initialised from scratch (seed {config.seed})")
    opt_init = jax.jit(tx.init, **({} if shardings is None else
                                   {"out_shardings": shardings["opt_state"]}))
    state = {"params": params, "opt_state": opt_init(params)}
  state["step"] = jnp.asarray(start, jnp.int32)
  if shardings is not None:
    state["step"] = jax.device_put(state["step"], shardings["replicated"])

  # ---- throughput accounting (training/metrics.py documents the MFU convention).
  tokens_per_step = t.batch_size * t.seq_len
  flops_per_tok = flops_per_token(model_cfg, t.seq_len).total   # whole-row count: mfu_row
  step_flops = metrics_lib.StepFlops(model_cfg, t.seq_len)       # same-document pairs: mfu
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind, t.peak_tflops)
  note(f"{t.steps} steps x {tokens_per_step:,} tokens; {flops_per_tok / 1e9:,.3f} GFLOP/token "
       "(attention over the pairs each layer computes, one document per row; packed rows "
       "count same-document pairs only in mfu); "
       + (f"MFU against {peak / 1e12:,.0f} TFLOP/s/device" if peak else "no peak known: no MFU"))

  train_step = make_train_step(graphdef, tx, schedule, t, shardings)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  writer.write({"event": "start", "step": start, "time": time.time(),
                "resumed": restored is not None, "init_from": config.init_from or None})
  pbar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
              disable=not (is_main and sys.stderr.isatty()))
  kill_step, _, kill_mode = os.environ.get(KILL_ENV, "").partition(":")
  last_saved = max(ckpt.all_steps(), default=None)
  compiled, record, step = None, {}, start

  # ---- the loop.
  try:
    with _Preemption() as preemption:
      for step in range(start + 1, t.steps + 1):
        t0 = time.perf_counter()
        host_batch = next(data_iter)
        batch = device_batch(host_batch, shardings)
        data_s = time.perf_counter() - t0
        if compiled is None:
          tc = time.perf_counter()
          compiled = train_step.lower(state, rest, batch).compile()
          note(f"compiled the train step in {time.perf_counter() - tc:.1f}s")
          t0 = time.perf_counter() - data_s
        state, metrics = compiled(state, rest, batch)
        # Useful FLOPs of the whole step from this process's rows (host numpy, while the device
        # runs); with several row groups the other groups' rows are assumed alike.
        flops = step_flops(host_batch.get("segment_ids"), rows) * (t.batch_size / rows)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        step_s = time.perf_counter() - t0

        bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(metrics[k])]
        if bad:
          writer.write({"event": "nonfinite", "step": step, **metrics})
          raise NonFiniteError(
              f"step {step}: non-finite {' and '.join(bad)} (loss={metrics['loss']}, "
              f"grad_norm={metrics['grad_norm']}, param_norm={metrics['param_norm']}, "
              f"lr={metrics['lr']}); stopped without saving this step; last checkpoint: "
              + (f"step {last_saved}" if last_saved is not None else "none"))

        record = dict(metrics, step=step, step_time=step_s, data_time=data_s,
                      tokens_per_s=tokens_per_step / step_s, tokens_seen=step * tokens_per_step,
                      batch_fp=batch_fingerprint(host_batch),
                      tflops_per_device=flops / (step_s * jax.device_count()) / 1e12)
        if peak:
          record["mfu"] = flops / (step_s * peak * jax.device_count())
          record["mfu_row"] = record["tokens_per_s"] * flops_per_tok / (peak * jax.device_count())
        mfu = f"{record['mfu']:.1%}" if peak else "n/a"
        writer.write(record)
        pbar.update(1)
        pbar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                         mfu=mfu)
        if step % t.log_every == 0 or step in (start + 1, t.steps):
          note(f"step {step:>6}/{t.steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} "
               f"| grad {metrics['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
               f"MFU {mfu} | {step_s:.3f} s/step")
          writer.scalars(step, record)

        stop = preemption.requested or ckpt.manager.reached_preemption(step)
        if step % config.checkpoint.every == 0 or step == t.steps or stop:
          ckpt.save(step, state, data_iter, config_json,
                    meta={"tokens_seen": step * tokens_per_step, "loss": metrics["loss"]})
          last_saved = step
          if kill_step == str(step):  # test-only crash (see KILL_ENV)
            if kill_mode != "during":
              ckpt.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        if stop:
          note(f"preempted at step {step}: checkpoint saved; run the same command to continue")
          break
  finally:
    pbar.close()
    ckpt.close()   # waits for the last asynchronous save
    writer.write({"event": "end", "step": step, "time": time.time()})
    writer.close()

  if record:
    note(f"done: step {step}, loss {record['loss']:.4f}; checkpoints in {ckpt.directory}")
  else:
    note(f"nothing to do: the run is already at step {start} of {t.steps}")
  return record


# ----------------------------------------------------------------------------- entry point
def _fail(msg: str) -> None:
  print(f"longgen_jax.train: error: {msg}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, but a bad config argument or override is one error line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    root = e   # config_flags chains the config file's own exception: report that one
    while root.__cause__ is not None or root.__context__ is not None:
      root = root.__cause__ or root.__context__
    if isinstance(root, (AttributeError, KeyError)):   # an override of a field that does not exist
      key = str(root).strip("'\" ")
      where = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
      _fail(f"no config field {key!r}" + (f" (in {where[0]})" if where else "")
            + "; the config is locked: only existing fields can be overridden")
    msg = (str(root).strip().splitlines() or [repr(root)])[0]
    _fail(f"{str(e).split(':', 1)[0]}: {msg}" if root is not e else msg)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  try:
    config = _CONFIG.value
    if config is None:
      raise app.UsageError("--config is required")
    config.keys()   # config_flags reports a config file that failed to load on first access
  except OSError as e:
    _fail(f"cannot load --config: {str(e).strip().splitlines()[-1].strip()}")
  if not flags.FLAGS["verbosity"].present:  # keep orbax / absl INFO chatter off the console
    logging.set_verbosity(logging.WARNING)
  try:
    parallel.initialize()   # multi-process jobs: jax.distributed, before any device use
  except ValueError as e:
    _fail(f"distributed start-up: {e}")
  try:
    train(config, _WORKDIR.value)
  except NonFiniteError as e:
    print(f"longgen_jax.train: error: {e}", file=sys.stderr)
    sys.exit(1)
  except (ConfigError, DataError, HFConversionError, ckpt_lib.CheckpointError) as e:
    _fail(str(e))


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
