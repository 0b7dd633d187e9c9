"""Long-context evaluation: passkey, needle in a haystack, RULER-style tasks, perplexity by position.

``python -m longgen_jax.eval --checkpoint=... --task=... --lengths=4k,8k,...,128k`` (``cli.py``;
``docs/eval.md``). Prompts are generated offline from the texts shipped in ``eval/texts/`` and from
seeded generators; models run through the serving engine (``longgen_jax.infer``), so the
inference-time KV-dropping baseline (``--kv_drop``) is scored with exactly the cache it would be
served with.
"""
