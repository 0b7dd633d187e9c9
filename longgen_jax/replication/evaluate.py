"""The study's evaluation of one model: ``python -m longgen_jax.eval`` twice, then decode speed.

1. passkey + NIAH over every length x depth (``depth_samples`` per cell, so
   ``depth_samples x len(depths)`` per length), one batch per task and length;
2. the RULER subset (multi-key NIAH, variable tracking; ``samples`` per length) and perplexity by
   position on the held-out split (``--ppl_data``);
3. decode speed: one prompt batch of held-out text at the longest length, ``speed_new_tokens``
   greedy steps with no stop token, timed after an identical warm-up generation (compiles), at
   batch 1 and at the eval batch.

Both eval calls run in this process (``longgen_jax.eval.cli.run``), so the compiled programs of
the first are reused by the second and by the speed measurement.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np


def _eval(argv: list[str]) -> dict:
  from longgen_jax.eval import cli  # pylint: disable=import-outside-toplevel
  return cli.run(cli.build_parser().parse_args(argv))


def decode_speed(checkpoint: str, kv_drop: str | None, data: str, length: int, new_tokens: int,
                 batches: tuple[int, ...]) -> dict:
  """Prefill and decode tokens/s of greedy generation at ``length`` positions."""
  from longgen_jax.eval.runner import data_ids  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.loading import load_model  # pylint: disable=import-outside-toplevel
  model = load_model(checkpoint, tokenizer="byte")
  engine = Engine(model.cfg, model.params, kv_drop=kv_drop)
  prompt_len = length - new_tokens
  out = {}
  for b in batches:
    docs = data_ids(data, model.tokenizer, True, prompt_len, min(b, 8), seed=123)
    prompts = [docs[i % len(docs)] for i in range(b)]   # at most 8 distinct documents
    for _ in ("warm-up", "timed"):
      r = engine.generate(prompts, max_new_tokens=new_tokens)
    steps = r.decode_steps
    out[str(b)] = {"batch": b, "prompt_tokens": prompt_len, "decode_steps": steps,
                   "prefill_tok_s": b * prompt_len / r.prefill_seconds,
                   "decode_tok_s": b * steps / r.decode_seconds,
                   "decode_ms_per_step": 1e3 * r.decode_seconds / max(1, steps)}
  kv = engine.abstract_cache(1, engine.plan([prompt_len], new_tokens)[2])
  kv_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                 for lc in kv.layers for x in (lc.k, lc.v))
  out["kv_bytes_batch1"] = kv_bytes
  return out


def run_model(st, name: str, checkpoint: str, kv_drop: str | None) -> dict:
  a = st.args
  out = st.path("eval", name)
  common = [f"--checkpoint={checkpoint}", f"--lengths={a.lengths}", "--tokenizer=byte",
            "--add_bos=yes", "--quiet"] + ([f"--kv_drop={kv_drop}"] if kv_drop else [])
  n_depths = len([d for d in a.depths.split(",") if d.strip()])
  t0 = time.time()
  depth = _eval(common + ["--task=passkey,niah", f"--depths={a.depths}",
                          f"--samples={a.depth_samples}", f"--batch={a.depth_samples * n_depths}",
                          f"--out={os.path.join(out, 'depth')}"])
  ruler = _eval(common + ["--task=niah_multikey,vt,ppl", f"--samples={a.samples}",
                          f"--batch={a.samples}", f"--ppl_samples={a.ppl_samples}",
                          f"--ppl_data={os.path.join(st.data, 'heldout')}",
                          f"--out={os.path.join(out, 'ruler')}"])
  t1 = time.time()
  lengths = depth["lengths"]
  speed = decode_speed(checkpoint, kv_drop, os.path.join(st.data, "heldout"), max(lengths),
                       a.speed_new_tokens, (1, a.samples))
  info = {"name": name, "checkpoint": checkpoint, "kv_drop": kv_drop,
          "served_layers": depth["served_layers"], "eval_seconds": t1 - t0,
          "speed": speed, "results": [os.path.join(out, "depth", "results.json"),
                                      os.path.join(out, "ruler", "results.json")]}
  with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  return info
