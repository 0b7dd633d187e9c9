"""The replication's real-text corpus, built offline from what the machine has.

Sources are the Python installation's own files: the standard library and every site-packages
directory (``.py``, ``.md``, ``.rst``, ``.txt``), plus the project's own texts. They are code and
documentation in English, with real long-range structure inside a package (imports, names,
cross-references), which is what a context-extension corpus needs.

Deterministic for a given installation:
- files are listed in sorted order under each root and de-duplicated by content (vendored copies);
- the files of one directory are concatenated, in name order, each under a ``# file: <path>``
  header, into documents of at most ``doc_bytes`` bytes (so a document is a run of related files,
  long enough for 16K-token rows);
- directories are taken in the order of a hash of their path until ``max_bytes`` is reached, so a
  cap keeps a spread of packages rather than the alphabetically first ones;
- the held-out split is by source directory (hash of the path): no held-out file, and no file of
  a held-out directory, is ever trained on;
- the evaluation's own material is left out: the files of ``longgen_jax/eval/texts`` (the NIAH
  essays and needle word lists) and every file that quotes an eval prompt (``EVAL_MARKERS``, e.g.
  ``eval/tasks.py`` and the docs that cite its templates), so that no eval wording is trained on.

Writes ``OUT/train.jsonl`` and ``OUT/heldout.jsonl`` (``{"text", "source"}`` per document) and
``OUT/manifest.json`` (roots, counts, bytes, and a fingerprint of the exact file list).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import site
import sys
import sysconfig
from typing import Iterable, Sequence

EXTENSIONS = (".py", ".md", ".rst", ".txt")
SKIP_DIRS = {"__pycache__", ".git", "node_modules"}
# Phrases of the eval prompts (longgen_jax/eval/tasks.py, corpus.py); lower case, bytes.
EVAL_MARKERS = (b"the pass key is", b"special magic number", b"the best thing to do in",
                b"memorize and track the chain", b"the grass is green. the sky is blue.")
EVAL_TEXT_DIR = os.path.realpath(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "eval", "texts"))


def is_eval_material(path: str, raw: bytes) -> bool:
  """A file of the eval's texts, or one that quotes an eval prompt."""
  if os.path.realpath(path).startswith(EVAL_TEXT_DIR + os.sep):
    return True
  low = raw.lower()
  return any(m in low for m in EVAL_MARKERS)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What to collect. Sizes are bytes of UTF-8 text."""

  max_bytes: int = 320 * 2**20
  doc_bytes: int = 64 * 2**10
  min_file_bytes: int = 256
  max_file_bytes: int = 256 * 2**10
  heldout_permille: int = 15


def default_roots(project_dir: str | None = None) -> list[str]:
  """The stdlib, every site-packages directory, and the project's docs (when given)."""
  roots = [sysconfig.get_paths()["stdlib"]]
  roots += [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
  if project_dir:
    roots += [os.path.join(project_dir, d) for d in ("docs", "longgen_jax", "pallas_kernels")]
  seen, out = set(), []
  for r in roots:
    real = os.path.realpath(r)
    if os.path.isdir(real) and real not in seen:
      seen.add(real)
      out.append(real)
  return out


def _hash(text: str) -> int:
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def list_files(roots: Sequence[str], spec: CorpusSpec,
               skipped: list | None = None) -> dict[str, list[tuple[str, str]]]:
  """``{directory label: [(label path, absolute path), ...]}`` in sorted order, de-duplicated,
  without the eval's material (its paths are appended to ``skipped`` when given).

  Labels are ``<root index>:<path relative to the root>``, independent of where the roots are.
  A root nested inside another root (e.g. site-packages under the stdlib) is walked only as its
  own root.
  """
  real_roots = [os.path.realpath(r) for r in roots]
  dirs: dict[str, list[tuple[str, str]]] = {}
  seen_content: set[bytes] = set()
  for ri, root in enumerate(real_roots):
    others = {r for r in real_roots if r != root and r.startswith(root + os.sep)}
    for here, subdirs, files in os.walk(root):
      subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS
                          and os.path.join(here, d) not in others)
      rel_dir = os.path.relpath(here, root)
      for name in sorted(files):
        if not name.endswith(EXTENSIONS):
          continue
        path = os.path.join(here, name)
        try:
          size = os.path.getsize(path)
        except OSError:
          continue
        if not spec.min_file_bytes <= size <= spec.max_file_bytes:
          continue
        try:
          with open(path, "rb") as f:
            raw = f.read()
        except OSError:
          continue
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if digest in seen_content:
          continue
        if is_eval_material(path, raw):
          if skipped is not None:
            skipped.append(path)
          continue
        seen_content.add(digest)
        dirs.setdefault(f"{ri}:{rel_dir}", []).append((f"{ri}:{os.path.join(rel_dir, name)}",
                                                        path))
  return dirs


