"""The study's report: ``WORKDIR/report/`` with ``summary.json``, ``tables.md`` and PNG plots.

Scores are means over samples with the standard error of the mean (std / sqrt(n), n = samples);
training tokens/s is the median over an extension run's steps after the first 5 (compilation and
warm-up excluded), from its ``metrics.jsonl``. The retrieval probe (``probe.py``; ``probe``:
training wordings, ``probe_unseen``: held-out wordings) gets its own tables and plot
(``probe_vs_length.png``); with placed arms present (``ARM@PLACE``), a table compares each with
its arm. Models are listed full, the hybrid and sparse arms (each followed by its placements),
then the baselines.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

TASKS = ("passkey", "niah", "niah_multikey", "vt")
PROBE_TASKS = ("probe", "probe_unseen")
ORDER = ("full", "hybrid_sw", "hybrid_strided", "all_sparse", "hybrid_window", "base_theta",
         "kv_drop")
PLACE_ORDER = (None, "middle", "bottom", "top", "interleaved")


def _arm(name: str) -> tuple[str, str | None]:
  """``recipe.parse_arm`` of a model name; baselines and unknown names are their own base."""
  from longgen_jax.replication import recipe  # pylint: disable=import-outside-toplevel
  try:
    return recipe.parse_arm(name)
  except ValueError:
    return name, None


def ordered(names) -> list[str]:
  """``ORDER`` first, each hybrid arm followed by its placements (``ARM@PLACE`` and the aliases),
  any other name after, as given."""
  names = list(names)

  def key(n):
    base, place = _arm(n)
    return (ORDER.index(base) if base in ORDER else len(ORDER), PLACE_ORDER.index(place),
            names.index(n))
  return sorted(names, key=key)


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
  data = st.done("data") or {}
  summary = {"size": st.size, "arms": st.arms, "models": {}, "training": {},
             "synthetic_fraction": data.get("synthetic_fraction", 0.07 if data else None),
             "pipeline": data.get("pipeline"), "pretrain": training(st.path("pretrain"))}
  for arm in ordered(st.arms):
    summary["training"][arm] = training(st.path(f"extend_{arm}"))
  for name in ordered(eval_models(st)):
    info = _load(st.path("eval", name, "summary.json"))
    probe = _load(st.path("eval", name, "probe", "results.json"))
    if info is None and probe is None:
      continue
    depth, ruler = (_load(st.path("eval", name, part, "results.json")) for part in ("depth", "ruler"))
    src = info or probe     # a model probed whose eval has not run yet: no speed, no eval scores
    m = {"served_layers": src["served_layers"], "kv_drop": src["kv_drop"],
         "speed": info["speed"] if info else None, "scores": {}, "grid": {}}
    for res in (depth, ruler):
      for task in TASKS:
        if res and task in res["tasks"]:
          m["scores"][task] = scores(res, task)
          if "grid" in res["tasks"][task]:
            m["grid"][task] = res["tasks"][task]["grid"]
    if ruler and "ppl" in ruler["tasks"]:
      m["ppl"] = ruler["tasks"]["ppl"]
    if probe:
      m["probe"] = {t: scores(probe, t) for t in PROBE_TASKS if t in probe["tasks"]}
      m["probe_by_family"] = probe.get("by_family", {})
    summary["models"][name] = m
  return summary


def _score_table(title: str, rows: dict) -> list[str]:
  """A model x length table of ``{name: scores(...)}``."""
  lengths = sorted({L for sc in rows.values() for L in sc}, key=int)
  lines = [f"\n### {title}\n",
           "| model | " + " | ".join(f"{int(L) // 1024}K" for L in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  for name, sc in rows.items():
    cells = [f"{sc[L]['mean']:.1f} ± {sc[L]['se']:.1f}" if L in sc else "–" for L in lengths]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


PROBE_TITLES = {"probe": "retrieval probe, training wordings",
                "probe_unseen": "retrieval probe, held-out wordings"}


def _last(sc: dict | None) -> str:
  if not sc:
    return "–"
  L = max(sc, key=int)
  return f"{sc[L]['mean']:.1f} ± {sc[L]['se']:.1f}"


def placement_table(summary: dict) -> list[str]:
  """Each hybrid arm beside its placements, at the longest length (empty without any)."""
  models = summary["models"]
  placed = {_arm(n)[0] for n in models if _arm(n)[1] is not None}
  names = [n for n in models if _arm(n)[0] in placed]      # already in ``ordered`` order
  if not names:
    return []
  lines = ["\n### placement of the full layers (each hybrid arm's pattern and count of full "
           "layers; longest length)\n",
           "| model | full layers | probe | probe_unseen | NIAH | passkey | ppl, last bucket | "
           "extension loss (last 10) |", "|---|---|---|---|---|---|---|---|"]
  for n in names:
    m, tr = models[n], summary["training"].get(n) or {}
    full = [i for i, s in enumerate(m["served_layers"]) if s.startswith("full")]
    ppl = f"{m['ppl']['buckets'][-1]['ppl']:.3f}" if "ppl" in m else "–"
    probe = m.get("probe", {})
    lines.append(f"| {n} | {','.join(map(str, full))} | {_last(probe.get('probe'))} | "
                 f"{_last(probe.get('probe_unseen'))} | {_last(m['scores'].get('niah'))} | "
                 f"{_last(m['scores'].get('passkey'))} | {ppl} | "
                 f"{tr.get('loss_last10', float('nan')):.4f} |")
  return lines


def tables(summary: dict) -> str:
  lines = []
  models = summary["models"]
  for task in TASKS:
    lines += _score_table(f"{task} (mean ± s.e., 0-100)",
                          {n: m["scores"].get(task, {}) for n, m in models.items()})
  for task in PROBE_TASKS:
    rows = {n: m["probe"][task] for n, m in models.items() if task in m.get("probe", {})}
    if rows:
      lines += _score_table(f"{task}: {PROBE_TITLES[task]} (exact answer, mean ± s.e., 0-100)",
                            rows)
  lines += placement_table(summary)
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
    if sp is None:
      lines.append(f"| {name} | not evaluated yet | " + " | ".join(["–"] * 7) + " |")
      continue
    big = [k for k in sp if k not in ("1", "kv_bytes_batch1")]
    mfu = tr.get("mfu")
    lines.append(
        f"| {name} | {tr.get('tokens_per_s', float('nan')):,.0f} | "
        + (f"{mfu:.1%}" if mfu else "–") + f" | {tr.get('data_wait_s', float('nan')):.4f} | "
        f"{tr.get('loss_last10', float('nan')):.4f} | {sp['1']['decode_tok_s']:,.0f} | "
        + (f"{sp[big[0]]['decode_tok_s']:,.0f} (b={big[0]})" if big else "–")
        + f" | {sp['1']['prefill_tok_s']:,.0f} | {sp['kv_bytes_batch1'] / 2**20:,.1f} |")
  return "\n".join(lines) + "\n"


def _length_panels(plt, panels: dict, titles, path: str) -> str | None:
  """One panel per ``{panel: {model: scores}}`` entry: score vs length with s.e. bars."""
  from longgen_jax.eval import plots as eplots  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels) + 0.5, 3.6), sharey=True)
  axes = np.atleast_1d(axes)
  for ax, rows, title in zip(axes, panels.values(), titles):
    xs = []
    for name, sc in rows.items():
      if not sc:
        continue
      xs = [int(L) for L in sc]
      ax.errorbar(xs, [sc[L]["mean"] for L in sc], yerr=[sc[L]["se"] for L in sc], marker="o",
                  capsize=2, label=name)
    ax.set_xscale("log", base=2)
    if xs:
      ax.set_xticks(xs, [f"{x // 1024}K" for x in xs])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylim(-3, 103)
  axes[0].set_ylabel("score (0-100)")
  axes[-1].legend(fontsize=7)
  return eplots._save(plt, fig, path)  # pylint: disable=protected-access


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
  scores_by_task = {t: {n: m["scores"].get(t) for n, m in models.items()} for t in TASKS}
  files.append(_length_panels(plt, scores_by_task, TASKS,
                              os.path.join(out, "accuracy_vs_length.png")))
  probe = {t: {n: m["probe"].get(t) for n, m in models.items() if "probe" in m}
           for t in PROBE_TASKS}
  if any(v for rows in probe.values() for v in rows.values()):
    files.append(_length_panels(plt, probe, [f"{t}: {PROBE_TITLES[t]}" for t in PROBE_TASKS],
                                os.path.join(out, "probe_vs_length.png")))
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
