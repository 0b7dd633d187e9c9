"""The trainer's data guarantees and one-line failures around a workdir (CPU, subprocesses).

Covers: an edited data position is caught like a garbled array; no silent start from scratch while
every checkpoint is set aside; one trainer per workdir; a resumed run refuses a config that changes
what is trained and notes a harmless change; a full disk (a writer failing with ENOSPC) stops the
run at the failed save with one line, keeps the last good checkpoint, and the next run continues
from it with each step once in ``metrics.jsonl``; bad input that used to be a traceback.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from test_train import ROOT, SMALL, TINY, finish, records, saved_steps, start, steps_of

# The trainer's entry point behind a writer that fails with "No space left on device" for files
# of checkpoint steps >= FAIL_STEP (META_ONLY: only the meta item, written in the background).
FAILING_WRITER = r"""
import errno, os, re, sys
from etils import epath
fail_step, meta_only = int(os.environ["FAIL_STEP"]), os.environ.get("META_ONLY") == "1"
cls = type(epath.Path("/"))
write_text = cls.write_text
def failing(self, *a, **k):
  m = re.search(r"/checkpoints/(\d+)", str(self))
  if m and int(m.group(1)) >= fail_step and (not meta_only or "/meta" in str(self)):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
  return write_text(self, *a, **k)
