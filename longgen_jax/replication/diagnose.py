r"""Two checks of a study model that explain its eval scores (CPU is enough for the base model).

  python -m longgen_jax.replication.diagnose --model=runs/replication/base_hf \
      --corpus=runs/replication/data/raw --length=1024

1. ``retrieval``: the retrieval probe (``probe.py``) at ``--length``: exact answers in the
   synthetic documents' training wordings (``probe``) and in each family's held-out wording
   (``probe_unseen``), with fresh values in held-out text, by family; against the eval's passkey
   prompt at the same length. Tells "the model cannot retrieve" apart from "it cannot transfer
   to new wording". (The first pass's JSON, ``docs/replication/diagnose_base_2026-12-03.json``,
   was made with the first pass's five fixed templates: memo, config, table.)
2. ``placement``: perplexity at positions ``[length/2, length)`` of held-out documents with the
   model's own weights served under different layouts, training-free: all full, a third of the
   layers full at the bottom / middle (LongGen) / top / interleaved (``recipe.full_layers``, the
   placement arms' layouts), all sparse (``--sparse``). Says which layers' attention carries
   long-range information in the model as it is.

Prints one line per result and writes ``--out`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import numpy as np

from longgen_jax.replication import recipe


def _generate(engine, tok, prompts: list[str], n: int) -> list[str]:
  ids = [[tok.bos_id] + list(tok.encode(p)) for p in prompts]
  return [tok.decode(g) for g in engine.generate(ids, max_new_tokens=n).tokens]


def retrieval(model, engine, corpus: str, length: int, samples: int, seed: int) -> dict:
  """Exact-answer accuracy (0-1) of the retrieval probe and of the eval passkey at ``length``."""
  from longgen_jax.eval.fit import TokenCounter  # pylint: disable=import-outside-toplevel
  from longgen_jax.eval.registry import make_task  # pylint: disable=import-outside-toplevel
  from longgen_jax.replication import probe, synthetic  # pylint: disable=import-outside-toplevel
  texts = synthetic.read_filler(f"{corpus}/heldout.jsonl", 8 * 2**20)
  res = probe.run(engine, model.tokenizer, texts, [length], samples=samples, seed=seed)
  for r in res.values():
    if str(length) in r.get("skipped", {}):
      raise ValueError(r["skipped"][str(length)])
  out = {t: r["by_length"][str(length)] / 100 for t, r in res.items()}
  out["by_family"] = {t: {f: v / 100 for f, v in probe.by_family(r)[str(length)].items()}
                      for t, r in res.items()}
  task, counter = make_task("passkey"), TokenCounter(model.tokenizer)
  ss = [task.make(length, np.random.default_rng([seed, i]), counter, depth=0.5, reserve=1)
        for i in range(samples)]
  preds = _generate(engine, model.tokenizer, [s.prompt for s in ss], 12)
  out["eval_passkey"] = float(np.mean([task.score(p, s) for p, s in zip(preds, ss)]) / 100)
  out["eval_passkey_examples"] = [(s.answers[0], p) for s, p in zip(ss[:3], preds[:3])]
  return out


def placement(model, corpus: str, length: int, sparse: str, docs: int) -> dict:
  """Training-free perplexity at positions [length/2, length) per layout."""
  from longgen_jax.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  from pallas_kernels.spec import as_spec  # pylint: disable=import-outside-toplevel
  cfg, tok = model.cfg, model.tokenizer
  sp, fu = as_spec(sparse), as_spec(f"full@{as_spec(sparse).block}")
  n = cfg.n_layers
  place = recipe.full_layers
  layouts = {"all full": range(n), "bottom": place(n, "bottom"),
             "middle (LongGen)": place(n, "middle"), "top": place(n, "top"),
             "interleaved": place(n, "interleaved"), "all sparse": ()}
  ids = []
  with open(f"{corpus}/heldout.jsonl", encoding="utf-8") as f:
    for line in f:
      b = list(tok.encode(json.loads(line)["text"]))[:length - 1]
      if len(b) == length - 1:
        ids.append([tok.bos_id] + b)
      if len(ids) == docs:
        break
  if not ids:
    raise ValueError(f"no held-out document in {corpus}/heldout.jsonl has {length} tokens; "
                     "lower --length")
  out = {"documents": len(ids), "sparse": sparse, "layouts": {}}
  for name, full in layouts.items():
    full = set(full)
    c = dataclasses.replace(cfg, layers=tuple(fu if i in full else sp for i in range(n)))
    engine = Engine(c, model.params)
    nll = float(np.mean([-engine.score(x)[length // 2:].mean() for x in ids]))
    out["layouts"][name] = {"full_layers": sorted(full), "nll": nll, "ppl": math.exp(nll)}
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m longgen_jax.replication.diagnose",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--model", required=True, help="checkpoint (trainer run or HF directory)")
  p.add_argument("--corpus", required=True, help="the study's raw corpus directory "
                 "(heldout.jsonl)")
  d = recipe.DIAGNOSE["small"]       # the driver's diagnose stage at the study's size
  p.add_argument("--length", type=int, default=d["length"])
  p.add_argument("--samples", type=int, default=d["samples"])
  p.add_argument("--docs", type=int, default=d["docs"])
  p.add_argument("--sparse", default=d["sparse"], help="the sparse pattern of the "
                 "placement check (a window well below --length)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  from longgen_jax.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.loading import load_model  # pylint: disable=import-outside-toplevel
  if args.length < 256:
    p.error(f"--length {args.length}: the retrieval probe needs at least 256 tokens")
  model = load_model(args.model, tokenizer="byte")
  try:
    res = {"model": args.model, "length": args.length,
           "retrieval": retrieval(model, Engine(model.cfg, model.params), args.corpus,
                                  args.length, args.samples, args.seed),
           "placement": placement(model, args.corpus, args.length, args.sparse, args.docs)}
  except ValueError as e:
    print(f"diagnose: error: {e}", file=sys.stderr)
    return 2
  for k, v in res["retrieval"].items():
    if k == "by_family":
      for t, fams in v.items():
        print(f"retrieval {t} by family: " + ", ".join(f"{f} {x:.0%}" for f, x in fams.items()))
    else:
      print(f"retrieval {k}: {v if isinstance(v, list) else f'{v:.1%}'}")
  for k, v in res["placement"]["layouts"].items():
    print(f"placement {k:18s} full {v['full_layers']}: ppl {v['ppl']:.3f}")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(res, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
