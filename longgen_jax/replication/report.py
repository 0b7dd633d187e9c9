"""The study's report: ``WORKDIR/report/`` with ``summary.json``, ``tables.md`` and PNG plots.

Scores are means over samples with the standard error of the mean (std / sqrt(n), n = samples);
training tokens/s is the median over an extension run's steps after the first 5 (compilation and
warm-up excluded), from its ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

TASKS = ("passkey", "niah", "niah_multikey", "vt")


def _load(path: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError:
    return None


def _metrics(run: str) -> list[dict]:
  try:
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
      recs = [json.loads(line) for line in f if line.strip()]
  except OSError:
    return []
  last = {}
  for r in recs:      # a resumed run repeats steps: keep the last record of each step
    if "loss" in r and "event" not in r:
      last[r["step"]] = r
  return [last[k] for k in sorted(last)]


def training(run: str) -> dict | None:
  recs = _metrics(run)
  if not recs:
    return None
  warm = [r for r in recs if r["step"] > 5] or recs
  return {"steps": len(recs), "final_loss": recs[-1]["loss"],
          "loss_last10": float(np.mean([r["loss"] for r in recs[-10:]])),
          "tokens_per_s": float(np.median([r["tokens_per_s"] for r in warm])),
          "mfu": float(np.median([r["mfu"] for r in warm])) if "mfu" in warm[0] else None,
          "data_wait_s": float(np.median([r["data_time"] for r in warm])),
          "step_s": float(np.median([r["step_time"] for r in warm])),
          "curve": [(r["step"], r["loss"]) for r in recs]}


def scores(results: dict, task: str) -> dict:
  """``{length: {"mean", "se", "n"}}`` from a results.json task entry."""
  out = {}
  by: dict[int, list[float]] = {}
  for s in results["tasks"][task]["samples"]:
    by.setdefault(int(s["length"]), []).append(float(s["score"]))
  for L, v in sorted(by.items()):
    a = np.asarray(v)
    out[str(L)] = {"mean": float(a.mean()), "n": int(a.size),
                   "se": float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else 0.0}
  return out


def collect(st) -> dict:
  from longgen_jax.replication.__main__ import eval_models  # pylint: disable=import-outside-toplevel
  summary = {"size": st.size, "arms": st.arms, "models": {}, "training": {},
             "pipeline": (st.done("data") or {}).get("pipeline"),
             "pretrain": training(st.path("pretrain"))}
  for arm in st.arms:
    summary["training"][arm] = training(st.path(f"extend_{arm}"))
  for name in eval_models(st):
    info = _load(st.path("eval", name, "summary.json"))
    if info is None:
      continue
    depth, ruler = (_load(st.path("eval", name, part, "results.json")) for part in ("depth", "ruler"))
    m = {"served_layers": info["served_layers"], "kv_drop": info["kv_drop"],
         "speed": info["speed"], "scores": {}, "grid": {}}
    for res in (depth, ruler):
      for task in TASKS:
        if res and task in res["tasks"]:
          m["scores"][task] = scores(res, task)
          if "grid" in res["tasks"][task]:
            m["grid"][task] = res["tasks"][task]["grid"]
    if ruler and "ppl" in ruler["tasks"]:
      m["ppl"] = ruler["tasks"]["ppl"]
    summary["models"][name] = m
  return summary


def tables(summary: dict) -> str:
  lines = []
  models = summary["models"]
  lengths = sorted({L for m in models.values() for t in m["scores"].values() for L in t}, key=int)
  for task in TASKS:
    lines += [f"\n### {task} (mean ± s.e., 0-100)\n",
              "| model | " + " | ".join(f"{int(L) // 1024}K" for L in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for name, m in models.items():
      sc = m["scores"].get(task, {})
      cells = [f"{sc[L]['mean']:.1f} ± {sc[L]['se']:.1f}" if L in sc else "–" for L in lengths]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["\n### perplexity on the held-out split (bytes), by position\n"]
  buckets = next((m["ppl"]["buckets"] for m in models.values() if "ppl" in m), [])
  lines += ["| model | " + " | ".join(f"{b['lo']}-{b['hi']}" for b in buckets) + " |",
            "|---|" + "---|" * len(buckets)]
  for name, m in models.items():
    if "ppl" in m:
      lines.append(f"| {name} | " + " | ".join(f"{b['ppl']:.3f}" for b in m["ppl"]["buckets"])
                   + " |")
  lines += ["\n### speed\n", "| model | train tok/s (extension) | train MFU | data wait s/step | "
            "final loss | decode tok/s b=1 | decode tok/s batch | prefill tok/s b=1 | KV MiB b=1 |",
            "|---|---|---|---|---|---|---|---|---|"]
  for name, m in models.items():
    tr = summary["training"].get(name) or {}
    sp = m["speed"]
    big = [k for k in sp if k not in ("1", "kv_bytes_batch1")]
    mfu = tr.get("mfu")
    lines.append(
        f"| {name} | {tr.get('tokens_per_s', float('nan')):,.0f} | "
        + (f"{mfu:.1%}" if mfu else "–") + f" | {tr.get('data_wait_s', float('nan')):.4f} | "
        f"{tr.get('loss_last10', float('nan')):.4f} | {sp['1']['decode_tok_s']:,.0f} | "
        + (f"{sp[big[0]]['decode_tok_s']:,.0f} (b={big[0]})" if big else "–")
        + f" | {sp['1']['prefill_tok_s']:,.0f} | {sp['kv_bytes_batch1'] / 2**20:,.1f} |")
  return "\n".join(lines) + "\n"


def plots(summary: dict, out: str) -> list[str]:
  from longgen_jax.eval import plots as eplots  # pylint: disable=import-outside-toplevel
  plt = eplots._pyplot()  # pylint: disable=protected-access
  if plt is None:
    return []
  files = []
  models = summary["models"]
  for name, m in models.items():
    if "niah" in m["grid"]:
      files.append(eplots.niah_heatmap(m["grid"]["niah"], os.path.join(out, f"niah_{name}.png"),
                                       f"NIAH: {name}"))
  fig, axes = plt.subplots(1, len(TASKS), figsize=(4.0 * len(TASKS), 3.6), sharey=True)
  for ax, task in zip(axes, TASKS):
    for name, m in models.items():
      sc = m["scores"].get(task)
      if not sc:
        continue
      xs = [int(L) for L in sc]
      ax.errorbar(xs, [sc[L]["mean"] for L in sc], yerr=[sc[L]["se"] for L in sc], marker="o",
                  capsize=2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x // 1024}K" for x in xs])
    ax.set_title(task)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylim(-3, 103)
  axes[0].set_ylabel("score (0-100)")
  axes[-1].legend(fontsize=7)
  files.append(eplots._save(plt, fig, os.path.join(out, "accuracy_vs_length.png")))  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for name, m in models.items():
    if "ppl" in m:
      b = m["ppl"]["buckets"]
      ax.plot([(x["lo"] + x["hi"]) / 2 for x in b], [x["ppl"] for x in b], marker="o", label=name)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("position (bucket centre)")
  ax.set_ylabel("perplexity per byte")
  ax.legend(fontsize=7)
  files.append(eplots._save(plt, fig, os.path.join(out, "perplexity_vs_position.png")))  # pylint: disable=protected-access
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  pre = summary.get("pretrain")
  if pre:
    axes[0].plot(*zip(*pre["curve"]), lw=0.8)
    axes[0].set_title("pretraining (1K, full attention)")
  for arm, tr in summary["training"].items():
    if tr:
      axes[1].plot(*zip(*tr["curve"]), lw=0.8, label=arm)
  axes[1].set_title("extension to 16x")
  for ax in axes:
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / byte)")
  axes[1].legend(fontsize=7)
  files.append(eplots._save(plt, fig, os.path.join(out, "loss_curves.png")))  # pylint: disable=protected-access
  return [f for f in files if f]


def write(st) -> dict:
  out = st.path("report")
  os.makedirs(out, exist_ok=True)
  summary = collect(st)
  with open(os.path.join(out, "tables.md"), "w", encoding="utf-8") as f:
    f.write(tables(summary))
  files = plots(summary, out)
  slim = json.loads(json.dumps(summary))
  with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(slim, f, indent=1)
  print(tables(summary), flush=True)
  return {"out": out, "plots": files, "models": sorted(summary["models"])}
