"""End-to-end trainer tests on CPU: the real entry point in subprocesses, a shrunk tiny config.

Covers: the loss falls; SIGKILL mid-run + restart ends bit-identical to an uninterrupted run with
no batch repeated or skipped; a garbled newest checkpoint is reported and the previous one used;
a non-finite step stops the run naming the step and saves nothing at or after it; invalid configs
fail fast with one error line.
"""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_cpu.py")
# The tiny config shrunk further: ~0.1M parameters, 4 x 64 tokens per step, save every 2 steps.
# A constant schedule keeps the compiled step independent of train.steps, so runs of different
# lengths share the persistent compilation cache.
SMALL = ["--config.model.d_model=64", "--config.model.ffn_dim=128", "--config.train.batch_size=4",
         "--config.train.seq_len=64", "--config.train.loss_chunk=32",
         "--config.train.schedule=constant", "--config.train.warmup_steps=2",
         "--config.train.log_every=1",
         "--config.checkpoint.every=2", "--config.checkpoint.keep=10"]


def start(env, workdir, *overrides, kill=None, config=TINY):
  cmd = [sys.executable, "-m", "longgen_jax.train", f"--config={config}", f"--workdir={workdir}",
         *SMALL, *overrides]
  e = dict(env, LONGGEN_TEST_SIGKILL_AT_CHECKPOINT=kill) if kill else env
  return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(proc, expect=0):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == expect, f"exit {proc.returncode}, wanted {expect}\n{out}\n{err}"
  return out, err


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def steps_of(workdir):
  return [r for r in records(workdir) if "event" not in r]


def saved_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def restore_final(workdir, step, overrides=()):
  """Params (as numpy) and meta of ``step`` in ``workdir``, restored with the trainer's code."""
  from longgen_jax import train as train_lib
  from longgen_jax.training import checkpoint as ckpt_lib
  from longgen_jax.training import config_utils, optim
  config = load_tiny(overrides)
  tx = optim.make_optimizer(config.train, optim.make_schedule(config.train))
  _, abstract, _ = train_lib.abstract_state(config_utils.validate_config(config), tx)
  reader = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    state, meta = reader.restore(step, ckpt_lib.abstract_like(abstract), params_only=True)
  finally:
    reader.close()
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])], meta


def load_tiny(overrides=()):
  """The tiny config with SMALL (and ``overrides``) applied, as the CLI would."""
  spec = importlib.util.spec_from_file_location("tiny_cpu", TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for flag in [*SMALL, *overrides]:
    path, value = flag[len("--config."):].split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value if isinstance(node[leaf], str) else json.loads(value))
  return config


def test_loss_falls(tmp_path):
  """In-process run of the shrunk tiny config: 30 steps take the loss well below its start."""
  from longgen_jax.train import train
  wd = str(tmp_path)
  last = train(load_tiny(["--config.train.steps=30", "--config.checkpoint.every=30",
                           "--config.train.peak_tflops=1"]), wd)   # a made-up peak: MFU shown
  losses = [r["loss"] for r in steps_of(wd)]
  assert len(losses) == 30 and last["step"] == 30
  # Packed rows: MFU over same-document pairs, never above the whole-row figure.
  assert all(0 < r["mfu"] <= r["mfu_row"] * (1 + 1e-9) and r["tflops_per_device"] > 0
             for r in steps_of(wd))
  assert any(r["mfu"] < r["mfu_row"] * 0.999 for r in steps_of(wd))
  assert losses[0] > 5.0, losses[0]                        # ~ln(264) at init
  assert np.mean(losses[-5:]) < losses[0] - 1.5, losses    # clearly learning
  assert saved_steps(wd) == [30]
  assert os.listdir(os.path.join(wd, "tb"))


def test_init_from_orbax_run_and_hugging_face_dir(tmp_path, env):
  """Resume order step 2: ``init_from`` takes the weights only (step, optimizer and data start
  afresh), from a trainer run or from a Hugging Face directory (longgen_jax.hf.import_hf)."""
  from flax import nnx
  from longgen_jax.hf.export import export_params
  from longgen_jax.model.params import to_canonical
  from longgen_jax.train import abstract_state, init_params
  from longgen_jax.training import config_utils, optim
  src, from_run, from_hf = (str(tmp_path / n) for n in ("src", "from_run", "from_hf"))
  finish(start(env, src, "--config.train.steps=8"))
  ref = steps_of(src)
  out, _ = finish(start(env, from_run, "--config.train.steps=1", f"--config.init_from={src}"))
  assert "init_from: parameters of step 8" in out
  (rec,) = steps_of(from_run)
  assert rec["batch_fp"] == ref[0]["batch_fp"] and rec["loss"] < ref[0]["loss"] - 0.5

  # An HF export of the seed-0 initialisation reproduces the from-scratch first step.
  config = load_tiny()
  model_cfg = config_utils.validate_config(config)
  tx = optim.make_optimizer(config.train, optim.make_schedule(config.train))
  graphdef, _, rest = abstract_state(model_cfg, tx)
  model = nnx.merge(graphdef, init_params(model_cfg, config.seed), rest)
  export_params(jax.device_get(to_canonical(model)), model_cfg, str(tmp_path / "hf"))
  out, _ = finish(start(env, from_hf, "--config.train.steps=1",
                        f"--config.init_from={tmp_path / 'hf'}"))
  assert "init_from: Hugging Face weights" in out
  (rec,) = steps_of(from_hf)
  assert rec["loss"] == pytest.approx(ref[0]["loss"], rel=1e-6)


