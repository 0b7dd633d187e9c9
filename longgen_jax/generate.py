r"""Text generation with the hybrid KV cache.

  python -m longgen_jax.generate --checkpoint=WORKDIR --prompt="Once upon a time"
  python -m longgen_jax.generate --checkpoint=WORKDIR --prompt="a" --prompt="a longer one" \
      --max_new_tokens=64 --temperature=0.8 --top_p=0.95 --stop="\n\n"
  python -m longgen_jax.generate --checkpoint=random:tiny --prompt_file=prompts.jsonl

``--checkpoint``: a trainer WORKDIR / checkpoints dir / step dir, a converted checkpoint of
``longgen_jax.hf.import_hf``, a Hugging Face model dir, or ``random:<preset>[:<seed>]``
(``infer/loading.py``). ``--prompt`` may repeat (one batch of prompts of different lengths);
``--prompt_file``: a ``.jsonl`` file (one JSON string or ``{"prompt": ...}`` per line) or any other
file read whole as one prompt. Greedy by default (``--temperature=0``). Streams the text of a single
prompt as it is generated, and each completion of a batch as soon as that row stops. Prints the
KV-cache size per layer type before generating and the timings after. Exit code 2 and one line on
stderr for a bad request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from longgen_jax.infer.errors import InferError


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m longgen_jax.generate",
                              description="Generate text with a LongGen model and its hybrid "
                                          "KV cache.")
  p.add_argument("--checkpoint", required=True, help="trainer workdir, converted checkpoint, "
                 "HF dir, or random:<preset>[:<seed>]")
  p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
  p.add_argument("--prompt_file", default=None, help=".jsonl (one prompt per line) or a text "
                 "file (one prompt)")
  p.add_argument("--no_echo", action="store_true", help="print only the completion, not the "
                 "prompt before it")
  p.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer "
                 "('byte' or a local HF tokenizer dir)")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=0, help="0 = off")
  p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
  p.add_argument("--stop_token_ids", default="", help="comma-separated stop token ids")
  p.add_argument("--ignore_eos", action="store_true", help="do not stop at the EOS token")
  p.add_argument("--add_bos", choices=("auto", "yes", "no"), default="auto",
                 help="prepend BOS (auto: as in training)")
  p.add_argument("--prefill_chunk", type=int, default=None, help="tokens per row per prefill "
                 "chunk (default 16384 rounded to a valid chunk; one-shot within one chunk)")
  p.add_argument("--max_len", type=int, default=None, help="refuse requests needing more "
                 "positions per row (default: no limit)")
  p.add_argument("--paged", action="store_true", help="paged layout for full-attention layers")
  p.add_argument("--page_size", type=int, default=128)
  p.add_argument("--kv_drop", default=None, help="serve full layers with this sparse pattern "
                 "(e.g. sink_window:64:4096): inference-time KV dropping")
  p.add_argument("--backend", default="auto", help="pallas_kernels.attention backend (prefill)")
  p.add_argument("--decode_impl", default="auto", help="decode kernel: auto | xla | pallas_gpu")
  p.add_argument("--no_stream", action="store_true", help="print completions only at the end")
  p.add_argument("--json_out", default=None, help="also write the results as JSON here")
  return p


def read_prompts(args) -> list[str]:
  """The prompts of ``--prompt`` and ``--prompt_file`` (InferError when none / unreadable)."""
  prompts = list(args.prompt)
  if args.prompt_file:
    if not os.path.isfile(args.prompt_file):
      raise InferError(f"--prompt_file={args.prompt_file!r} does not exist")
    with open(args.prompt_file, encoding="utf-8") as f:
      text = f.read()
    if args.prompt_file.endswith(".jsonl"):
      for i, line in enumerate(text.splitlines()):
        if not line.strip():
          continue
        try:
          item = json.loads(line)
        except json.JSONDecodeError as e:
          raise InferError(f"{args.prompt_file}:{i + 1}: not JSON ({e})") from None
        prompts.append(item["prompt"] if isinstance(item, dict) else str(item))
    else:
      prompts.append(text)
  if not prompts:
    raise InferError("give at least one --prompt or a --prompt_file")
  for i, p in enumerate(prompts):
    if not p:
      raise InferError(f"prompt {i} is empty")
  return prompts


class Streamer:
  """Prints generated text as it comes: inline for one prompt, per row when it stops."""

  def __init__(self, tokenizer, n_rows: int, stream: bool, stops: Sequence[str], out=None,
               prompts: Sequence[str] | None = None):
    self.tok = tokenizer
    self.prompts = list(prompts) if prompts else None   # echoed before each completion
    self._echoed = False
    self.ids = [[] for _ in range(n_rows)]
    self.shown = [0] * n_rows
    self.done = [False] * n_rows
    self.stream = stream
    self.stops = list(stops)
    self.out = out or sys.stdout

  def text(self, row: int) -> str:
    text = self.tok.decode(self.ids[row])
    for s in self.stops:
      cut = text.find(s)
      if cut >= 0:
        text = text[:cut]
    return text

  def should_stop(self, row: int, ids: list) -> bool:
    return bool(self.stops) and any(s in self.tok.decode(ids) for s in self.stops)

  def __call__(self, step, tokens, emitted, active):
    del step
    for b in range(len(self.ids)):
      if emitted[b]:
        self.ids[b].append(int(tokens[b]))
      if not self.stream:
        continue
      if len(self.ids) == 1:
        self._inline(b, final=not active[b])
      elif not active[b] and not self.done[b]:
        self.finish(b)

  def _inline(self, b: int, final: bool) -> None:
    text = self.text(b)
    if not final:
      text = text.rstrip("\ufffd")      # an incomplete UTF-8 sequence may still change
      for s in self.stops:               # hold back a possible stop-string prefix
        for k in range(len(s) - 1, 0, -1):
          if text.endswith(s[:k]):
            text = text[:-k]
            break
    if self.prompts is not None and not self._echoed:
      self._echoed = True
      self.out.write(self.prompts[b])
    if len(text) > self.shown[b]:
      self.out.write(text[self.shown[b]:])
      self.out.flush()
      self.shown[b] = len(text)

  def finish(self, b: int) -> None:
    if self.done[b]:
      return
    self.done[b] = True
    if len(self.ids) == 1:
      self._inline(b, final=True)
      self.out.write("\n")
    else:
      echo = f"{self.prompts[b]!r} -> " if self.prompts is not None else ""
      self.out.write(f"[{b}] {echo}{self.text(b)!r}\n")
    self.out.flush()


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return run(args)
  except InferError as e:
    print(f"longgen_jax.generate: error: {e}", file=sys.stderr)
    return 2


def run(args) -> int:
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.ERROR)
  from longgen_jax.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.loading import load_model  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.report import format_kv_report  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.sampling import SamplingParams  # pylint: disable=import-outside-toplevel
  from pallas_kernels.spec import SpecError, as_spec  # pylint: disable=import-outside-toplevel

  prompts = read_prompts(args)
  sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
  try:
    kv_drop = as_spec(args.kv_drop) if args.kv_drop else None
  except SpecError as e:
    raise InferError(f"--kv_drop: {e}") from None
  try:
    stop_ids = {int(t) for t in args.stop_token_ids.split(",") if t.strip()}
  except ValueError:
    raise InferError(f"--stop_token_ids={args.stop_token_ids!r} must be comma-separated ints"
                     ) from None
  model = load_model(args.checkpoint, tokenizer=args.tokenizer)
  tok = model.tokenizer
  if not args.ignore_eos and tok.eos_id is not None:
    stop_ids.add(int(tok.eos_id))
  add_bos = model.add_bos if args.add_bos == "auto" else args.add_bos == "yes"
  ids = [([tok.bos_id] if add_bos and tok.bos_id is not None else []) + tok.encode(p)
         for p in prompts]
  for i, row in enumerate(ids):
    if not row:
      raise InferError(f"prompt {i} encodes to 0 tokens")
    if max(row) >= model.cfg.vocab_size:
      raise InferError(f"prompt {i} has token id {max(row)} >= the model's vocab_size "
                       f"{model.cfg.vocab_size} (wrong --tokenizer?)")
  engine = Engine(model.cfg, model.params, kv_drop=kv_drop, prefill_chunk=args.prefill_chunk,
                  paged=args.paged, page_size=args.page_size, backend=args.backend,
                  decode_impl=args.decode_impl, max_capacity=args.max_len)
  print(f"model: {model.cfg.describe()} [{model.source}]", file=sys.stderr)
  if kv_drop is not None:
    print(f"kv_drop: full layers served as {kv_drop} (no training: StreamingLLM-style "
          "baseline)", file=sys.stderr)
  t_pad, chunk, capacity = engine.plan([len(r) for r in ids], args.max_new_tokens)
  print(f"{len(ids)} prompt(s), {min(map(len, ids))}..{max(map(len, ids))} tokens, padded to "
        f"{t_pad} (prefill chunk {chunk}), cache capacity {capacity}", file=sys.stderr)
  print(format_kv_report(engine.abstract_cache(len(ids), capacity)), file=sys.stderr)
  streamer = Streamer(tok, len(ids), not args.no_stream, args.stop,
                      prompts=None if args.no_echo else prompts)
  t0 = time.perf_counter()
  result = engine.generate(ids, max_new_tokens=args.max_new_tokens, sampling=sampling,
                           stop_tokens=stop_ids, seed=args.seed, on_token=streamer,
                           should_stop=streamer.should_stop if args.stop else None)
  wall = time.perf_counter() - t0
  for b in range(len(ids)):
    if args.no_stream:
      streamer.stream = True
    streamer.finish(b)
  n_new = sum(len(t) for t in result.tokens)
  print(f"prefill {result.prefill_seconds:.2f}s, decode {result.decode_steps} steps in "
        f"{result.decode_seconds:.2f}s ({n_new} tokens; compile time included), wall {wall:.2f}s",
        file=sys.stderr)
  if args.json_out:
    with open(args.json_out, "w", encoding="utf-8") as f:
      json.dump({"prompts": prompts, "completions": [streamer.text(b) for b in range(len(ids))],
                 "tokens": result.tokens, "finish_reasons": result.finish_reasons,
                 "prefill_seconds": result.prefill_seconds,
                 "decode_seconds": result.decode_seconds}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