cls.write_text = failing
from longgen_jax import train
sys.argv[0] = "longgen_jax.train"
train.run()
"""


def one_error_line(err):
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("longgen_jax.train: error: "), err
  return lines[0]


@pytest.fixture(scope="module")
def run4(tmp_path_factory, env):
  """A finished 4-step run (checkpoints 2 and 4); tests copy it."""
  wd = str(tmp_path_factory.mktemp("run4") / "wd")
  finish(start(env, wd, "--config.train.steps=4"))
  assert saved_steps(wd) == [2, 4]
  return wd


def copy_of(run, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(run, wd)
  return wd


def test_edited_data_position_is_caught(tmp_path, env, run4):
  wd = copy_of(run4, tmp_path)
  path = os.path.join(wd, "checkpoints", "4", "data", "process_0-of-1.json")
  with open(path, encoding="utf-8") as f:
    state = json.load(f)
  state["counter"] += 4      # valid JSON, another position in the stream
  with open(path, "w", encoding="utf-8") as f:
    json.dump(state, f)
  out, err = finish(start(env, wd, "--config.train.steps=4"))
  assert "checkpoint step 4" in err and "stored data position was altered" in err, err
  assert "resumed from checkpoint step 2" in out
  assert glob.glob(os.path.join(wd, "checkpoints_corrupt", "4-*"))
  assert [r["step"] for r in steps_of(wd)] == [1, 2, 3, 4]   # redone steps not duplicated
  redone = [json.loads(l) for l in open(os.path.join(wd, "metrics.redone.jsonl"))]
  assert [r["step"] for r in redone if "event" not in r] == [3, 4]


def test_no_silent_fresh_start_after_every_checkpoint_was_set_aside(tmp_path, env, run4):
  wd = copy_of(run4, tmp_path)
  corrupt = os.path.join(wd, "checkpoints_corrupt")
  os.makedirs(corrupt)
  for step in ("2", "4"):
    shutil.move(os.path.join(wd, "checkpoints", step), os.path.join(corrupt, f"{step}-1"))
  _, err = finish(start(env, wd, "--config.train.steps=4"), expect=2)
  line = one_error_line(err)
  assert "refusing to start this run from scratch" in line and "--allow_fresh_start" in line
  assert not saved_steps(wd)


def test_second_trainer_on_a_workdir_is_refused(tmp_path, env):
  from longgen_jax.training.workdir_lock import WorkdirLock
  wd = str(tmp_path / "wd")
  os.makedirs(wd)
  lock = WorkdirLock(wd)
  try:
    _, err = finish(start(env, wd, "--config.train.steps=2"), expect=2)
  finally:
    lock.release()
  line = one_error_line(err)
  assert "is in use by another trainer" in line and f"pid {os.getpid()}" in line
  assert not os.path.exists(os.path.join(wd, "metrics.jsonl"))


def test_resume_refuses_a_changed_config(tmp_path, env, run4):
  wd = copy_of(run4, tmp_path)
  _, err = finish(start(env, wd, "--config.train.steps=4", "--config.seed=1"), expect=2)
  line = one_error_line(err)
  assert "seed 0 -> 1" in line and "--allow_config_change" in line
  # A harmless change (the step count) continues with a note.
  out, _ = finish(start(env, wd, "--config.train.steps=5", "--config.train.log_every=2"))
  assert "config change on resume: train.steps 4 -> 5" in out
  assert "resumed from checkpoint step 4" in out


@pytest.mark.parametrize("meta_only", [False, True], ids=["in_save", "in_background"])
def test_full_disk_stops_at_the_failed_save_with_one_line(tmp_path, env, meta_only):
  wd = str(tmp_path / "wd")
  cmd = [sys.executable, "-c", FAILING_WRITER, f"--config={TINY}", f"--workdir={wd}", *SMALL,
         "--config.train.steps=8"]
  e = dict(env, FAIL_STEP="4", META_ONLY="1" if meta_only else "0")
  proc = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr
  line = one_error_line(proc.stderr)
  assert "saving checkpoint step 4 failed" in line and "No space left on device" in line, line
  assert "last good checkpoint: step 2" in line
  assert saved_steps(wd) == [2]
  assert max(r["step"] for r in steps_of(wd)) <= 5   # stopped at the failed save, not later
  with open(os.path.join(wd, "checkpoint_errors.log"), encoding="utf-8") as f:
    assert "No space left on device" in f.read()     # orbax's tracebacks kept, off the console
  if meta_only:
    return
  out, _ = finish(start(env, wd, "--config.train.steps=4"))   # the disk has room again
  assert "resumed from checkpoint step 2" in out
  assert saved_steps(wd) == [2, 4]
  assert [r["step"] for r in steps_of(wd)] == [1, 2, 3, 4]
  assert [r.get("event") for r in records(wd) if "event" in r] == ["start", "start", "end"]


BAD_INPUT = [
    ([f"--config={TINY}:steps=abc"], "config argument steps='abc' is not an int"),
    (["--config.model.vocab_size=100"],
     "tokenizer {'path': '', 'type': 'byte'} has 259 ids but model.vocab_size is 100: set "
     "--config.model.vocab_size=264"),
    (["--config.model.attention_backend=fast"],
     "model.attention_backend: unknown attention backend 'fast'"),
    (["--config.mesh.sequence=16", "--config.train.seq_len=128"],
     "mesh.sequence=16: sink_window layer sink_window:16:32@16: sink 16 exceeds the sequence "
     "chunk length 4"),
    (["--config.init_from=/nonexistent"], "init_from='/nonexistent' does not exist"),
]


def test_bad_input_is_one_line(tmp_path, env):
  procs = []
  for i, (flags, _) in enumerate(BAD_INPUT):
    config = [f for f in flags if f.startswith("--config=")]
    cmd = [sys.executable, "-m", "longgen_jax.train", f"--workdir={tmp_path / str(i)}",
           *(config or [f"--config={TINY}"]), *SMALL, "--config.train.steps=2",
           *(f for f in flags if not f.startswith("--config="))]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  open(tmp_path / "a_file", "w").close()
  procs.append(start(env, str(tmp_path / "a_file" / "wd"), "--config.train.steps=2"))
  for proc, msg in zip(procs, [m for _, m in BAD_INPUT] + ["cannot create workdir"]):
    _, err = finish(proc, expect=2)
    assert msg in one_error_line(err), (msg, err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_workdir_is_one_line(tmp_path, env):
  wd = tmp_path / "ro"
  wd.mkdir()
  wd.chmod(0o555)
  try:
    _, err = finish(start(env, str(wd), "--config.train.steps=2"), expect=2)
  finally:
    wd.chmod(0o755)
  assert "is not writable" in one_error_line(err)


def test_config_change_classification():
  from longgen_jax.training import resume_guard as rg
  assert all(rg.is_breaking(k) for k in ("seed", "data.sources.0.path", "model.d_model",
                                         "train.batch_size", "train.seq_len", "train.lr"))
  assert not any(rg.is_breaking(k) for k in ("train.steps", "train.log_every", "init_from",
                                             "checkpoint.every", "mesh.fsdp", "model.remat",
                                             "train.prefetch_depth"))
  assert rg.flatten({"a": [{"b": 1}], "c": {}}) == {"a.0.b": 1, "c": {}}


def test_metrics_set_aside_keeps_every_line(tmp_path):
  from longgen_jax.training.metrics import set_aside_after
  lines = [{"event": "start", "step": 0}, {"step": 1}, {"step": 2}, {"step": 3},
           {"event": "end", "step": 3}]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "lo')  # torn
  assert set_aside_after(str(tmp_path), 2) == 3
  assert [json.loads(l) for l in path.read_text().splitlines()] == lines[:3]
  redone = (tmp_path / "metrics.redone.jsonl").read_text().splitlines()
  assert [json.loads(l) for l in redone[:2]] == lines[3:] and redone[2] == '{"step": 4, "lo'
  assert set_aside_after(str(tmp_path), 2) == 0


def test_prepare_then_train_from_the_command_line(tmp_path, env):
  """README: ``data.prepare`` shards -> ``configs/tiny_cpu.py:data=SHARDS`` (tokenizer and vocab
  from the shards' index.json), and a Hugging Face tokenizer path settable by an override."""
  shards, wd = str(tmp_path / "shards"), str(tmp_path / "wd")
  subprocess.run([sys.executable, "-m", "longgen_jax.data.prepare",
                  "--input=longgen_jax/data/corpus/*.txt", "--format=text", f"--out={shards}",
                  "--no_progress"], cwd=ROOT, env=env, check=True, capture_output=True)
  out, _ = finish(start(env, wd, "--config.train.steps=2", config=f"{TINY}:data={shards}"))
  assert "done: step 2" in out
  with open(os.path.join(wd, "train_config.json"), encoding="utf-8") as f:
    data = json.load(f)["data"]
  assert data["sources"][0]["type"] == "arrayrecord" and data["sources"][0]["path"] == shards
  # data.tokenizer.path is a string field: the override is accepted (and then validated).
  _, err = finish(start(env, str(tmp_path / "hf"), "--config.data.tokenizer.type=hf",
                        f"--config.data.tokenizer.path={tmp_path / 'no_tok'}"), expect=2)
  assert "no_tok" in one_error_line(err)


def test_corrupt_checkpoint_reason_is_the_cause_not_a_bound_method():
  from longgen_jax.training.checkpoint import failure_reason
  try:
    try:
      raise ValueError('OUT_OF_RANGE: Error reading "w/0.0": byte range [2, 9) is not valid')
    except ValueError as inner:
      raise Exception("Encountered error while reading array index: (slice(0, 8, 1),). See full "
                      "TensorStore details: <bound method pybind11_detail.spec of "
                      "TensorStore({\n 'driver': 'zarr'}>") from inner
  except Exception as e:  # noqa: BLE001
    reason = failure_reason(e)
  assert reason.startswith("ValueError: OUT_OF_RANGE") and "bound method" not in reason


def test_help_works_on_every_absl_cli(env):
  """``--help`` prints the usage and exits 0 (the HF export used to reject the flag)."""
  cmds = {"longgen_jax.train": "--workdir", "longgen_jax.plan": "--mesh",
          "longgen_jax.hf.export": "--checkpoint"}
  procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for m in cmds}
  for module, flag in cmds.items():
    out, err = procs[module].communicate(timeout=300)
    assert procs[module].returncode == 0 and flag in out, (module, err)
