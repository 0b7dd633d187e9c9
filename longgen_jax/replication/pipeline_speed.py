"""How fast the grain input pipeline makes the study's batches, alone (no model, no device).

Compared with the training runs' tokens/s this says whether the input keeps the accelerator fed;
the trainer's ``data_time`` per step (time blocked waiting for a batch, ``metrics.jsonl``) says
the same from inside the runs.
"""

from __future__ import annotations

import importlib.util
import time


def load_config(path: str, arg: str):
  spec = importlib.util.spec_from_file_location("replication_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tokens_per_second(config, batches: int) -> dict:
  """Builds the training iterator of ``config`` and times ``batches`` batches after one warm-up."""
  from longgen_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  t = config.train
  tok = data_lib.get_tokenizer(config.data.tokenizer)
  it = data_lib.build_train_iterator(config.data, tokenizer=tok, seq_len=t.seq_len,
                                     batch_size=t.batch_size, seed=config.seed)
  next(it)
  t0 = time.perf_counter()
  real = 0
  for _ in range(batches):
    b = next(it)
    real += int((b["segment_ids"] > 0).sum())
  dt = time.perf_counter() - t0
  n = batches * t.batch_size * t.seq_len
  return {"batches": batches, "rows": t.batch_size, "seq_len": t.seq_len,
          "tokens_per_s": n / dt, "non_padding": real / n, "seconds": dt}


def measure(st, config_path: str) -> dict:
  """Pipeline tokens/s of the pretraining and extension batches of a study."""
  out = {}
  for stage, batches in (("pretrain", 20), ("extend", 10)):
    cfg = load_config(config_path, f"stage={stage},size={st.size},data={st.data},"
                      f"synth={st.args.synthetic_fraction}")
    out[stage] = tokens_per_second(cfg, batches)
    print(f"[replication] input pipeline, {stage}: {out[stage]['tokens_per_s']:,.0f} tokens/s "
          f"in one process ({out[stage]['non_padding']:.1%} non-padding)", flush=True)
  return out
