"""Pre-tokenize documents into ArrayRecord shards.

  python -m longgen_jax.data.prepare --input='data/*.jsonl' --format=jsonl \
      --tokenizer=byte|/path/to/hf_tokenizer_dir --out=DIR --shard_size=10000

Writes `DIR/tokens-00000.array_record`, ... (each record: the raw bytes of one
document's np.int32 token ids, without BOS/EOS) and `DIR/index.json`:

  {"format": "longgen_jax.tokens", "version": 1, "dtype": "int32",
   "num_documents", "num_tokens", "skipped_empty",
   "shards": [{"file", "num_documents", "num_tokens"}, ...],
   "tokenizer": {type, path, vocab_size, bos_id, eos_id, pad_id, fingerprint},
   "input": {"patterns", "format", "text_key", "separator", "num_files"}}

Train on it with a source `{type: "arrayrecord", path: DIR}`; the pipeline
checks the tokenizer fingerprint. Documents keep their input order (sorted
files), so document indices (and thus upsampling decisions) are stable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from longgen_jax.data.errors import DataError
from longgen_jax.data.sources import INDEX_FILE, JsonlSource, ParquetSource, TextSource
from longgen_jax.data.tokenizers import encode_to_array, get_tokenizer, tokenizer_info

SHARD_PATTERN = "tokens-{:05d}.array_record"
FORMATS = ("text", "jsonl", "parquet")


def _open_source(patterns: list[str], fmt: str, text_key: str, separator: str | None):
  if fmt == "text":
    return TextSource(patterns, separator=separator)
  if fmt == "jsonl":
    return JsonlSource(patterns, text_key=text_key)
  if fmt == "parquet":
    return ParquetSource(patterns, text_key=text_key)
  raise DataError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def prepare(patterns: list[str], *, fmt: str, tokenizer, out: str, shard_size: int, text_key: str = "text",
            separator: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
  """Tokenizes the documents of `patterns` into ArrayRecord shards under `out`; returns the index."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  if shard_size < 1:
    raise DataError(f"--shard_size must be >= 1, got {shard_size}")
  source = _open_source(patterns, fmt, text_key, separator)
  if len(source) == 0:
    raise DataError(f"no documents found in {', '.join(patterns)}")
  if os.path.exists(os.path.join(out, INDEX_FILE)) and not overwrite:
    raise DataError(f"{out} already holds a prepared dataset ({INDEX_FILE}); pass --overwrite to replace it")
  if os.path.exists(out) and not os.path.isdir(out):
    raise DataError(f"--out {out} exists and is not a directory")
  os.makedirs(out, exist_ok=True)
  for name in os.listdir(out):  # stale shards of an overwritten run
    if name.startswith("tokens-") and name.endswith(".array_record"):
      os.remove(os.path.join(out, name))

  shards, writer, skipped = [], None, 0
  total_tokens = 0
  for i in tqdm(range(len(source)), desc="tokenizing", unit="doc", disable=not progress, file=sys.stderr):
    tokens = encode_to_array(tokenizer, source[i]).astype(np.int32, copy=False)
    if len(tokens) == 0:
      skipped += 1
      continue
    if writer is None or shards[-1]["num_documents"] >= shard_size:
      if writer is not None:
        writer.close()
      shards.append({"file": SHARD_PATTERN.format(len(shards)), "num_documents": 0, "num_tokens": 0})
      writer = ArrayRecordWriter(os.path.join(out, shards[-1]["file"]), "group_size:1")
    writer.write(tokens.tobytes())
    shards[-1]["num_documents"] += 1
    shards[-1]["num_tokens"] += int(len(tokens))
    total_tokens += int(len(tokens))
  if writer is not None:
    writer.close()
  if not shards:
    raise DataError(f"every document in {', '.join(patterns)} is empty; nothing written")

  index = {
      "format": "longgen_jax.tokens",
      "version": 1,
      "dtype": "int32",
      "num_documents": sum(s["num_documents"] for s in shards),
      "num_tokens": total_tokens,
      "skipped_empty": skipped,
      "shards": shards,
      "tokenizer": tokenizer_info(tokenizer),
      "input": {"patterns": list(patterns), "format": fmt, "text_key": text_key, "separator": separator,
                "num_files": len(source.files)},
  }
  tmp = os.path.join(out, INDEX_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(index, f, indent=2)
  os.replace(tmp, os.path.join(out, INDEX_FILE))
  return index


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m longgen_jax.data.prepare", description=__doc__.split("\n\n")[0])
  p.add_argument("--input", action="append", required=True,
                 help="file or glob (repeat the flag or separate with commas)")
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--tokenizer", default="byte", help="'byte' or a local Hugging Face tokenizer directory")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--shard_size", type=int, default=10000, help="documents per shard")
  p.add_argument("--text_key", default="text", help="JSON key / Parquet column holding the text")
  p.add_argument("--separator", default=None,
                 help="text format: split files on this string (Python escapes allowed, e.g. '\\n\\n')")
  p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset in --out")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  return p


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; returns the exit code (errors print one line to stderr)."""
  args = _parser().parse_args(argv)
  patterns = [p for arg in args.input for p in arg.split(",") if p.strip()]
  separator = None
  if args.separator:  # interpret Python escapes ("\\n") but keep non-ASCII characters as they are
    separator = args.separator.encode("latin-1", "backslashreplace").decode("unicode_escape")
  start = time.time()
  try:
    tokenizer = get_tokenizer("byte" if args.tokenizer == "byte" else {"type": "hf", "path": args.tokenizer})
    index = prepare(patterns, fmt=args.format, tokenizer=tokenizer, out=args.out, shard_size=args.shard_size,
                    text_key=args.text_key, separator=separator, overwrite=args.overwrite,
                    progress=not args.no_progress)
  except DataError as e:
    print(f"prepare: error: {e}", file=sys.stderr)
    return 2
  docs, toks = index["num_documents"], index["num_tokens"]
  print(f"prepare: wrote {docs} documents, {toks} tokens (mean {toks / docs:.1f}/doc) in "
        f"{len(index['shards'])} shards to {args.out} in {time.time() - start:.1f}s "
        f"[tokenizer {index['tokenizer']['type']}, vocab {index['tokenizer']['vocab_size']}, "
        f"skipped {index['skipped_empty']} empty]")
  return 0


if __name__ == "__main__":
  sys.exit(main())
