"""Hugging Face interop: import Llama checkpoints, export LongGen models (docs/hf.md).

Commands::

  python -m longgen_jax.hf.import_hf --hf_dir=DIR --out=CKPT [--mesh=fsdp=-1] [--layout=...]
  python -m longgen_jax.hf.export --checkpoint=CKPT_OR_WORKDIR --out=DIR [--target=...]

Library (import the submodules; this package imports nothing heavy):

  import_hf.import_params / import_checkpoint / load_for_training / hf_model_config /
            tokenizer_dir                          HF safetensors -> canonical tree / checkpoint
  export.export_params / export_checkpoint         canonical tree / checkpoint -> HF directory
  targets                                          llama | longgen | stock_sliding targets
  checkpoint                                       the imported-checkpoint layout (orbax)
  shardings.canonical_shardings / model_targets    each canonical tensor's sharding on a mesh
  run_checkpoint.load_run                          a trainer run's newest step, canonical
  parity                                           logits / greedy comparisons JAX <-> torch
  tiny                                             tiny random HF Llama dirs (tests, notebooks)

Shipped into hybrid exports (``trust_remote_code=True``; torch + transformers only):
``configuration_longgen.py``, ``cache_longgen.py``, ``modeling_longgen.py``.
"""
