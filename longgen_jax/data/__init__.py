"""Data pipeline: sources, tokenizers, length upsampling, packing, per-process sharding.

Contract (docs/architecture.md §5, details in docs/data.md):

  tok = get_tokenizer(cfg.data.tokenizer)
  it = build_train_iterator(cfg.data, tokenizer=tok, seq_len=T, batch_size=B_per_process, seed=s,
                            process_index=jax.process_index(), process_count=jax.process_count())
  batch = next(it)   # numpy dict, all [B, T]: inputs, targets, positions, segment_ids (int32), loss_mask (f32)
  state = it.get_state(); it.set_state(state)
"""

from longgen_jax.data.checkpoint import (
    ITERATOR_ITEM,
    iterator_checkpoint_args,
    iterator_restore_args,
    restore_iterator,
    save_iterator,
)
from longgen_jax.data.config import (
    CORPUS_DIR,
    CORPUS_SEPARATOR,
    FU_ET_AL_UPSAMPLE,
    corpus_path,
    default_data_config,
    normalize_data_config,
)
from longgen_jax.data.errors import DataError
from longgen_jax.data.pipeline import (
    build_eval_dataset,
    build_eval_iterator,
    build_train_dataset,
    build_train_iterator,
    source_documents,
)
from longgen_jax.data.sources import (
    ArrayRecordTokenSource,
    JsonlSource,
    ParquetSource,
    TextSource,
    make_source,
    tfds_source,
)
from longgen_jax.data.tokenizers import ByteTokenizer, HFTokenizer, get_tokenizer, tokenizer_info
from longgen_jax.data.upsample import keep_document

__all__ = [
    "ArrayRecordTokenSource", "ByteTokenizer", "CORPUS_DIR", "CORPUS_SEPARATOR", "DataError", "FU_ET_AL_UPSAMPLE",
    "HFTokenizer", "ITERATOR_ITEM", "JsonlSource", "ParquetSource", "TextSource", "build_eval_dataset",
    "build_eval_iterator", "build_train_dataset", "build_train_iterator", "corpus_path", "default_data_config",
    "get_tokenizer", "iterator_checkpoint_args", "iterator_restore_args", "keep_document", "make_source",
    "normalize_data_config", "restore_iterator", "save_iterator", "source_documents", "tfds_source",
    "tokenizer_info",
]
