"""The real CLI trains sharded: 8 fake CPU devices, 2 fsdp x 4 sequence, equals one device.

Two subprocess runs of the shrunk tiny config (d_model 64, 4 x 128 tokens, grad_accum 2, so the
strided micro-batch split and the zigzag sequence layout are both exercised): one on a
``fsdp=2, sequence=4`` mesh of 8 devices (4 steps), one on a single device (6 steps). Per-step
loss / gradient norm / parameter norm, the batches seen and the step-4 parameters agree within
fp32 tolerance. Then the 8-device run's workdir is continued on ONE device to step 6: it resumes
from the sharded checkpoint and reproduces the one-device run's steps 5-6 (same batches).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_cpu.py")
SMALL = {"model.d_model": 64, "model.ffn_dim": 128, "train.batch_size": 4,
         "train.grad_accum": 2, "train.seq_len": 128, "train.loss_chunk": 64,
         "train.schedule": "constant", "train.warmup_steps": 2, "train.log_every": 1,
         "checkpoint.every": 2, "checkpoint.keep": 10}
MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.sequence=4",
        "--config.mesh.tensor=1"]


def start(env, workdir, *overrides, devices=1):
  cmd = [sys.executable, "-m", "longgen_jax.train", f"--config={TINY}", f"--workdir={workdir}",
         *(f"--config.{k}={v}" for k, v in SMALL.items()), *overrides]
  e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}") \
      if devices > 1 else env
  return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(proc):
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
  return out


def steps_of(workdir):
  import json  # pylint: disable=import-outside-toplevel
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {r["step"]: r for r in map(json.loads, f) if "event" not in r}


def params_at(workdir, step):
  """Step ``step``'s parameters (numpy), restored on this process's default device."""
  from longgen_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import config_utils, optim  # pylint: disable=import-outside-toplevel
  config = config_utils.load_sibling_config(TINY, "tiny_cpu.py").get_config()
  for k, v in SMALL.items():
    section, leaf = k.split(".")
    config[section][leaf] = v
  tx = optim.make_optimizer(config.train, optim.make_schedule(config.train))
  _, abstract, _ = train_lib.abstract_state(config_utils.validate_config(config), tx)
  reader = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    state, _ = reader.restore(step, ckpt_lib.abstract_like(abstract), params_only=True)
  finally:
    reader.close()
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def _close(a, b, what):
  for k in ("loss", "grad_norm", "param_norm", "target_tokens"):
    np.testing.assert_allclose(a[k], b[k], rtol=2e-5, err_msg=f"{what}: {k}")
  assert a["batch_fp"] == b["batch_fp"], what


def test_sharded_cli_matches_one_device_and_resumes_on_one(tmp_path, env):
  wd8, wd1 = str(tmp_path / "mesh8"), str(tmp_path / "one")
  p8 = start(env, wd8, "--config.train.steps=4", *MESH, devices=8)
  p1 = start(env, wd1, "--config.train.steps=6")
  out8, _ = finish(p8), finish(p1)
  assert "'fsdp': 2" in out8 and "'sequence': 4" in out8, out8   # really ran on the mesh

  s8, s1 = steps_of(wd8), steps_of(wd1)
  assert sorted(s8) == [1, 2, 3, 4] and sorted(s1) == [1, 2, 3, 4, 5, 6]
  for step in s8:
    _close(s8[step], s1[step], f"8-device step {step}")
  for a, b in zip(params_at(wd8, 4), params_at(wd1, 4)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  # The sharded checkpoint continues on one device (default mesh) with the same data position.
  out = finish(start(env, wd8, "--config.train.steps=6"))
  assert "resumed from checkpoint step 4" in out, out
  s8 = steps_of(wd8)
  assert sorted(s8) == [1, 2, 3, 4, 5, 6]
  for step in (5, 6):
    _close(s8[step], s1[step], f"resumed step {step}")
  for a, b in zip(params_at(wd8, 6), params_at(wd1, 6)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
