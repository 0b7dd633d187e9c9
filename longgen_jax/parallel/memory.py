"""Per-device memory and FLOP estimate of a training step (what ``longgen_jax.plan`` prints).

Everything is per device, in bytes, for one optimizer step of the trainer
(``train.make_train_step``): parameters, gradients, AdamW moments, the activations that the
remat policy keeps alive across the backward pass of one micro-batch, the transient working
set of the one layer being recomputed/differentiated, and the chunked-loss logits.

Model (``docs/parallel.md`` has the derivation and the check against XLA):

* parameters / gradients / moments: the canonical shapes sharded by ``rules.RULES`` on the mesh
  sizes (exactly what ``parallel.tree_shardings`` does), in ``param_dtype``; AdamW keeps two
  moments of the parameter dtype; ``grad_accum > 1`` adds an fp32 accumulator.
* saved activations per token and layer, by remat policy (``c`` = compute-dtype bytes,
  heads / ffn divided by ``tensor``):
  ``full``: the layer input ``D``; ``save_context``: ``D + Hq Dh``; ``minimal``: input and every
  projection output ``D + (Hq + 2 Hkv) Dh + D + 2 F + D``; ``minimal_with_context``: minimal +
  ``Hq Dh``; ``save_qkv_context``: ``D + (2 Hq + 2 Hkv) Dh``; ``save_attention``: ``D + Hq Dh``
  plus the fp32 lse ``4 Hq`` bytes (the kernel's named residuals ``attn_out`` / ``attn_lse``;
  ``context`` is not saved as well); ``save_attention_qkv``: ``save_qkv_context`` + ``4 Hq``;
  ``minimal_with_attention``: ``minimal_with_context`` + ``4 Hq``; ``none``: everything a layer
  computes (1.4 x its forward intermediates).
* one layer's transient peak (forward recompute + backward) ~ 1.5 x its forward intermediates
  (fitted on XLA buffer assignments, see ``docs/parallel.md``) plus attention-parallel buffers
  (ring: current + next KV chunk, fp32 dK/dV travelling, fp32 output accumulator; all-gather:
  the gathered KV).
* logits: ``3 x fp32 [rows, loss_chunk / sequence, V / tensor]`` (logits, softmax, gradient).

The terms above were fitted on XLA:CPU buffer assignments (``platform="cpu"``, the default; also
used for TPU, not yet measured there). XLA:GPU needs less: ``platform="gpu"`` multiplies the saved
activations by ``GPU_SAVED_FACTOR`` and the layer peak and logits by ``GPU_PEAK_FACTOR``, and
drops the fp32 update temporary (``GPU_UPDATE_TEMP``). Calibration (H100 and H200, jax 0.11.2, 7B
shapes cut to 6 layers, batch 1, fp32 weights + AdamW, bf16 compute, 4096-token loss chunks,
``benchmarks/train_step.py``, ``peak_bytes_in_use``), see ``GPU_CALIBRATION``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from longgen_jax.parallel import rules as rules_lib

GiB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# XLA:GPU correction of the XLA:CPU-fitted model. On GPU, XLA fuses the norm statistics, casts
# and the AdamW update (no fp32 update temporary next to the donated buffers), and the attention
# kernels keep their fp32 accumulators on chip. The saved activations shrink less than the
# transient peak (they are the bf16 tensors remat keeps; the fusions shrink the temporaries), so
# the two get separate factors. Least-squares fit on the five measurements below (measured peak
# GiB -> the CPU model's estimate -> with this correction), each against the larger of the two
# layouts, so the planner errs on the safe side there. The first four ran on the kernels ``auto``
# took then (cuDNN / split_gpu); the fifth on ``auto``'s Hopper choice since 2026-12-07,
# pallas_gpu_mosaic, whose fused backward also holds an fp32 dQ accumulator (4 Hq Dh bytes a
# token, 2 GiB there). That term is not modelled separately: every 128K point has the same layer
# term, so the fit cannot tell it from GPU_PEAK_FACTOR.
GPU_SAVED_FACTOR = 0.81   # saved activations
GPU_PEAK_FACTOR = 0.68    # one layer's transient peak and the logits
GPU_UPDATE_TEMP = False
GPU_CALIBRATION = (
    # (seq_len, remat, measured GiB (hybrid / full layout), device, CPU-model GiB, GPU-model GiB)
    (131072, "full", (53.4, 53.4), "H100", 72.6, 53.8),
    (65536, "save_context", (38.0, 39.4), "H100", 53.8, 40.8),
    (32768, "minimal_with_context", (42.8, 42.8), "H100", 56.9, 44.5),
    (131072, "minimal_with_attention", (106.8, 109.6), "H200", 140.9, 109.2),
    (131072, "save_attention", (59.7, 60.1), "H100", 78.7, 58.8),
)
PLATFORMS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One accelerator kind: memory per device, dense bf16 peak and the estimate's platform."""

  name: str
  hbm_bytes: float
  peak_flops: float
  usable: float = 0.94   # runtime, workspace and fragmentation headroom
  platform: str = "gpu"  # ``estimate(platform=...)``

  @property
  def budget(self) -> float:
    return self.hbm_bytes * self.usable