def _read_text(path: str) -> str | None:
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8")
  except (OSError, UnicodeDecodeError):
    return None
  return text.replace("\r\n", "\n") if "\x00" not in text else None


def directory_documents(files: Iterable[tuple[str, str]], doc_bytes: int) -> list[dict]:
  """The files of one directory as documents of at most ``doc_bytes`` bytes (a file longer than
  that is one document on its own)."""
  docs, parts, size = [], [], 0
  for label, path in files:
    text = _read_text(path)
    if text is None:
      continue
    piece = f"# file: {label.split(':', 1)[1]}\n{text.rstrip()}\n\n"
    n = len(piece.encode())
    if parts and size + n > doc_bytes:
      docs.append("".join(parts))
      parts, size = [], 0
    parts.append(piece)
    size += n
  if parts:
    docs.append("".join(parts))
  return [{"text": d} for d in docs]


def build(out: str, roots: Sequence[str], spec: CorpusSpec = CorpusSpec(),
          progress: bool = True) -> dict:
  """Writes the corpus to ``out`` (see the module docstring); returns the manifest."""
  os.makedirs(out, exist_ok=True)
  eval_files: list[str] = []
  dirs = list_files(roots, spec, eval_files)
  order = sorted(dirs, key=lambda d: (_hash(d), d))
  fingerprint = hashlib.blake2b(digest_size=16)
  counts = {"train": [0, 0, 0], "heldout": [0, 0, 0]}   # documents, bytes, files
  total = 0
  tmp = {k: os.path.join(out, f"{k}.jsonl.tmp") for k in counts}
  handles = {k: open(p, "w", encoding="utf-8") for k, p in tmp.items()}
  try:
    for i, d in enumerate(order):
      if total >= spec.max_bytes:
        break
      split = "heldout" if _hash("heldout:" + d) % 1000 < spec.heldout_permille else "train"
      docs = directory_documents(dirs[d], spec.doc_bytes)
      for doc in docs:
        doc["source"] = d
        n = len(doc["text"].encode())
        handles[split].write(json.dumps(doc) + "\n")
        counts[split][0] += 1
        counts[split][1] += n
        total += n
      counts[split][2] += len(dirs[d])
      for label, _ in dirs[d]:
        fingerprint.update(label.encode() + b"\n")
      if progress and i % 500 == 0:
        print(f"corpus: {i}/{len(order)} directories, {total / 2**20:,.0f} MiB", file=sys.stderr,
              flush=True)
  finally:
    for h in handles.values():
      h.close()
  for k, p in tmp.items():
    os.replace(p, os.path.join(out, f"{k}.jsonl"))
  manifest = {
      "roots": list(roots), "python": sys.version.split()[0], "spec": dataclasses.asdict(spec),
      "directories": len(order), "fingerprint": fingerprint.hexdigest(),
      "eval_material_skipped": len(eval_files),
      **{k: {"documents": v[0], "bytes": v[1], "files": v[2]} for k, v in counts.items()},
  }
  with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest
