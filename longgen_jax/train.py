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

import contextlib
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

from longgen_jax import ckpt
from longgen_jax import cli_errors
from longgen_jax import data as data_lib
from longgen_jax import parallel
from longgen_jax.data.errors import DataError
from longgen_jax.data.packing import BATCH_KEYS
from longgen_jax.data.prefetch import Prefetcher
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
from longgen_jax.training import resume_guard
from longgen_jax.training import save_errors
from longgen_jax.training.workdir_lock import WorkdirLock, prepare_workdir
from longgen_jax.training.step import make_step

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/tiny_cpu.py (optionally :ARG).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, logs).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Continue a run although the config changed in a way that "
    "changes what is trained (seed, data, model, batch, sequence length, optimizer).")
_ALLOW_FRESH_START = flags.DEFINE_bool(
    "allow_fresh_start", False, "Start from scratch although every checkpoint of the workdir "
    "was found damaged and moved to checkpoints_corrupt/.")

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

  ``longgen_jax.ckpt`` decides what ``path`` is. An orbax checkpoint of this trainer is restored
  (params only, checksum-verified). A directory with ``config.json`` (Hugging Face) or
  ``longgen_checkpoint.json`` goes through
  ``longgen_jax.hf.import_hf.load_for_training(path, model_cfg, sharding_fn=...)``: each tensor
  is read straight into its shards (the train state's sharding of that parameter, one layer of it
  for a scanned stack), so no device or host ever holds the whole model.
  """
  path = os.path.abspath(os.path.expanduser(path))
  try:
    run = (ckpt.restore_run(path, abstract["params"], what="init_from")
           if ckpt.kind_of(path, what="init_from") == ckpt.TRAINER else None)
  except ckpt.CheckpointReadError as e:
    raise ConfigError(str(e)) from None
  if run is not None:
    note(f"init_from: parameters of step {run.step} in {run.directory}")
    return run.params
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


def train(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False,
          allow_fresh_start: bool = False) -> dict[str, Any]:
  """Trains (or continues) the run in ``workdir``; returns the last step's metrics record.

  The workdir is locked for the run (``training/workdir_lock.py``); continuing with a config
  that changes what is trained, or from scratch while every checkpoint was set aside as damaged,
  is refused unless allowed (``training/resume_guard.py``).
  """
  # ---- config, workdir, data, model shapes: everything is checked before any allocation.
  # Per-process divisibility is the mesh's business (trainer_shardings checks the micro-batch
  # against data x fsdp; processes sharing rows load the same rows).
  model_cfg = config_utils.validate_config(config, 1)
  data_lib.normalize_data_config(config.data)
  shardings = mesh_shardings(config)
  t, is_main = config.train, jax.process_index() == 0
  workdir = os.path.abspath(os.path.expanduser(workdir))
  prepare_workdir(workdir)
  lock = WorkdirLock(workdir) if is_main else None
  try:
    return _train_locked(config, workdir, model_cfg, shardings,
                         allow_config_change=allow_config_change,
                         allow_fresh_start=allow_fresh_start)
  finally:
    if lock is not None:
      lock.release()


def _train_locked(config: ml_collections.ConfigDict, workdir: str, model_cfg: ModelConfig,
                  shardings: dict[str, Any] | None, *, allow_config_change: bool,
                  allow_fresh_start: bool) -> dict[str, Any]:
  """:func:`train` once the config is valid and the workdir is locked."""
  t, is_main = config.train, jax.process_index() == 0
  config_json = config.to_json_best_effort(indent=2)
  fresh_note = resume_guard.check_fresh_start(workdir, allow_fresh_start)
  for line in resume_guard.compare_configs(workdir, config_json, allow_config_change):
    note(line)
  if is_main:   # atomically: other processes may be reading the previous one
    path = os.path.join(workdir, resume_guard.CONFIG_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(config_json)
    os.replace(path + ".tmp", path)
  note(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}; "
       f"workdir {workdir}")
  note(f"model: {model_cfg.describe()}; {param_count(model_cfg) / 1e6:,.2f}M parameters")

  tokenizer = data_lib.get_tokenizer(config.data.tokenizer)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ConfigError(f"tokenizer {config.data.tokenizer.to_dict()} has {tokenizer.vocab_size} "
                      f"ids but model.vocab_size is {model_cfg.vocab_size}: set "
                      f"--config.model.vocab_size={-(-tokenizer.vocab_size // 8) * 8}")
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
  ckpt.error_log = save_errors.divert_orbax_errors(workdir)

  # ---- resume order: workdir checkpoint -> config.init_from -> random init.
  try:   # a failure here closes the checkpointer first (no orbax noise at interpreter exit)
    restored = ckpt.restore_latest(abstract, data_iter)
    if restored is not None:
      start, state, meta = restored
      note(f"resumed from checkpoint step {start} ({meta.get('tokens_seen', 0) / 1e6:,.2f}M "
           "tokens seen)" + ("; config.init_from is ignored once the workdir has checkpoints"
                             if config.init_from else ""))
    else:
      start = 0
      if fresh_note:
        note(fresh_note)
      if config.init_from:
        params = load_init_from(config.init_from, model_cfg, abstract)
      else:
        params = init_params(model_cfg, config.seed, shardings and shardings["params"])
        note(f"initialised from scratch (seed {config.seed})")
      opt_init = jax.jit(tx.init, **({} if shardings is None else
                                     {"out_shardings": shardings["opt_state"]}))
      state = {"params": params, "opt_state": opt_init(params)}
  except BaseException:
    with contextlib.suppress(Exception):
      ckpt.close()
    raise
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
  if is_main and (moved := metrics_lib.set_aside_after(workdir, start)):
    note(f"metrics.jsonl: {moved} record(s) after step {start} (to be redone) moved to "
         "metrics.redone.jsonl")
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main,
                                     purge_step=start + 1 if start else None)
  writer.write({"event": "start", "step": start, "time": time.time(),
                "resumed": restored is not None, "init_from": config.init_from or None})
  pbar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
              disable=not (is_main and sys.stderr.isatty()))
  kill_step, _, kill_mode = os.environ.get(KILL_ENV, "").partition(":")
  last_saved = max(ckpt.all_steps(), default=None)
  # Batches are read, packed and transferred `train.prefetch` steps ahead in a thread, and a
  # step's metrics are read back only after the next step was dispatched, so the accelerator
  # never waits for the host. `feed.frozen()` is the position after the last CONSUMED batch.
  feed = Prefetcher(data_iter, depth=t.prefetch,
                    transfer=lambda host_batch: device_batch(host_batch, shardings))
  compiled, record, step, pending = None, {}, start, None
  t_last = time.perf_counter()

  def finish(p):
    """Reads back step ``p``'s metrics, stops on non-finite values, logs the step."""
    nonlocal record, t_last
    metrics = {k: float(v) for k, v in jax.device_get(p["metrics"]).items()}
    now = time.perf_counter()
    step_s, t_last = now - t_last, now
    bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(metrics[k])]
    if bad:
      writer.write({"event": "nonfinite", "step": p["step"], **metrics})
      raise NonFiniteError(
          f"step {p['step']}: non-finite {' and '.join(bad)} (loss={metrics['loss']}, "
          f"grad_norm={metrics['grad_norm']}, param_norm={metrics['param_norm']}, "
          f"lr={metrics['lr']}); stopped without saving this step; last checkpoint: "
          + (f"step {last_saved}" if last_saved is not None else "none"))
    record = dict(metrics, step=p["step"], step_time=step_s, data_time=p["data_s"],
                  tokens_per_s=tokens_per_step / step_s,
                  tokens_seen=p["step"] * tokens_per_step, batch_fp=p["fp"],
                  tflops_per_device=p["flops"] / (step_s * jax.device_count()) / 1e12)
    if peak:
      record["mfu"] = p["flops"] / (step_s * peak * jax.device_count())
      record["mfu_row"] = record["tokens_per_s"] * flops_per_tok / (peak * jax.device_count())
    mfu = f"{record['mfu']:.1%}" if peak else "n/a"
    writer.write(record)
    writer.scalars(p["step"], record, flush=False)
    pbar.update(1)
    pbar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                     mfu=mfu)
    if p["step"] % t.log_every == 0 or p["step"] in (start + 1, t.steps):
      note(f"step {p['step']:>6}/{t.steps} | loss {metrics['loss']:.4f} | lr "
           f"{metrics['lr']:.2e} | grad {metrics['grad_norm']:.3f} | "
           f"{record['tokens_per_s']:,.0f} tok/s | MFU {mfu} | {step_s:.3f} s/step")
      writer.scalars(p["step"], {})   # flush

  # ---- the loop.
  try:
    with _Preemption() as preemption:
      for step in range(start + 1, t.steps + 1):
        wait0 = feed.wait_seconds
        host_batch, batch = next(feed)
        data_s = feed.wait_seconds - wait0
        if compiled is None:
          tc = time.perf_counter()
          compiled = train_step.lower(state, rest, batch).compile()
          note(f"compiled the train step in {time.perf_counter() - tc:.1f}s")
          t_last = time.perf_counter() - data_s
        state, metrics = compiled(state, rest, batch)   # dispatched; runs while the host goes on
        # Useful FLOPs of the whole step from this process's rows (host numpy, while the device
        # runs); with several row groups the other groups' rows are assumed alike.
        current = {"step": step, "metrics": metrics, "data_s": data_s,
                   "fp": batch_fingerprint(host_batch),
                   "flops": step_flops(host_batch.get("segment_ids"), rows) * (t.batch_size / rows)}
        if pending is not None:
          finish(pending)
        pending = current
        ckpt.check()   # a failed asynchronous save stops the run now, not at the next save

        stop = preemption.requested or ckpt.manager.reached_preemption(step)
        if step % config.checkpoint.every == 0 or step == t.steps or stop:
          finish(pending)        # a step is checked finite before it is saved
          pending = None
          ckpt.save(step, state, feed.frozen(), config_json,
                    meta={"tokens_seen": step * tokens_per_step, "loss": record["loss"]})
          last_saved = step
          if kill_step == str(step):  # test-only crash (see KILL_ENV)
            if kill_mode != "during":
              ckpt.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        if stop:
          note(f"preempted at step {step}: checkpoint saved; run the same command to continue")
          break
      if pending is not None:
        finish(pending)
  finally:
    feed.close()
    pbar.close()
    try:   # waits for the last asynchronous save; a failure already propagating wins
      ckpt.close(quiet=sys.exc_info()[0] is not None)
    finally:
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


_parse_flags = cli_errors.config_flags_parser("longgen_jax.train")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    _fail("--workdir is required")
  try:
    config = _CONFIG.value
    if config is None:
      _fail("--config is required (e.g. --config=configs/tiny_cpu.py)")
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
    train(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
          allow_fresh_start=_ALLOW_FRESH_START.value)
  except NonFiniteError as e:
    print(f"longgen_jax.train: error: {e}", file=sys.stderr)
    sys.exit(1)
  except (ConfigError, DataError, HFConversionError, ckpt_lib.CheckpointError) as e:
    _fail(str(e))


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