HARDWARE = {
    # 80 GB HBM3; jax sees ~79.1 GiB. Set XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 (default 0.75!).
    "h100": Hardware("H100-80GB", 80e9, 989e12),
    # 141 GB as sold; the lent H200s report 143,771 MiB (nvidia-smi and jax's bytes_limit at
    # XLA_PYTHON_CLIENT_MEM_FRACTION=1): the planner takes what the device reports.
    "h200": Hardware("H200-141GB", 143771 * 2**20, 989e12),
    # TPU v5p: 95 GB HBM per chip (one JAX device per chip), 459 TFLOP/s bf16.
    "v5p": Hardware("TPU v5p", 95e9, 459e12, usable=0.95, platform="tpu"),
}

# Named systems: (hardware, number of JAX devices).
SYSTEMS = {"8xh100": ("h100", 8), "8xh200": ("h200", 8), "v5p-64": ("v5p", 32),
           "64xh100": ("h100", 64), "256xh100": ("h100", 256)}


class _SizesMesh:
  """Just enough of a Mesh (``shape``, ``axis_names``) for ``rules.logical_to_spec``."""

  def __init__(self, sizes: Mapping[str, int]):
    self.shape = dict(sizes)
    self.axis_names = tuple(sizes)


def sharded_numel(shape, logical, sizes: Mapping[str, int], rules=rules_lib.RULES) -> int:
  """Elements per device of a tensor sharded by ``rules`` on a mesh of ``sizes``."""
  spec = rules_lib.logical_to_spec(logical, shape, _SizesMesh(sizes), rules)
  div = 1
  for entry in spec:
    for ax in ((entry,) if isinstance(entry, str) else (entry or ())):
      div *= sizes[ax]
  return math.prod(shape) // div


def param_elements_per_device(cfg, sizes: Mapping[str, int]) -> int:
  """Parameters per device under the default rules (canonical shapes)."""
  from longgen_jax.model.layers import layer_param_shapes  # pylint: disable=import-outside-toplevel
  total = sharded_numel((cfg.vocab_size, cfg.d_model), rules_lib.PARAM_AXES["embed"], sizes)
  if not cfg.tie_embeddings:
    total += sharded_numel((cfg.d_model, cfg.vocab_size), rules_lib.PARAM_AXES["lm_head"], sizes)
  total += cfg.d_model
  per_layer = sum(sharded_numel(s, rules_lib.PARAM_AXES[n], sizes)
                  for n, s in layer_param_shapes(cfg).items())
  return total + cfg.n_layers * per_layer


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Per-device bytes of each part, plus FLOPs; ``total`` is the predicted peak."""

  params: float
  grads: float
  opt_state: float
  activations: float
  layer_peak: float
  logits: float
  update_temp: float
  flops_per_device: float      # model FLOPs of one optimizer step on one device
  hw_flops_per_device: float   # including remat recomputation
  tokens_per_device: float

  @property
  def state(self) -> float:
    return self.params + self.opt_state

  @property
  def total(self) -> float:
    return (self.params + self.grads + self.opt_state + self.activations + self.layer_peak
            + self.logits + self.update_temp)

  def rows(self) -> list[tuple[str, float]]:
    return [("params", self.params), ("grads", self.grads), ("opt_state", self.opt_state),
            ("activations (saved)", self.activations), ("layer peak", self.layer_peak),
            ("logits", self.logits), ("update temp", self.update_temp), ("total", self.total)]


def _heads_local(cfg, tp: int) -> tuple[float, float]:
  if cfg.n_kv_heads % tp == 0 and cfg.n_heads % tp == 0:
    return cfg.n_heads / tp, cfg.n_kv_heads / tp
  return float(cfg.n_heads), float(cfg.n_kv_heads)


def layer_forward_bytes_per_token(cfg, tp: int, c: int, spec=None, sp_impl="ring",
                                  n_seq: int = 1) -> float:
  """Bytes per local token of everything one layer's forward creates."""
  hq, hkv = _heads_local(cfg, tp)
  D, Dh, F = cfg.d_model, cfg.head_dim, cfg.ffn_dim / tp
  b = c * (2 * D + (hq + 2 * hkv) * Dh + hq * Dh + 2 * D + 3 * F + D)
  b += 4 * (2 * D)                     # fp32 RMSNorm statistics / casts
  b += 4 * hq * Dh + 4 * hq            # fp32 attention accumulator + lse
  if n_seq > 1 and spec is not None and spec.is_full:
    if sp_impl == "ring":
      b += 2 * c * 2 * hkv * Dh        # next KV chunk in flight
    else:
      b += c * 2 * hkv * Dh * n_seq    # the gathered KV of the whole row
  return b


