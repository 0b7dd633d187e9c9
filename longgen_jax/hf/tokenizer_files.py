"""The Hugging Face tokenizer files that travel, unchanged, from import to checkpoint to export."""

from __future__ import annotations

import fnmatch
import os
import shutil

# Exact names plus patterns: fast (tokenizer.json), sentencepiece (tokenizer.model), BPE
# (vocab.json + merges.txt), tiktoken (Llama 3 original), chat templates and special tokens.
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                      "vocab.txt", "*.tiktoken", "chat_template.jinja", "chat_template.json",
                      "additional_chat_templates/*.jinja")


def tokenizer_files(src_dir: str) -> list[str]:
  """Relative paths of the tokenizer files found in ``src_dir`` (sorted)."""
  found = []
  for root, _, files in os.walk(src_dir):
    for f in files:
      rel = os.path.relpath(os.path.join(root, f), src_dir)
      if any(fnmatch.fnmatch(rel, p) for p in TOKENIZER_PATTERNS):
        found.append(rel)
  return sorted(found)


def copy_tokenizer(src_dir: str, dst_dir: str) -> list[str]:
  """Copies the tokenizer files byte for byte; returns their relative paths (may be empty)."""
  files = tokenizer_files(src_dir)
  for rel in files:
    dst = os.path.join(dst_dir, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(os.path.join(src_dir, rel), dst)
  return files
