"""Hugging Face tokenizer files for the byte tokenizer (``longgen_jax.data.tokenizers``).

The trainer's byte tokenizer maps UTF-8 bytes to ids ``byte + 3`` (0 pad, 1 BOS, 2 EOS). An
exported model trained with it gets a ``tokenizer.json`` that ``transformers.AutoTokenizer``
loads and that gives the same ids: a byte-level BPE without merges whose vocabulary is the three
special tokens plus the 256 bytes (in GPT-2's printable byte alphabet) at ``byte + 3``, a
post-processor adding BOS (as the trainer's ``data.add_bos``), and a byte-level decoder.
"""

from __future__ import annotations

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
OFFSET = 3


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in character for every byte (the ByteLevel pre-tokenizer's)."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
  chars, n = list(keep), 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + n)
      n += 1
  return dict(zip(keep, map(chr, chars)))


def write_byte_tokenizer(out_dir: str) -> None:
  """Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel
  vocab = {PAD: 0, BOS: 1, EOS: 2}
  vocab.update({ch: b + OFFSET for b, ch in _bytes_to_unicode().items()})
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True) for t in (PAD, BOS, EOS)])
  tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                     special_tokens=[(BOS, 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                 pad_token=PAD, clean_up_tokenization_spaces=False)
  fast.save_pretrained(out_dir)
