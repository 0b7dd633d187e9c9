"""Writes notebooks/01_quickstart.ipynb and notebooks/02_hf_roundtrip.ipynb (outputs stripped).

The notebooks are generated from the cell sources below so that the committed ``.ipynb`` files
never carry outputs and stay reviewable. Regenerate after editing:

  python notebooks/make_notebooks.py

``tests/test_notebooks.py`` checks that the files match this script and executes them with
``LONGGEN_NB_TINY=1`` (tiny sizes, CPU). On a CPU the tiny size is also the default for users
(``LONGGEN_NB_SIZE=tiny|full`` chooses); the install cell installs from a local clone, a wheel or
a pip URL given in ``LONGGEN_SRC`` and never from a guessed address.
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
INSTALL = '''# Install longgen_jax, unless it is importable already (a `pip install -e .` checkout, or CI).
# Assumption: you have the code. Set LONGGEN_SRC to a clone directory, a built wheel
# (python -m build --wheel in a clone) or any pip requirement URL you can reach; without it, a
# notebook opened from a clone's notebooks/ folder installs that clone. Nothing is fetched from
# an address this notebook guesses.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("longgen_jax") is None:
  src = os.environ.get("LONGGEN_SRC") or (
      os.path.abspath("..") if os.path.isfile(os.path.join("..", "pyproject.toml")) else None)
  if src is None:
    raise RuntimeError("longgen_jax is not installed: set LONGGEN_SRC to a clone, a wheel or a "
                       "pip URL (e.g. os.environ['LONGGEN_SRC'] = '/content/longgen_jax'), or "
                       "open this notebook from a clone's notebooks/ folder")
  req = (f"{src}[hf,notebooks]" if os.path.isdir(src) else
         f"longgen_jax[hf,notebooks] @ {'file://' + os.path.abspath(src) if os.path.isfile(src) else src}")
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", req])'''

SETUP = '''import os, tempfile
import jax
# Sizes: "tiny" (the default on a CPU: well under a minute) or "full" (the default with a GPU or
# TPU). Choose with LONGGEN_NB_SIZE=tiny|full before this cell; LONGGEN_NB_TINY=1 forces tiny.
SIZE = os.environ.get("LONGGEN_NB_SIZE") or ("tiny" if jax.default_backend() == "cpu" else "full")
if os.environ.get("LONGGEN_NB_TINY") == "1":
  SIZE = "tiny"
if SIZE not in ("tiny", "full"):
  raise ValueError(f"LONGGEN_NB_SIZE={SIZE!r}: use tiny or full")
TINY = SIZE == "tiny"
WORK = tempfile.mkdtemp(prefix="longgen_nb_")
import matplotlib
if TINY:
  matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
print("jax", jax.__version__, jax.devices(), f"size {SIZE}", "work dir", WORK)'''

SIZES = (
    "**Sizes.** `tiny` (the default on a CPU) runs every cell in well under a minute. `full` "
    "(the default on a GPU or TPU) is a 12-layer, d=256 model trained for 300 steps of 16 x 1024 "
    "tokens: minutes on one GPU, but about 67 s per step on a 2-core CPU, i.e. hours. Set "
    "`LONGGEN_NB_SIZE=full` (or `tiny`) before the setup cell to choose.")


def quickstart() -> nbformat.NotebookNode:
  cells = [
      new_markdown_cell(
          "# LongGen in JAX: quickstart\n\n"
          "LongGen (arXiv 2410.01485) turns a pretrained Llama into a hybrid long-context model: a "
          "contiguous middle third of the layers keeps full attention, the bottom and top layers "
          "get a static sparse pattern (sink + window, or block-strided), and the model is trained "
          "that way during context extension.\n\n"
          "This notebook builds a hybrid model from a config, draws each layer's block pattern "
          "from the kernels' block tables, trains a few steps with the trainer, generates, and "
          "exports the result to Hugging Face.\n\n" + SIZES),
      new_code_cell(INSTALL),
      new_code_cell(SETUP),
      new_markdown_cell("## 1. A hybrid model from a config"),
      new_code_cell(
          '''from longgen_jax.model import ModelConfig, Llama, param_count
from flax import nnx

SEQ = 64 if TINY else 1024
model_fields = dict(
    vocab_size=264,                     # the byte tokenizer (259 ids) padded to a multiple of 8
    d_model=32 if TINY else 256, n_layers=3 if TINY else 12, n_heads=4, n_kv_heads=2,
    ffn_dim=96 if TINY else 768, max_seq_len=SEQ, dtype="float32",
    layout="longgen",                   # round(L/3) full layers as ONE middle block
    sparse="sink_window:16:32@16",      # 16 sink tokens + a 32-token window, 16-token blocks
    full="full@16")
cfg = ModelConfig.from_dict(model_fields)
print(cfg.describe())
print(f"{param_count(cfg) / 1e6:.2f}M parameters")
for i, spec in enumerate(cfg.layers):
  print(f"layer {i:2d}: {spec}   KV a cache must keep at {SEQ} tokens: {spec.kv_budget(SEQ)}")'''),
      new_markdown_cell(
          "## 2. Per-layer block patterns\n\n"
          "`pallas_kernels.block_tables` lists, for every query block, the KV blocks a kernel "
          "visits (and which need the token-level mask). Skipped blocks cost nothing."),
      new_code_cell(
          '''from pallas_kernels.block_tables import block_tables
from pallas_kernels.spec import AttentionSpec

def block_image(spec, length):
  """[q_block, kv_block]: 0 skipped, 1 partial (token mask), 2 fully visible."""
  bt = block_tables(spec, length)
  img = np.zeros((bt.n_q_blocks, bt.n_kv_blocks))
  for qb in range(bt.n_q_blocks):
    n = bt.fwd_cnt[qb]
    img[qb, bt.fwd_idx[qb, :n]] = np.where(bt.fwd_partial[qb, :n], 1, 2)
  return img

L = 256 if TINY else 2048   # the patterns at a longer length than we train on
specs = list(cfg.layers) + [AttentionSpec.strided(2, 4, 16)]
titles = [f"layer {i}: {s}" for i, s in enumerate(cfg.layers)] + ["alternative: strided:2:4@16"]
cols = min(4, len(specs))   # a grid, at most 4 panels a row
rows = -(-len(specs) // cols)
fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
for ax in axes.flat[len(specs):]:
  ax.axis("off")
for ax, spec, title in zip(axes.flat, specs, titles):
  img = block_image(spec, L)
  ax.imshow(img, cmap="Blues", vmin=0, vmax=2, interpolation="nearest")
  ax.set_title(f"{title}\\n{(img > 0).mean():.0%} of blocks", fontsize=7)
  ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout(); plt.show()'''),
      new_markdown_cell(
          "## 3. Train a few steps with the trainer\n\n"
          "`longgen_jax.train.train(config, workdir)` is the same loop as "
          "`python -m longgen_jax.train`: data from the shipped corpus (byte tokenizer), AdamW, "
          "orbax checkpoints in `workdir/checkpoints`, metrics in `workdir/metrics.jsonl`."),
      new_code_cell(
          '''from longgen_jax.data.config import default_data_config
from longgen_jax.training import config_utils
from longgen_jax.training.metrics import read_metrics
from longgen_jax.train import train

config = config_utils.base_config()
config.model.update(model_fields)
config_utils.link_seq_len(config)
config.data = default_data_config()
config.train.update(dict(steps=4 if TINY else 300, batch_size=2 if TINY else 16, seq_len=SEQ,
                         lr=3e-3, warmup_steps=1 if TINY else 30, log_every=1 if TINY else 50))
config.checkpoint.every = config.train.steps
run_dir = os.path.join(WORK, "run")
last = train(config, run_dir)
loss = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
plt.figure(figsize=(4, 2.5)); plt.plot(loss); plt.xlabel("step"); plt.ylabel("loss (nats/byte)")
plt.show()
print("last step:", {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()})'''),
      new_markdown_cell(
          "## 4. Generate, then export to Hugging Face\n\n"
          "The export of a hybrid layout is a `LongGenForCausalLM` directory with its own "
          "modeling code (`trust_remote_code=True`) whose cache keeps only the sink + window "
          "tokens of each sparse layer."),
      new_code_cell(
          '''from longgen_jax.data import get_tokenizer
from longgen_jax.hf.export import export_checkpoint
from longgen_jax.hf.parity import greedy_full_forward
from longgen_jax.hf.run_checkpoint import load_run
from longgen_jax.model import from_canonical

params, run_cfg, info = load_run(run_dir)          # newest step of the run, canonical tree
model = from_canonical(run_cfg, params)
tok = get_tokenizer("byte")
prompt = np.array([tok.encode("The map")], dtype=np.int32)
out = greedy_full_forward(model, prompt, 8 if TINY else 48)
print(repr(tok.decode(out[0].tolist())))

hf_dir = os.path.join(WORK, "hf_export")
print("export target:", export_checkpoint(run_dir, hf_dir))
print(sorted(os.listdir(hf_dir)))'''),
  ]
  return new_notebook(cells=cells, metadata=_metadata())


def roundtrip() -> nbformat.NotebookNode:
  cells = [
      new_markdown_cell(
          "# Hugging Face round trip\n\n"
          "Import a Llama checkpoint (safetensors), give it the LongGen hybrid layout, export it "
          "back to Hugging Face, load it with `transformers` and compare logits and greedy "
          "generations with our JAX model.\n\n"
          "Set `LONGGEN_HF_DIR` to a local Llama directory (e.g. a downloaded Llama-3.2-1B) to "
          "use real weights; otherwise a small random Llama-3-style model (GQA, llama3 RoPE "
          "scaling, tied embeddings) is built locally.\n\n"
          "**Sizes.** `tiny` (the default on a CPU) runs in well under a minute; `full` (the "
          "default on a GPU or TPU: a 6-layer, 256-wide model compared at 1024 tokens) takes "
          "minutes on a CPU. Set `LONGGEN_NB_SIZE=full` (or `tiny`) before the setup cell."),
      new_code_cell(INSTALL),
      new_code_cell(SETUP),
      new_markdown_cell("## 1. A Hugging Face Llama directory"),
      new_code_cell(
          '''import json
from longgen_jax.hf.tiny import save_tiny_llama

hf_src = os.environ.get("LONGGEN_HF_DIR")
if not hf_src:
  hf_src = os.path.join(WORK, "hf_src")
  save_tiny_llama(hf_src, "llama3", hidden_size=64 if TINY else 256,
                  n_layers=4 if TINY else 6, max_positions=256 if TINY else 2048)
print(sorted(os.listdir(hf_src)))
keys = ("architectures", "num_hidden_layers", "num_key_value_heads", "rope_parameters")
config_json = json.load(open(os.path.join(hf_src, "config.json")))
print({k: v for k, v in config_json.items() if k in keys})'''),
      new_markdown_cell(
          "## 2. Import with the LongGen layout\n\n"
          "Tensors are streamed one at a time from the safetensors shards into (sharded) "
          "`jax.Array`s; the layout and the RoPE theta come from our config, the tokenizer files "
          "are copied unchanged."),
      new_code_cell(
          '''from longgen_jax.hf.import_hf import (hf_model_config, import_checkpoint,
                                      load_for_training)
from longgen_jax.model import from_canonical

if TINY:   # both sparse kinds, one each side of the full layer
  layout = dict(layout="explicit", layers=("sink_window:4:32@16", "full@16", "strided:2:3@16",
                                           "sink_window:4:32@16"))
else:      # LongGen: round(L/3) full layers in the middle, sink + window elsewhere
  layout = dict(layout="longgen", sparse="sink_window:64:256@64", full="full@64")
cfg = hf_model_config(hf_src, **layout)
ckpt = os.path.join(WORK, "ckpt")
import_checkpoint(hf_src, ckpt, cfg)
print(cfg.describe())
print(sorted(os.listdir(ckpt)))
ours = from_canonical(cfg, load_for_training(ckpt, cfg))'''),
      new_markdown_cell("## 3. Export and load in transformers"),
      new_code_cell(
          '''import torch, transformers
from longgen_jax.hf.export import export_checkpoint

hf_out = os.path.join(WORK, "hf_export")
print("target:", export_checkpoint(ckpt, hf_out))
print(sorted(os.listdir(hf_out)))
hf = transformers.AutoModelForCausalLM.from_pretrained(hf_out, trust_remote_code=True,
                                                       dtype=torch.float32).eval()
print(type(hf).__name__, hf.config.longgen_layers)'''),
      new_markdown_cell("## 4. Compare logits (sequence longer than the window)"),
      new_code_cell(
          '''from longgen_jax.hf.parity import jax_logits, torch_logits

T = 120 if TINY else 1024
tokens = np.random.RandomState(0).randint(3, cfg.vocab_size, (1, T))
a, b = jax_logits(ours, tokens), torch_logits(hf, tokens)
diff = np.abs(a - b).max(-1)[0]
print(f"max |logit difference| over {T} positions: {diff.max():.2e}")
assert diff.max() < 1e-3
plt.figure(figsize=(5, 2.5)); plt.semilogy(diff + 1e-12); plt.xlabel("position")
plt.ylabel("max |JAX - torch|"); plt.show()'''),
      new_markdown_cell(
          "## 5. Greedy generation with the evicting HF cache\n\n"
          "Ours re-runs the full forward at every step; transformers decodes with "
          "`LongGenCache`. The sparse layers' caches stay at sink + window - 1 tokens."),
      new_code_cell(
          '''from longgen_jax.hf.parity import greedy_full_forward, hf_greedy

prompt = tokens[:, :40]
n_new = 20 if TINY else 64
want = greedy_full_forward(ours, prompt, n_new)
got, cache = hf_greedy(hf, prompt, n_new)
print("same tokens:", bool((want == got).all()))
assert (want == got).all()
kept = cache.kept_tokens()
plt.figure(figsize=(5, 2.5))
for full, color, label in ((True, "C1", "full attention"), (False, "C0", "sparse")):
  idx = [i for i, s in enumerate(cfg.layers) if s.is_full == full]
  plt.bar(idx, [kept[i] for i in idx], color=color, label=label)
plt.xticks(range(len(kept))); plt.legend(fontsize=8)
plt.xlabel("layer"); plt.ylabel("KV tokens cached")
plt.title(f"after {prompt.shape[1] + n_new} tokens"); plt.show()
tokenizer = transformers.AutoTokenizer.from_pretrained(hf_out, trust_remote_code=True)
print("generated ids:", got[0, prompt.shape[1]:].tolist())
print("as text (random weights unless LONGGEN_HF_DIR is set):",
      repr(tokenizer.decode(got[0, prompt.shape[1]:])))'''),
  ]
  return new_notebook(cells=cells, metadata=_metadata())


def _metadata() -> dict:
  return {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
          "language_info": {"name": "python"},
          "colab": {"provenance": []}}


NOTEBOOKS = {"01_quickstart.ipynb": quickstart, "02_hf_roundtrip.ipynb": roundtrip}


def render(name: str) -> str:
  nb = NOTEBOOKS[name]()
  for i, cell in enumerate(nb.cells):
    cell["id"] = f"cell-{i:02d}"   # stable ids: regenerating gives identical files
  nbformat.validate(nb)
  return nbformat.writes(nb) + "\n"


def main(argv: list[str]) -> None:
  del argv
  for name in NOTEBOOKS:
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
      f.write(render(name))
    print("wrote", os.path.join(HERE, name))


if __name__ == "__main__":
  main(sys.argv)
