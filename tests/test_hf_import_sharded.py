"""The import CLI streams an HF Llama straight into its shards (8 fake CPU devices).

``python -m longgen_jax.hf.import_hf --mesh=fsdp=8`` on a tiny random HF Llama, run in-process
and as two ``jax.distributed`` processes of 4 devices each: every safetensors read of a sharded
tensor covers one shard only (only the tiny replicated norms are read whole), the arrays handed
to orbax carry the trainer's shardings, and the checkpoint restores -- on 8 devices and in a
fresh one-device process -- bitwise to a plain one-device import.

This file is also the worker of its subprocesses: ``python tests/test_hf_import_sharded.py JSON``.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
N_LAYERS, WIDTH = 2, 64
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "model.norm.weight")


# =============================================================================== worker side
def _spy_reads(log: list, setattr_fn=setattr) -> None:
  """Records ``(tensor, elements read, elements of the tensor)`` for every safetensors read."""
  from longgen_jax.hf.shards import HFShards  # pylint: disable=import-outside-toplevel
  real = HFShards.read

  def read(self, name, index=None):
    out = real(self, name, index)
    log.append((name, int(out.size), int(np.prod(self.shape(name)))))
    return out

  setattr_fn(HFShards, "read", read)


def _worker(args):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args['devices']}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  import jax  # pylint: disable=import-outside-toplevel
  if args["mode"] == "import":   # the CLI itself, as one process of a jax.distributed job
    from longgen_jax.hf import import_cli  # pylint: disable=import-outside-toplevel
    reads: list = []
    _spy_reads(reads)
    import_cli.run(["import_hf", *args["argv"], f"--coordinator_address=localhost:{args['port']}",
                    f"--num_processes={args['nproc']}", f"--process_id={args['pid']}"])
    assert jax.process_count() == args["nproc"] and jax.device_count() == 8
    with open(os.path.join(args["log_dir"], f"reads{args['pid']}.json"), "w") as f:
      json.dump(reads, f)
  else:   # restore both checkpoints in a fresh process with ONE device and compare bitwise
    from longgen_jax.hf import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
    assert jax.device_count() == 1
    got, _ = ckpt_lib.restore_params(args["ckpt"])
    ref, _ = ckpt_lib.restore_params(args["ref"])
    same = [bool(np.array_equal(np.asarray(a), np.asarray(b)))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref))]
    print("RESULT " + json.dumps({"n": len(same), "equal": all(same)}))


# =============================================================================== test side
import pytest  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")

from longgen_jax.parallel.testing import multidevice  # noqa: E402


def _env(n_devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LONGGEN_PARALLEL_CHILD")}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """``{"hf": tiny HF dir, "ref": its one-device import, "root": a scratch dir}``."""
  from longgen_jax.hf import import_hf  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf.tiny import save_tiny_llama  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("import_sharded")
  hf, ref = str(root / "hf"), str(root / "ref")
  save_tiny_llama(hf, "llama2", seed=7, hidden_size=WIDTH, n_layers=N_LAYERS)
  import_hf.import_checkpoint(hf, ref)   # library default: everything on one device
  return {"hf": hf, "ref": ref, "root": root}


def _leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _check_reads(reads, n_shards=8):
  """Sharded tensors: one read per shard, each 1/n_shards of the tensor; norms: whole."""
  whole = {name for name, size, total in reads if size == total}
  assert whole and all(name.endswith(NORMS) for name in whole), sorted(whole)
  for name, size, total in reads:
    if not name.endswith(NORMS):
      assert size * n_shards == total, (name, size, total)


def _restore_on_one_device(ckpt, ref):
  args = {"mode": "restore", "devices": 1, "ckpt": ckpt, "ref": ref}
  proc = subprocess.run([sys.executable, HERE, json.dumps(args)], env=_env(1), text=True,
                        capture_output=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  result = json.loads(line[len("RESULT "):])
  assert result == {"n": 3 + 9 * N_LAYERS, "equal": True}, result


@multidevice(8)
def test_cli_streams_into_fsdp8_shards(sources, tmp_path, monkeypatch, capsys):
  import jax  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf import import_cli, import_hf  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf import shardings  # pylint: disable=import-outside-toplevel
  from longgen_jax.parallel import make_mesh  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == 8
  reads, saved = [], []
  _spy_reads(reads, monkeypatch.setattr)
  real_save = ckpt_lib.save_params
  monkeypatch.setattr(ckpt_lib, "save_params",
                      lambda out, params: (saved.append(params), real_save(out, params)))
  out = str(tmp_path / "ckpt")
  import_cli.run(["import_hf", f"--hf_dir={sources['hf']}", f"--out={out}", "--mesh=fsdp=8",
                  "--progress_secs=0"])
  n = 3 + 9 * N_LAYERS
  stdout = capsys.readouterr().out
  assert f"tensor 1/{n} model.embed_tokens.weight" in stdout and f"tensor {n}/{n} " in stdout
  assert "MiB" in stdout and "imported" in stdout.splitlines()[-1]
  _check_reads(reads)

  # orbax got arrays in the trainer's shardings (fsdp=8 over the model width)
  mesh = make_mesh("fsdp=8")
  want = shardings.canonical_shardings(import_hf.hf_model_config(sources["hf"]), mesh)
  (params,) = saved
  for got, sh in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    assert got.sharding == sh, (got.shape, got.sharding, sh)
  assert {s.data.shape for s in params["embed"].addressable_shards} == {(300, WIDTH // 8)}
  assert {s.data.shape for s in params["layers"][0]["wq"].addressable_shards} == \
      {(WIDTH // 8, 4, WIDTH // 4)}

  # restores bitwise like the one-device import: sharded on 8 devices, and on 1 device
  sharded, _ = ckpt_lib.restore_params(out, sharding_fn=shardings.sharding_fn(want))
  assert sharded["layers"][1]["w_down"].sharding == want["layers"][1]["w_down"]
  ref, _ = ckpt_lib.restore_params(sources["ref"])
  for a, b in zip(_leaves(sharded), _leaves(ref)):
    np.testing.assert_array_equal(a, b)
  assert ckpt_lib.read_meta(out)["tensors"] == ckpt_lib.read_meta(sources["ref"])["tensors"]
  _restore_on_one_device(out, sources["ref"])


@multidevice(8)
def test_cli_two_processes_write_one_checkpoint(sources):
  """2 processes x 4 devices under jax.distributed: each reads only its own shards."""
  root, port = str(sources["root"]), _free_port()
  out = os.path.join(root, "two_proc")
  argv = [f"--hf_dir={sources['hf']}", f"--out={out}", "--mesh=fsdp=-1"]
  procs = []
  for pid in range(2):
    args = {"mode": "import", "devices": 4, "nproc": 2, "pid": pid, "port": port, "argv": argv,
            "log_dir": root}
    procs.append(subprocess.Popen([sys.executable, HERE, json.dumps(args)], env=_env(4),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, "\n".join(l for l in log.splitlines() if "Gloo" not in l)[-6000:]
  assert "mesh {'data': 1, 'fsdp': 8" in logs[0] and "imported" in logs[0]
  assert "imported" not in logs[1]   # process 0 reports
  for pid in range(2):
    with open(os.path.join(root, f"reads{pid}.json")) as f:
      reads = json.load(f)
    _check_reads(reads)
    # every sharded tensor: 4 reads here (this process's 4 of the 8 shards), never all 8
    names = [name for name, _, _ in reads if not name.endswith(NORMS)]
    assert names and all(names.count(n) == 4 for n in set(names))
  _restore_on_one_device(out, sources["ref"])


if __name__ == "__main__":
  _worker(json.loads(sys.argv[1]))
