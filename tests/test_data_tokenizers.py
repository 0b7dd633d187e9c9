"""Tokenizers: byte tokenizer, local Hugging Face tokenizers, get_tokenizer errors."""

import json
import os

import ml_collections
import pytest

from longgen_jax.data import ByteTokenizer, DataError, HFTokenizer, get_tokenizer, tokenizer_info


def test_byte_tokenizer_roundtrip_and_specials():
  tok = ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
  text = "Long context: naïve café ✓\n"
  ids = tok.encode(text)
  assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
  assert ids == [b + 3 for b in text.encode("utf-8")]
  assert min(ids) >= 3 and max(ids) < 259
  assert tok.decode(ids) == text
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text  # specials dropped
  assert tok.encode("") == []


def _write_wordlevel_tokenizer(directory, *, with_config=True):
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "the": 4, "river": 5, "runs": 6, "slowly": 7}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
  tok.add_special_tokens(["<s>", "</s>"])
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  if with_config:
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump({"bos_token": "<s>", "eos_token": {"content": "</s>"}}, f)


def test_hf_tokenizer_from_tokenizer_json(tmp_path):
  _write_wordlevel_tokenizer(tmp_path / "tok")
  tok = get_tokenizer({"type": "hf", "path": str(tmp_path / "tok")})
  assert isinstance(tok, HFTokenizer)
  assert tok.encode("the river runs slowly") == [4, 5, 6, 7]
  assert tok.encode("the ocean") == [4, 3]
  assert tok.decode([1, 4, 5, 2]) == "the river"
  assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (8, 1, 2)
  assert tok.pad_id == tok.eos_id  # no pad token configured -> EOS
  # A plain path string and the tokenizer.json file itself also work.
  assert get_tokenizer(str(tmp_path / "tok")).encode("river") == [5]
  assert HFTokenizer(str(tmp_path / "tok" / "tokenizer.json")).bos_id == 1


def test_hf_tokenizer_through_transformers(tmp_path):
  """A directory without tokenizer.json (here a BERT vocab.txt) goes through AutoTokenizer."""
  pytest.importorskip("transformers")
  d = tmp_path / "bert"
  d.mkdir()
  (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nriver\nruns\n")
  (d / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "BertTokenizer", "do_lower_case": True, "pad_token": "[PAD]", "unk_token": "[UNK]",
      "cls_token": "[CLS]", "sep_token": "[SEP]"}))
  tok = get_tokenizer({"type": "hf", "path": str(d)})
  assert tok.encode("The river runs") == [5, 6, 7]
  assert tok.decode([2, 5, 6, 3]) == "the river"
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (8, 0, None, None)
  # No BOS/EOS tokens: the pipeline says so instead of packing None ids.
  from longgen_jax.data import build_train_iterator  # pylint: disable=import-outside-toplevel
  (tmp_path / "doc.txt").write_text("the river runs")
  cfg = {"sources": [{"type": "text", "path": str(tmp_path / "doc.txt")}]}
  with pytest.raises(DataError, match="has no BOS token"):
    build_train_iterator(cfg, tokenizer=tok, seq_len=8, batch_size=1)
  cfg.update(add_bos=False, add_eos=False)
  batch = next(build_train_iterator(cfg, tokenizer=tok, seq_len=8, batch_size=1))
  assert batch["inputs"][0, :3].tolist() == [5, 6, 7]


def test_get_tokenizer_configs_and_errors(tmp_path):
  assert isinstance(get_tokenizer(None), ByteTokenizer)
  assert isinstance(get_tokenizer("byte"), ByteTokenizer)
  assert isinstance(get_tokenizer(ml_collections.ConfigDict({"type": "byte", "path": None})), ByteTokenizer)
  with pytest.raises(DataError, match="unknown key"):
    get_tokenizer({"type": "byte", "pth": "x"})
  with pytest.raises(DataError, match="unknown type 'sentencepiece'"):
    get_tokenizer({"type": "sentencepiece"})
  with pytest.raises(DataError, match="needs a `path`"):
    get_tokenizer({"type": "hf"})
  with pytest.raises(DataError, match="tokenizer path not found"):
    get_tokenizer({"type": "hf", "path": str(tmp_path / "missing")})
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
  with pytest.raises(DataError, match="cannot load tokenizer"):
    HFTokenizer(str(tmp_path / "bad"))


def test_tokenizer_info_fingerprints_differ(tmp_path):
  _write_wordlevel_tokenizer(tmp_path / "tok")
  byte, hf = tokenizer_info(ByteTokenizer()), tokenizer_info(HFTokenizer(str(tmp_path / "tok")))
  assert byte["vocab_size"] == 259 and byte["type"] == "byte"
  assert byte["fingerprint"] == tokenizer_info(ByteTokenizer())["fingerprint"]
  assert byte["fingerprint"] != hf["fingerprint"]
  json.dumps(hf)  # JSON-able (stored in index.json)
