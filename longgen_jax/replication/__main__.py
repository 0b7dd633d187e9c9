r"""``python -m longgen_jax.replication``: the whole replication study, stage by stage, resumable.

  python -m longgen_jax.replication --workdir=runs/replication                 # everything
  python -m longgen_jax.replication --workdir=runs/replication --stages=data,pretrain,base
  python -m longgen_jax.replication --workdir=/tmp/smoke --size=tiny --roots=DIR   # CPU smoke

Stages (``--stages``, comma list, default ``all``), each driving the project's own CLIs:

  data      corpus (``replication/corpus.py``) + synthetic retrieval documents, then
            ``python -m longgen_jax.data.prepare`` into grain ArrayRecord shards; measures the
            input pipeline's tokens/s
  pretrain  ``python -m longgen_jax.train --config=configs/replication.py:stage=pretrain``
  base      ``python -m longgen_jax.hf.export`` of the pretrained model (bf16, small shards): the
            base every arm starts from, plus ``base_theta`` (the same weights, only RoPE theta
            raised: the no-training baseline)
  diagnose  ``python -m longgen_jax.replication.diagnose`` of the base (seconds): its retrieval
            at the pretraining length, and which placement of the full layers keeps its
            perplexity (``recipe.best_placement``): the placement ``ARM@diagnosed`` arms take
  extend    per arm: ``python -m longgen_jax.train --config=configs/replication.py:arm=ARM``
            with ``init_from`` = the base
  eval      per model (the arms, ``base_theta``, and the full arm served with a sink+window
            cache, ``kv_drop``): ``python -m longgen_jax.eval`` for passkey + NIAH over
            lengths x depths, the RULER subset (multi-key NIAH, variable tracking) and
            perplexity by position on the held-out split; then decode tokens/s
  probe     per model (the same models): the in-distribution retrieval probe
            (``replication/probe.py``): facts in the synthetic documents' own wordings, with
            fresh values in held-out text, ``--probe_samples`` per length, in a training
            wording (``probe``) and in each family's held-out wording (``probe_unseen``)
  export    per arm: ``python -m longgen_jax.hf.export`` (``stock_sliding`` for the window arm)
  report    ``WORKDIR/report/``: ``summary.json``, tables (``tables.md``) and plots

Arms: ``--arms`` (default the five of ``recipe.ARMS``) may add the placement ablation: any hybrid
arm as ``ARM@PLACE`` (``hybrid_window@top``; PLACE one of bottom, middle, top, interleaved), and
the aliases ``hybrid_sw_bottom``, ``hybrid_sw_top``, ``hybrid_sw_interleaved``. PLACE
``diagnosed`` is the ``diagnose`` stage's choice for this base (``hybrid_window@diagnosed`` runs
as ``hybrid_window@top`` when the base's long-range layers are on top): a stage that needs it
before ``diagnose`` has run stops with one line.
``--synthetic_fraction`` sets the synthetic share of training tokens (data and training stages;
recorded in the stage marks and the report). ``--synthetic_questions`` sets how many questions
each short (pretraining) synthetic document asks (recorded in ``stages/data.json``). A data stage
that finds ``stages/data.json`` made with another value of either stops with one line: pass
``--force=data`` to remake the documents.

A finished stage leaves ``WORKDIR/stages/<stage>.json``; a training stage resumes from its own
checkpoints. ``--deadline_s`` stops cleanly between stages, and a training run that would pass
the deadline is sent SIGTERM (it saves a checkpoint and exits), so a run on a time-limited
machine always ends resumable.

``--seed`` (default 0) seeds pretraining (initialisation, data order) and every arm's extension;
one study directory holds one seed, and a training stage asked for another stops with one line.
Stages run in the order ``--stages`` lists them, so ``probe`` may come before ``eval`` (it is
the cheaper of the two). Exit code 2 and one line for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

from longgen_jax.replication import recipe

STAGES = ("data", "pretrain", "base", "diagnose", "extend", "eval", "probe", "export", "report")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "replication.py")


class Deadline(Exception):
  """The time budget ran out; the run is resumable."""


def log(msg: str) -> None:
  print(f"[replication {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Study:
  """Paths and settings of one study directory."""

  def __init__(self, args):
    self.args = args
    self.workdir = os.path.abspath(args.workdir)
    self.data = os.path.abspath(args.data or os.path.join(self.workdir, "data"))
    self.size = args.size
    self.requested = [a for a in args.arms.split(",") if a] if args.arms else list(recipe.ARMS)
    self.t_end = time.time() + args.deadline_s if args.deadline_s else None
    self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

  @property
  def arms(self) -> list[str]:
    """The requested arms with ``ARM@diagnosed`` resolved by the ``diagnose`` stage's mark
    (duplicates dropped); ValueError (one line) while that stage has not run."""
    out = []
    for a in self.requested:
      base, place = recipe.parse_arm(a)
      if place == recipe.DIAGNOSED:
        mark = self.done("diagnose")
        if mark is None:
          raise ValueError(f"arm {a!r} takes the diagnose stage's placement: run the diagnose "
                           "stage first (--stages=...,diagnose,extend,...)")
        a = f"{base}@{mark['placement']}"
      if a not in out:
        out.append(a)
    return out

  # ------------------------------------------------------------------ bookkeeping
  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def done(self, name: str) -> dict | None:
    try:
      with open(self.path("stages", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)
    except OSError:
      return None

  def mark(self, name: str, info: dict) -> None:
    os.makedirs(self.path("stages"), exist_ok=True)
    tmp = self.path("stages", f"{name}.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(dict(info, finished_at=time.time()), f, indent=1)
    os.replace(tmp, self.path("stages", f"{name}.json"))

  def left(self) -> float | None:
    return None if self.t_end is None else self.t_end - time.time()

  def check_time(self, need_s: float = 0.0) -> None:
    left = self.left()
    if left is not None and left < need_s:
      raise Deadline(f"{left:.0f}s left, the next step needs ~{need_s:.0f}s")

  def run(self, cmd: list[str], what: str, env: dict | None = None) -> None:
    """Runs a CLI; SIGTERM at the deadline (a trainer then saves and exits)."""
    log(f"{what}: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, env=dict(self.env, **(env or {})), cwd=ROOT)
    while True:
      try:
        rc = proc.wait(timeout=5.0)
        break
      except subprocess.TimeoutExpired:
        left = self.left()
        if left is not None and left < 0:
          log(f"{what}: deadline reached; sending SIGTERM (the trainer saves a checkpoint)")
          proc.send_signal(signal.SIGTERM)
          rc = proc.wait()
          raise Deadline(f"{what} stopped at the deadline (exit {rc}); run again to continue")
    if rc:
      raise RuntimeError(f"{what} failed with exit code {rc}")

  def config_arg(self, **kv) -> str:
    items = dict(kv, size=self.size, data=self.data, synth=self.args.synthetic_fraction,
                 seed=self.args.seed)
    return CONFIG + ":" + ",".join(f"{k}={v}" for k, v in items.items())


# ---------------------------------------------------------------------- stages
def stage_data(st: Study) -> dict:
  from longgen_jax.replication import corpus  # pylint: disable=import-outside-toplevel
  from longgen_jax.replication import pipeline_speed  # pylint: disable=import-outside-toplevel
  a = st.args
  roots = a.roots.split(",") if a.roots else corpus.default_roots(ROOT)
  spec = corpus.CorpusSpec(max_bytes=int(a.corpus_mb * 2**20),
                           heldout_permille=a.heldout_permille)
  raw = os.path.join(st.data, "raw")
  if not os.path.exists(os.path.join(raw, "manifest.json")):
    t0 = time.time()
    manifest = corpus.build(raw, roots, spec)
    log(f"corpus: {manifest['train']['bytes'] / 2**20:,.1f} MiB train, "
        f"{manifest['heldout']['bytes'] / 2**20:,.1f} MiB held out, "
        f"{manifest['directories']} directories in {time.time() - t0:.0f}s")
  with open(os.path.join(raw, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  sizes = recipe.SIZES[st.size]
  f, q = a.synthetic_fraction, a.synthetic_questions
  synth = {}
  for name, stage, lo, hi, log_u, seed, questions in (
      ("synth_short", "pretrain", sizes["pretrain"]["seq_len"] // 4, sizes["pretrain"]["seq_len"],
       False, 1, q),
      ("synth_long", "extend", sizes["pretrain"]["seq_len"], sizes["extend"]["seq_len"], True, 2,
       1)):
    mean = (hi - lo) / math.log(hi / lo) if log_u else (lo + hi) / 2
    spec = dict(n_docs=max(64, int(1.2 * f * sizes[stage]["tokens"] / mean)), min_chars=lo,
                max_chars=hi - 8, seed=seed, log_uniform=log_u, questions=questions)
    synth[name] = synthetic_docs(st, name, spec)
  for name, src in (("real", "train.jsonl"), ("heldout", "heldout.jsonl"),
                    ("synth_short", "synth_short.jsonl"), ("synth_long", "synth_long.jsonl")):
    out = os.path.join(st.data, name)
    if not os.path.exists(os.path.join(out, "index.json")):
      st.run([sys.executable, "-m", "longgen_jax.data.prepare", f"--input={os.path.join(raw, src)}",
              "--format=jsonl", "--tokenizer=byte", f"--out={out}", "--shard_size=2000",
              "--no_progress"], f"prepare {name}")
  speed = pipeline_speed.measure(st, CONFIG)
  return {"manifest": manifest, "synthetic": synth, "synthetic_fraction": f,
          "synthetic_questions": q, "pipeline": speed}


def synthetic_docs(st: Study, name: str, spec: dict) -> dict:
  """``raw/<name>.jsonl`` written with ``spec`` (``synthetic.write``'s arguments), kept from an
  earlier run only if that run wrote it with the same spec (``raw/<name>.spec.json``); a rewrite
  also drops its prepared shards. Returns the documents' stats."""
  from longgen_jax.replication import synthetic  # pylint: disable=import-outside-toplevel
  raw = os.path.join(st.data, "raw")
  path, spec_path = os.path.join(raw, f"{name}.jsonl"), os.path.join(raw, f"{name}.spec.json")
  try:
    with open(spec_path, encoding="utf-8") as f:
      made = json.load(f)
  except OSError:
    made = {}
  if os.path.exists(path) and made.get("spec") == spec:
    return made["stats"]
  shutil.rmtree(os.path.join(st.data, name), ignore_errors=True)
  stats = synthetic.write(path, filler_jsonl=os.path.join(raw, "train.jsonl"), **spec)
  with open(spec_path, "w", encoding="utf-8") as f:
    json.dump({"spec": spec, "stats": stats}, f, indent=1)
  return stats


def data_mismatch(mark: dict, a: argparse.Namespace) -> str | None:
  """One line if the data mark ``stages/data.json`` was made with another
  ``--synthetic_fraction`` or ``--synthetic_questions`` than ``a`` asks for, else None."""
  made = {"synthetic_fraction": mark.get("synthetic_fraction", 0.07),     # the first pass: 0.07
          "synthetic_questions": mark.get("synthetic_questions", 1)}      # before the flag: 1
  asked = {"synthetic_fraction": a.synthetic_fraction,
           "synthetic_questions": a.synthetic_questions}
  bad = [k for k in made if abs(made[k] - asked[k]) > 1e-9]
  if not bad:
    return None
  was = ", ".join(f"--{k}={made[k]}" for k in bad)
  now = ", ".join(f"--{k}={asked[k]}" for k in bad)
  return (f"stages/data.json was made with {was}, this run asks for {now}; pass --force=data to "
          "remake the synthetic documents")


def pretrain_steps(st: Study) -> int:
  """The pretraining length: ``--pretrain_steps``, else the token budget, capped (once, before
  the run starts; remembered for resumes) by what a short probe run says fits in
  ``--pretrain_budget_s`` seconds."""
  plan_path = st.path("pretrain_plan.json")
  if os.path.exists(plan_path):
    with open(plan_path, encoding="utf-8") as f:
      return json.load(f)["steps"]
  sizes = recipe.SIZES[st.size]["pretrain"]
  steps = st.args.pretrain_steps or recipe.steps(st.size, "pretrain")
  plan = {"budget_steps": recipe.steps(st.size, "pretrain"), "steps": steps,
          "seed": st.args.seed}
  if not st.args.pretrain_steps and st.args.pretrain_budget_s:
    probe = st.path("probe")
    shutil.rmtree(probe, ignore_errors=True)
    st.run([sys.executable, "-m", "longgen_jax.train",
            f"--config={st.config_arg(stage='pretrain', steps=30)}", f"--workdir={probe}",
            "--config.checkpoint.every=100000"], "pretrain probe (throughput)")
    from longgen_jax.replication.report import training  # pylint: disable=import-outside-toplevel
    tok_s = training(probe)["tokens_per_s"]
    fit = int(st.args.pretrain_budget_s * tok_s / (sizes["seq_len"] * sizes["batch_size"]))
    plan.update(probe_tokens_per_s=tok_s, budget_s=st.args.pretrain_budget_s,
                steps=max(1, min(steps, fit)))
    log(f"pretrain probe: {tok_s:,.0f} tokens/s -> {plan['steps']} steps "
        f"({plan['steps'] * sizes['seq_len'] * sizes['batch_size'] / 1e6:,.0f}M tokens)")
  os.makedirs(st.workdir, exist_ok=True)
  with open(plan_path, "w", encoding="utf-8") as f:
    json.dump(plan, f, indent=1)
  return plan["steps"]


def stage_pretrain(st: Study) -> dict:
  run = st.path("pretrain")
  steps = pretrain_steps(st)
  cmd = [sys.executable, "-m", "longgen_jax.train",
         f"--config={st.config_arg(stage='pretrain', steps=steps)}", f"--workdir={run}"]
  st.run(cmd, "pretrain")
  return {"run": run, "steps": steps, "synthetic_fraction": st.args.synthetic_fraction,
          "seed": st.args.seed}


def stage_base(st: Study) -> dict:
  base, base_theta = st.path("base_hf"), st.path("base_theta_hf")
  if not os.path.exists(os.path.join(base, "config.json")):
    st.run([sys.executable, "-m", "longgen_jax.hf.export", f"--checkpoint={st.path('pretrain')}",
            f"--out={base}", "--dtype=bfloat16", "--max_shard_gb=0.013", "--overwrite"],
           "export base")
  shutil.rmtree(base_theta, ignore_errors=True)
  shutil.copytree(base, base_theta)
  with open(os.path.join(base_theta, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
  cfg["rope_theta"] = recipe.EXTEND_THETA
  if isinstance(cfg.get("rope_parameters"), dict):
    cfg["rope_parameters"]["rope_theta"] = recipe.EXTEND_THETA
  cfg["max_position_embeddings"] = recipe.SIZES[st.size]["extend"]["seq_len"]
  with open(os.path.join(base_theta, "config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg, f, indent=2)
  return {"base": base, "base_theta": base_theta}


def stage_diagnose(st: Study) -> dict:
  """The base's training-free diagnosis (``replication/diagnose.py``) and the placement it
  picks for ``ARM@diagnosed`` (``recipe.best_placement``)."""
  d = recipe.DIAGNOSE[st.size]
  out = st.path("diagnose", "base.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  st.run([sys.executable, "-m", "longgen_jax.replication.diagnose", f"--model={st.path('base_hf')}",
          f"--corpus={os.path.join(st.data, 'raw')}", f"--length={d['length']}",
          f"--sparse={d['sparse']}", f"--samples={d['samples']}", f"--docs={d['docs']}",
          f"--out={out}"], "diagnose base")
  with open(out, encoding="utf-8") as f:
    res = json.load(f)
  layouts = {k: v["ppl"] for k, v in res["placement"]["layouts"].items()}
  ppl = {k.split()[0]: v for k, v in layouts.items() if k.split()[0] in recipe.PLACEMENTS}
  best = recipe.best_placement(ppl)
  by = ", ".join(f"{p} {ppl[p]:.3f}" for p in recipe.PLACEMENTS)
  log(f"diagnose: perplexity by placement {by} -> ARM@{recipe.DIAGNOSED} = ARM@{best}")
  return {"out": out, "placement": best, "ppl": ppl, "ppl_all_full": layouts["all full"],
          "ppl_all_sparse": layouts["all sparse"],
          "probe": res["retrieval"]["probe"], "probe_unseen": res["retrieval"]["probe_unseen"]}


def stage_extend(st: Study, arm: str) -> dict:
  run = st.path(f"extend_{arm}")
  st.run([sys.executable, "-m", "longgen_jax.train",
          f"--config={st.config_arg(arm=arm, steps=st.args.extend_steps)}", f"--workdir={run}",
          f"--config.init_from={st.path('base_hf')}"], f"extend {arm}")
  return {"run": run, "synthetic_fraction": st.args.synthetic_fraction,
          "layers": recipe.arm_layers(st.size, arm), "seed": st.args.seed}


def eval_models(st: Study) -> dict[str, tuple[str, str | None]]:
  """Evaluated name -> (checkpoint, kv_drop spec)."""
  out = {arm: (st.path(f"extend_{arm}"), None) for arm in st.arms}
  out["base_theta"] = (st.path("base_theta_hf"), None)
  if recipe.KV_DROP_ARM in st.arms:
    out["kv_drop"] = (st.path(f"extend_{recipe.KV_DROP_ARM}"), recipe.kv_drop_spec(st.size))
  return out


def stage_eval(st: Study, name: str, checkpoint: str, kv_drop: str | None) -> dict:
  from longgen_jax.replication import evaluate  # pylint: disable=import-outside-toplevel
  return evaluate.run_model(st, name, checkpoint, kv_drop)


def stage_probe(st: Study, name: str, checkpoint: str, kv_drop: str | None) -> dict:
  from longgen_jax.replication import probe  # pylint: disable=import-outside-toplevel
  return probe.run_model(st, name, checkpoint, kv_drop)


def stage_export(st: Study, arm: str) -> dict:
  out = st.path("export", arm)
  target = "stock_sliding" if recipe.parse_arm(arm)[0] == "hybrid_window" else "auto"
  st.run([sys.executable, "-m", "longgen_jax.hf.export", f"--checkpoint={st.path(f'extend_{arm}')}",
          f"--out={out}", f"--target={target}", "--dtype=bfloat16", "--overwrite"],
         f"export {arm}", env={"JAX_PLATFORMS": "cpu"})   # host work; the GPU may be held here
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  return {"out": out, "target": target, "architectures": hf.get("architectures")}


def stage_report(st: Study) -> dict:
  from longgen_jax.replication import report  # pylint: disable=import-outside-toplevel
  return report.write(st)


# ---------------------------------------------------------------------- the driver
def pretrain_seed(st: Study) -> int | None:
  """The seed the study's pretraining started with (``pretrain_plan.json``, written before it
  starts; 0 before the flag existed), or None when it has not started."""
  try:
    with open(st.path("pretrain_plan.json"), encoding="utf-8") as f:
      return json.load(f).get("seed", 0)
  except FileNotFoundError:
    return None


def check_data(st: Study, stages: list[str], force: set[str]) -> str | None:
  """The data mark against this run's synthetic settings: the one-line error of a data stage
  that would keep documents made with other settings (``data_mismatch``); warnings when only
  the training stages run."""
  args = st.args
  if set(stages) & {"pretrain", "extend"}:
    made = pretrain_seed(st)
    if made is not None and made != args.seed:
      return (f"the pretraining in {st.workdir} was made with --seed={made}, this run asks for "
              f"--seed={args.seed}; use another --workdir for another seed")
  mark = st.done("data")
  if mark is None:
    return None
  if "data" in stages:
    return None if "data" in force else data_mismatch(mark, args)
  made = mark.get("synthetic_fraction", 0.07)   # the first pass: 0.07
  if set(stages) & {"pretrain", "extend"} and abs(made - args.synthetic_fraction) > 1e-9:
    log(f"warning: the data stage made synthetic documents for a share of {made}; training now "
        f"mixes {args.synthetic_fraction} (documents repeat or go unused)")
  made_q = mark.get("synthetic_questions", 1)
  if "pretrain" in stages and made_q != args.synthetic_questions:
    log(f"warning: the data stage made documents asking {made_q} question(s); "
        f"--synthetic_questions={args.synthetic_questions} needs --stages=data --force=data")
  return None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m longgen_jax.replication",
                              description="The LongGen replication study (docs/replication.md).")
  p.add_argument("--workdir", required=True, help="study directory (every stage's output)")
  p.add_argument("--stages", default="all", help=f"comma list of {', '.join(STAGES)}, or all")
  p.add_argument("--size", default="small", choices=sorted(recipe.SIZES))
  p.add_argument("--arms", default="", help=f"comma list (default: {', '.join(recipe.ARMS)}; "
                 "the placement ablation adds a hybrid arm as ARM@PLACE, e.g. hybrid_window@top, "
                 f"PLACE one of {', '.join(recipe.PLACEMENTS)}, or {recipe.DIAGNOSED} (the "
                 "diagnose stage's choice for the base); aliases "
                 f"{', '.join(recipe.PLACEMENT_ARMS)})")
  p.add_argument("--data", default=None, help="prepared data directory (default WORKDIR/data)")
  p.add_argument("--roots", default=None, help="corpus roots, comma separated (default: the "
                 "stdlib, site-packages and this project)")
  p.add_argument("--corpus_mb", type=float, default=320.0, help="real-text corpus size cap")
  p.add_argument("--heldout_permille", type=int, default=15, help="directories held out, per "
                 "thousand")
  p.add_argument("--synthetic_fraction", type=float, default=recipe.SYNTHETIC_FRACTION,
                 help="share of training tokens that are synthetic retrieval documents (data, "
                 "pretrain and extend stages; default %(default)s)")
  p.add_argument("--synthetic_questions", type=int, default=recipe.SYNTHETIC_QUESTIONS,
                 help="questions each short (pretraining) synthetic document asks, about items "
                 "with distinct keys (fewer where they do not fit): more retrieval answers per "
                 "training token (the second pass's 1 taught no retrieval, the third's 4 did). "
                 "The long ones ask 1 (default %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed of "
                 "pretraining and of every arm's extension (one seed per --workdir; default "
                 "%(default)s)")
  p.add_argument("--pretrain_steps", type=int, default=0, help="0 = the token budget")
  p.add_argument("--pretrain_budget_s", type=float, default=0.0, help="cap pretraining to what "
                 "a probe run says fits in this many seconds (0 = the token budget)")
  p.add_argument("--extend_steps", type=int, default=0, help="0 = the token budget")
  p.add_argument("--lengths", default="1k,2k,4k,8k,16k", help="eval lengths")
  p.add_argument("--depths", default="0,10,20,30,40,50,60,70,80,90,100", help="eval depths (%%)")
  p.add_argument("--depth_samples", type=int, default=5, help="samples per length and depth")
  p.add_argument("--samples", type=int, default=55, help="samples per length (RULER subset)")
  p.add_argument("--ppl_samples", type=int, default=8, help="held-out documents for ppl")
  p.add_argument("--probe_samples", type=int, default=55, help="retrieval-probe samples per "
                 "length, in each of its two tasks (probe, probe_unseen)")
  p.add_argument("--probe_seed", type=int, default=1000, help="seed of the probe's samples "
                 "(the training documents use 1 and 2)")
  p.add_argument("--speed_new_tokens", type=int, default=256, help="decode steps timed")
  p.add_argument("--deadline_s", type=float, default=0.0, help="stop cleanly after this many "
                 "seconds (0 = no limit)")
  p.add_argument("--force", default="", help="comma list of stage marks to redo (e.g. report)")
  return p


def plan(st: Study, stages: list[str]) -> list[tuple[str, callable]]:
  out = []
  for s in stages:
    if s in ("extend", "eval", "probe", "export", "report"):
      st.arms     # noqa: B018 -- resolves ARM@diagnosed now: one line if diagnose has not run
    if s == "extend":
      out += [(f"extend_{a}", lambda a=a: stage_extend(st, a)) for a in st.arms]
    elif s == "eval":
      out += [(f"eval_{n}", lambda n=n, c=c, k=k: stage_eval(st, n, c, k))
              for n, (c, k) in eval_models(st).items()]
    elif s == "probe":
      out += [(f"probe_{n}", lambda n=n, c=c, k=k: stage_probe(st, n, c, k))
              for n, (c, k) in eval_models(st).items()]
    elif s == "export":
      out += [(f"export_{a}", lambda a=a: stage_export(st, a)) for a in st.arms]
    else:
      simple = {"data": stage_data, "pretrain": stage_pretrain, "base": stage_base,
                "diagnose": stage_diagnose, "report": stage_report}[s]
      out.append((s, lambda f=simple: f(st)))
  return out


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  stages = list(STAGES) if args.stages == "all" else [s for s in args.stages.split(",") if s]
  bad = [s for s in stages if s not in STAGES]
  if bad:
    print(f"replication: error: unknown stage(s) {bad}; stages: {', '.join(STAGES)}",
          file=sys.stderr)
    return 2
  for a in (a for a in args.arms.split(",") if a):
    try:
      recipe.parse_arm(a)
    except ValueError as e:
      print(f"replication: error: {e}", file=sys.stderr)
      return 2
  if not 0 < args.synthetic_fraction < 1:
    print(f"replication: error: --synthetic_fraction={args.synthetic_fraction} must lie in "
          "(0, 1)", file=sys.stderr)
    return 2
  if args.synthetic_questions < 1:
    print(f"replication: error: --synthetic_questions={args.synthetic_questions} must be >= 1",
          file=sys.stderr)
    return 2
  if args.seed < 0:
    print(f"replication: error: --seed={args.seed} must be >= 0", file=sys.stderr)
    return 2
  if args.probe_samples < 1:
    print(f"replication: error: --probe_samples={args.probe_samples} must be >= 1",
          file=sys.stderr)
    return 2
  st = Study(args)
  os.makedirs(st.workdir, exist_ok=True)
  force = {f for f in args.force.split(",") if f}
  mismatch = check_data(st, stages, force)
  if mismatch:
    print(f"replication: error: {mismatch}", file=sys.stderr)
    return 2
  for stage in stages:      # planned stage by stage: ARM@diagnosed resolves once diagnose ran
    try:
      steps = plan(st, [stage])
    except ValueError as e:
      print(f"replication: error: {e}", file=sys.stderr)
      return 2
    for name, fn in steps:
      if st.done(name) is not None and name not in force:
        log(f"{name}: done earlier (stages/{name}.json)")
        continue
      try:
        st.check_time(30.0)
        t0 = time.time()
        info = fn()
        st.mark(name, dict(info, seconds=time.time() - t0))
        log(f"{name}: done in {time.time() - t0:.0f}s")
      except Deadline as e:
        log(f"stopped: {e}")
        return 0
      except Exception as e:  # noqa: BLE001 -- one model's evaluation must not stop the others
        if not name.startswith(("eval_", "probe_")):
          raise
        log(f"{name}: FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
  log("all requested stages done")
  return 0


if __name__ == "__main__":
  sys.exit(main())