def test_sigkill_and_restart_is_bit_exact(tmp_path, env):
  """Uninterrupted 8 steps == killed after step 4's checkpoint, killed again during step 6's
  save, restarted: same final parameters bit for bit, and every step saw the same batch."""
  a, b = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
  steps = "--config.train.steps=8"
  finish(start(env, a, steps))
  finish(start(env, b, steps, kill="4"), expect=-9)   # SIGKILL once step 4's ckpt is committed
  assert saved_steps(b) == [2, 4]
  finish(start(env, b, steps, kill="6:during"), expect=-9)   # SIGKILL while step 6 is written
  out, _ = finish(start(env, b, steps))
  assert "resumed from checkpoint step" in out

  ref = {r["step"]: r for r in steps_of(a)}
  assert sorted(ref) == list(range(1, 9))
  got = steps_of(b)
  assert {r["step"] for r in got} == set(range(1, 9))
  for r in got:   # a step logged twice (run killed after logging it) saw the same batch twice
    assert (r["batch_fp"], r["loss"]) == (ref[r["step"]]["batch_fp"], ref[r["step"]]["loss"])
  # The last run resumed exactly where the newest committed checkpoint was and ran to the end.
  starts = [r for r in records(b) if r.get("event") == "start"]
  assert [s["step"] for s in starts][:2] == [0, 4] and starts[2]["step"] in (4, 6)
  last_run = [r["step"] for r in records(b)[records(b).index(starts[2]):] if "event" not in r]
  assert last_run == list(range(starts[2]["step"] + 1, 9))
  assert len({ref[s]["batch_fp"] for s in ref}) == 8    # and no two steps share a batch

  params_a, meta_a = restore_final(a, 8)
  params_b, meta_b = restore_final(b, 8)
  for x, y in zip(params_a, params_b, strict=True):
    assert x.dtype == y.dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8))
  assert meta_a["checksums"] == meta_b["checksums"]     # optimizer state too, bit for bit


def test_garbled_newest_checkpoint_falls_back(tmp_path, env):
  wd = str(tmp_path)
  finish(start(env, wd, "--config.train.steps=4"))
  assert saved_steps(wd) == [2, 4]
  first = {r["step"]: r["batch_fp"] for r in steps_of(wd)}
  # Garble bytes in the middle of step 4's largest parameter file: orbax alone would restore it.
  files = [f for f in glob.glob(os.path.join(wd, "checkpoints", "4", "params", "**", "*"),
                                recursive=True) if os.path.isfile(f)]
  victim = max(files, key=os.path.getsize)
  data = bytearray(open(victim, "rb").read())
  mid = len(data) // 2
  data[mid:mid + 32] = bytes(x ^ 0xA5 for x in data[mid:mid + 32])
  with open(victim, "wb") as f:
    f.write(data)

  out, err = finish(start(env, wd, "--config.train.steps=6"))
  assert "checkpoint step 4" in err and "unusable" in err, err
  assert "resumed from checkpoint step 2" in out
  assert glob.glob(os.path.join(wd, "checkpoints_corrupt", "4-*"))
  assert saved_steps(wd) == [2, 4, 6]
  # Steps 3 and 4 of the first run were redone: metrics.jsonl holds every step once.
  assert [r["step"] for r in steps_of(wd)] == [1, 2, 3, 4, 5, 6]
  second = steps_of(wd)[2:]
  assert [r["batch_fp"] for r in second[:2]] == [first[3], first[4]]   # data resumed at step 2


def test_nonfinite_loss_stops_and_saves_nothing_after(tmp_path, env):
  wd = str(tmp_path)
  _, err = finish(start(env, wd, "--config.train.steps=6",
                        "--config.train.debug_inf_lr_at_step=3"), expect=1)
  last_line = err.strip().splitlines()[-1]
  assert last_line.startswith("longgen_jax.train: error: step 3: non-finite"), err
  assert "last checkpoint: step 2" in last_line
  assert saved_steps(wd) == [2]
  assert not glob.glob(os.path.join(wd, "checkpoints", "*tmp*"))
  events = [r for r in records(wd) if r.get("event") == "nonfinite"]
  assert [e["step"] for e in events] == [3]


INVALID = [
    (["--config.model.sparse=sink_window:16:40@16"], "window 40 is not a multiple of the block 16"),
    (["--config.model.n_full=7"], "n_full 7 is outside [0, n_layers=4]"),
    (["--config.model.layout=indices", "--config.model.full_layers=(1,9)"],
     "full_layers index 9 is out of range"),
    (["--config.train.seq_len=72"], "72 is not a multiple of"),
    (["--config.train.grad_accum=3"], "batch_size 4 is not divisible by train.grad_accum 3"),
    (["--config.train.loss_chunk=48"], "not a multiple of train.loss_chunk 48"),
    (["--config.train.schedule=linear"], "train.schedule 'linear' is not one of"),
]


def test_invalid_configs_fail_fast_with_one_line(tmp_path, env):
  procs = [start(env, str(tmp_path / f"bad{i}"), *flags) for i, (flags, _) in enumerate(INVALID)]
  procs.append(start(env, str(tmp_path / "badarg"), config=TINY + ":fulll"))
  expected = [msg for _, msg in INVALID] + ["unknown config argument 'fulll'"]
  for proc, msg in zip(procs, expected):
    _, err = finish(proc, expect=2)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("longgen_jax.train: error:"), err
    assert msg in lines[0], (msg, lines[0])
  for i in range(len(INVALID)):     # failed before writing anything
    assert not os.path.exists(tmp_path / f"bad{i}" / "checkpoints")