def saved_bytes_per_token(policy: str, cfg, tp: int, c: int, spec=None, sp_impl="ring",
                          n_seq: int = 1) -> float:
  """Bytes per local token a layer keeps for the backward pass under ``policy``."""
  hq, hkv = _heads_local(cfg, tp)
  D, Dh, F = cfg.d_model, cfg.head_dim, cfg.ffn_dim / tp
  if policy in ("full", "nothing_saveable"):
    return c * D
  if policy == "save_context":
    return c * (D + hq * Dh)
  minimal = c * (3 * D + (hq + 2 * hkv) * Dh + 2 * F)
  if policy in ("minimal", "dots_with_no_batch_dims_saveable", "dots_saveable"):
    return minimal
  if policy == "minimal_with_context":
    return minimal + c * hq * Dh
  if policy == "save_qkv_context":
    return c * (D + (2 * hq + 2 * hkv) * Dh)
  lse = 4 * hq                         # the fp32 ``attn_lse`` residual
  if policy == "save_attention":
    return c * (D + hq * Dh) + lse
  if policy == "save_attention_qkv":
    return c * (D + (2 * hq + 2 * hkv) * Dh) + lse
  if policy == "minimal_with_attention":
    return minimal + c * hq * Dh + lse
  if policy in ("none", "everything_saveable"):
    # Without remat XLA also keeps casts, masks and kernel / merge residuals: 1.4x the forward
    # intermediates (fitted on XLA buffer assignments, see docs/parallel.md).
    return 1.4 * layer_forward_bytes_per_token(cfg, tp, c, spec, sp_impl, n_seq)
  raise ValueError(f"unknown remat policy {policy!r}")


def estimate(cfg, sizes: Mapping[str, int], *, seq_len: int, global_batch: int,
             grad_accum: int = 1, loss_chunk: int = 0, sp_impl: str = "ring",
             platform: str = "cpu") -> Estimate:
  """Per-device estimate for ``cfg`` on a mesh of ``sizes`` (data/fsdp/sequence/tensor).

  ``platform``: ``"cpu"`` / ``"tpu"``: the XLA:CPU-fitted model; ``"gpu"``: with the XLA:GPU
  correction (``GPU_SAVED_FACTOR``, ``GPU_PEAK_FACTOR``, ``GPU_UPDATE_TEMP``; module
  docstring).
  """
  if platform not in PLATFORMS:
    raise ValueError(f"unknown platform {platform!r}; known: {PLATFORMS}")
  from longgen_jax.model.flops import flops_per_token  # pylint: disable=import-outside-toplevel
  sizes = {a: int(sizes.get(a, 1)) for a in ("data", "fsdp", "sequence", "tensor")}
  n_dev = math.prod(sizes.values())
  pb = DTYPE_BYTES[cfg.param_dtype]
  c = DTYPE_BYTES[cfg.dtype]
  tp, n_seq = sizes["tensor"], sizes["sequence"]
  p_el = param_elements_per_device(cfg, sizes)
  params = p_el * pb
  grads = p_el * pb + (p_el * 4 if grad_accum > 1 else 0)
  opt_state = 2 * p_el * pb
  update_temp = p_el * 4              # fp32 update temporary inside the step
  rows = global_batch / grad_accum / (sizes["data"] * sizes["fsdp"])
  tokens = rows * seq_len / n_seq     # local tokens of one micro-batch
  acts = 0.0
  peak_layer = 0.0
  for spec in cfg.layers:
    policy = cfg.remat_for(spec)
    acts += tokens * saved_bytes_per_token(policy, cfg, tp, c, spec, sp_impl, n_seq)
    fwd = layer_forward_bytes_per_token(cfg, tp, c, spec, sp_impl, n_seq)
    bwd_extra = 0.0
    if n_seq > 1 and spec.is_full and sp_impl == "ring":
      hq, hkv = _heads_local(cfg, tp)
      bwd_extra = 2 * 4 * 2 * hkv * cfg.head_dim + 4 * hq * cfg.head_dim  # dK/dV fp32, dq fp32
    peak_layer = max(peak_layer, tokens * (1.5 * fwd + bwd_extra))
  acts += tokens * (c + 4) * cfg.d_model   # embeddings out, final hidden (+ fp32 grad)
  chunk = loss_chunk if 0 < loss_chunk < seq_len else seq_len
  vocab_local = cfg.vocab_size / tp if cfg.vocab_size % tp == 0 else cfg.vocab_size
  logits = 3 * 4 * rows * max(1.0, chunk / n_seq) * vocab_local
  fl = flops_per_token(cfg, seq_len)
  step_tokens = global_batch * seq_len
  model_flops = fl.total * step_tokens / n_dev
  recompute = 0.0
  for spec in cfg.layers:
    if cfg.remat_for(spec) in ("full", "nothing_saveable"):
      recompute += 1.0 / len(cfg.layers)
  hw = model_flops * (1 + recompute / 3)   # a full recompute adds one forward (1/3 of a step)
  if platform == "gpu":
    acts = acts * GPU_SAVED_FACTOR
    peak_layer, logits = peak_layer * GPU_PEAK_FACTOR, logits * GPU_PEAK_FACTOR
    update_temp = update_temp if GPU_UPDATE_TEMP else 0.0
  return Estimate(params, grads, opt_state, acts, peak_layer, logits, update_temp, model_flops,
                  hw, step_tokens / n_dev)
