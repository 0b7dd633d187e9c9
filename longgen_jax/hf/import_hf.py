"""Hugging Face Llama (safetensors) -> canonical parameters -> longgen checkpoint.

  python -m longgen_jax.hf.import_hf --hf_dir=DIR --out=CKPT [--mesh=fsdp=-1 --progress_secs=10]
      [--config=configs/x.py] [--layout=longgen --sparse=sink_window:64:4096 --n_full=N]
      [--rope_theta=5e6 --rope_scaling=none --max_seq_len=131072 --param_dtype=bfloat16]
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]   # multi-host

Tensors are streamed one at a time: ``safe_open`` + ``get_slice`` read only the part each device
holds, and ``jax.make_array_from_callback`` places it straight into its shard (the CLI: the
trainer's sharding of that parameter on ``--mesh``, all devices on ``fsdp`` by default; the
library default: one device), so no host ever holds more than one tensor's local shards, and
orbax writes the sharded arrays (every process its own shards under ``jax.distributed``). The
LongGen layout and the new RoPE come from our config (they do not change any weight). The
tokenizer files are copied unchanged into ``CKPT/tokenizer``. Pickle files are never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np

from longgen_jax import ckpt
from longgen_jax.hf import checkpoint as ckpt_lib
from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.hf_config import (check_compatible, model_config_from_hf, read_hf_config)
from longgen_jax.hf.names import TensorPlan, hf_read_index, tensor_plan
from longgen_jax.hf.shards import FLOAT_DTYPES, HFShards
from longgen_jax.hf.tokenizer_files import copy_tokenizer, tokenizer_files
from longgen_jax.model.config import ModelConfig

ShardingFn = Callable[[tuple, tuple[int, ...]], jax.sharding.Sharding]
ProgressFn = Callable[[str], None]
# Tensors a Llama checkpoint may carry that hold no parameter of ours.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_ST_TO_NAME = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float32"}


def _single_device(path, shape):
  del path, shape
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _check_tensors(shards: HFShards, plans: list[TensorPlan], cfg: ModelConfig) -> None:
  """Validates names, shapes and dtypes of every tensor before reading any."""
  expected = {p.hf_name for p in plans}
  # Some tied checkpoints still store lm_head.weight; it is ignored.
  expected_extra = {"lm_head.weight"} if cfg.tie_embeddings else set()
  for name in shards.names():
    if name in expected or name in expected_extra or name.endswith(IGNORED_SUFFIXES):
      continue
    raise HFConversionError(f"unexpected tensor {name} in {shards.weight_map[name]}: not part of "
                            "a Llama decoder with this config.json")
  for p in plans:
    if p.hf_name not in shards.weight_map:
      raise HFConversionError(f"tensor {p.hf_name} is missing from the checkpoint {shards.hf_dir}")
    shape = shards.shape(p.hf_name)
    if shape != p.hf_shape:
      raise HFConversionError(f"tensor {p.hf_name} in {shards.weight_map[p.hf_name]} has shape "
                              f"{list(shape)}, expected {list(p.hf_shape)} from config.json")
    dt = shards.dtype(p.hf_name)
    if dt not in FLOAT_DTYPES:
      raise HFConversionError(f"tensor {p.hf_name} in {shards.weight_map[p.hf_name]} has dtype "
                              f"{dt}; only float tensors ({', '.join(FLOAT_DTYPES)}) are supported")


def _check_finite(x: np.ndarray, p: TensorPlan, shards: HFShards) -> None:
  """A NaN or infinite weight (in the file, or from the cast to the model dtype) is an error."""
  bad = x.size - int(np.count_nonzero(np.isfinite(x)))
  if bad:
    raise HFConversionError(f"tensor {p.hf_name} in {shards.weight_map[p.hf_name]} has {bad} "
                            f"non-finite value(s) (NaN or inf) as {x.dtype}: the checkpoint is "
                            "damaged or does not fit the dtype")


def _index_key(index: tuple[slice, ...]) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def _load_tensor(shards: HFShards, p: TensorPlan, sharding: jax.sharding.Sharding, dtype
                 ) -> tuple[jax.Array, int]:
  """One parameter as a jax.Array: every addressable shard reads only its own slice.

  Devices holding the same slice (replicas) share one read (each still gets its own host
  buffer: a zero-copy device buffer must not alias another's). Returns the array and the bytes
  this process read.
  """
  cache: dict[tuple, np.ndarray] = {}

  def callback(index):
    key = _index_key(index)
    if key in cache:
      return cache[key].copy()
    hf_index, post = hf_read_index(p, index)
    cache[key] = np.asarray(post(shards.read(p.hf_name, hf_index)), dtype=dtype)
    _check_finite(cache[key], p, shards)
    return cache[key]

  arr = jax.make_array_from_callback(p.shape, sharding, callback)
  return arr, sum(a.nbytes for a in cache.values())


class _Progress:
  """``tensor i/N name [shape] MiB | GiB imported, GiB this process read | elapsed`` lines, at
  most one every ``every_s`` seconds (always the first and the last tensor)."""

  def __init__(self, plans: list[TensorPlan], dtype, out: ProgressFn | None, every_s: float):
    self.n, self.out, self.every_s = len(plans), out, every_s
    self.total = sum(int(np.prod(p.shape)) * dtype.itemsize for p in plans)
    self.done = self.local = 0
    self.start = self.last = time.monotonic()

  def __call__(self, i: int, p: TensorPlan, nbytes: int, local: int) -> None:
    self.done += nbytes
    self.local += local
    now = time.monotonic()
    if self.out is None or (0 < i < self.n - 1 and now - self.last < self.every_s):
      return
    self.last = now
    gib = 1024.0 ** 3
    self.out(f"tensor {i + 1}/{self.n} {p.hf_name} {list(p.shape)} {nbytes / 2**20:.1f} MiB | "
             f"{self.done / gib:.2f}/{self.total / gib:.2f} GiB imported, this process read "
             f"{self.local / gib:.2f} GiB | {now - self.start:.1f} s")


def hf_model_config(hf_dir: str, **overrides: Any) -> ModelConfig:
  """The ModelConfig equivalent to ``hf_dir/config.json`` (compute and params in the weights'
  dtype, so logits match transformers), with ``overrides`` in ``ModelConfig.replace`` form."""
  hf = read_hf_config(hf_dir)
  base = model_config_from_hf(hf)
  dtype = _ST_TO_NAME[HFShards(hf_dir).dtype("model.embed_tokens.weight")]
  base = base.replace(param_dtype=dtype, dtype=dtype)
  return base.replace(**overrides) if overrides else base


def import_params(hf_dir: str, cfg: ModelConfig | None = None, *,
                  sharding_fn: ShardingFn | None = None, progress: ProgressFn | None = None,
                  progress_every_s: float = 0.0) -> tuple[dict[str, Any], ModelConfig]:
  """Reads an HF Llama directory into a canonical tree of jax.Arrays.

  Args:
    hf_dir: directory with ``config.json`` and ``*.safetensors`` (+ optional index).
    cfg: our ModelConfig (layout, RoPE, dtypes); its shapes must match config.json. None: the
      exact equivalent of config.json (``hf_model_config``).
    sharding_fn: ``(canonical path, shape) -> Sharding`` for each parameter; default one device.
      Each process reads only the slices of its addressable shards.
    progress: called with one line (tensor i/N, bytes, elapsed) per tensor, at most one every
      ``progress_every_s`` seconds (the first and last always); None: silent.
  Returns:
    ``(params, cfg)``; every array is in ``cfg.param_dtype``.
  """
  hf = read_hf_config(hf_dir)
  hf_cfg = model_config_from_hf(hf)
  cfg = hf_model_config(hf_dir) if cfg is None else cfg
  check_compatible(hf_cfg, cfg)
  shards = HFShards(hf_dir)
  plans = tensor_plan(cfg)
  _check_tensors(shards, plans, cfg)
  sharding_fn = sharding_fn or _single_device
  dtype = np.dtype(cfg.param_dtype)
  params: dict[str, Any] = {"layers": [dict() for _ in range(cfg.n_layers)]}
  report = _Progress(plans, dtype, progress, progress_every_s)
  for i, p in enumerate(plans):
    arr, local = _load_tensor(shards, p, sharding_fn(p.path, p.shape), dtype)
    report(i, p, arr.nbytes, local)
    if p.path[0] == "layers":
      params["layers"][p.path[1]][p.path[2]] = arr
    else:
      params[p.path[0]] = arr
  shards.close()
  return params, cfg


def _generation_config(hf_dir: str) -> dict | None:
  path = os.path.join(hf_dir, "generation_config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise HFConversionError(f"{path} is not valid JSON ({e})") from None


def _sync(name: str) -> None:
  """Barrier across processes (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def import_checkpoint(hf_dir: str, out_dir: str, cfg: ModelConfig | None = None, *,
                      sharding_fn: ShardingFn | None = None, overwrite: bool = False,
                      progress: ProgressFn | None = None,
                      progress_every_s: float = 0.0) -> ModelConfig:
  """``import_params`` + write ``out_dir`` (orbax params, metadata, tokenizer files).

  Multi-process (``jax.distributed``): every process calls this with the same arguments and
  ``out_dir`` on a shared filesystem; each reads and writes only its own shards, process 0
  writes the metadata and the tokenizer.
  """
  if os.path.exists(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise HFConversionError(f"output directory {out_dir} exists and is not empty")
    _sync("longgen_import_hf_checked")
    if jax.process_index() == 0:
      shutil.rmtree(out_dir)
    _sync("longgen_import_hf_cleared")
  params, cfg = import_params(hf_dir, cfg, sharding_fn=sharding_fn, progress=progress,
                              progress_every_s=progress_every_s)
  os.makedirs(out_dir, exist_ok=True)
  ckpt_lib.save_params(out_dir, params)
  if jax.process_index() == 0:   # one writer on a shared filesystem
    tok = copy_tokenizer(hf_dir, os.path.join(out_dir, ckpt_lib.TOKENIZER_DIR))
    ckpt_lib.write_meta(out_dir, {
        "format": ckpt_lib.FORMAT, "model": cfg.to_dict(),
        "tensors": ckpt_lib.tensor_table(params, cfg),
        "source": {"hf_dir": os.path.abspath(hf_dir), "tokenizer_files": tok},
        "hf_config": read_hf_config(hf_dir), "generation_config": _generation_config(hf_dir),
        "tokenizer": ckpt_lib.TOKENIZER_DIR if tok else None})
  _sync("longgen_import_hf_done")   # the checkpoint is complete for every process
  return cfg


def tokenizer_dir(path: str) -> str | None:
  """Directory holding the HF tokenizer files of an HF model dir or of a longgen checkpoint."""
  if ckpt_lib.is_checkpoint(path):
    tok = ckpt_lib.read_meta(path).get("tokenizer")
    return os.path.join(path, tok) if tok else None
  return path if tokenizer_files(path) else None


def load_for_training(path: str, model_cfg: ModelConfig, *, sharding_fn: ShardingFn | None = None,
                      ) -> dict[str, Any]:
  """Initial weights for training ``model_cfg`` (the trainer's ``config.init_from``).

  ``path`` is either an HF model directory (config.json + safetensors) or a checkpoint written by
  this module (``longgen_checkpoint.json``). Shapes must match ``model_cfg``; the layout, RoPE and
  dtypes are ``model_cfg``'s. Returns the canonical tree (``docs/architecture.md`` §4) with each
  array in ``model_cfg.param_dtype`` placed by ``sharding_fn`` (default one device); turn it into
  a model with ``longgen_jax.model.from_canonical`` / ``load_canonical``.
  """
  try:
    params, _ = ckpt.read_converted(path, model_cfg, sharding_fn=sharding_fn, what="init_from")
  except ckpt.CheckpointReadError as e:
    raise HFConversionError(str(e)) from None
  return params


def main(argv=None) -> None:
  from longgen_jax.hf import import_cli
  import_cli.run(argv)


if __name__ == "__main__":
  main()
