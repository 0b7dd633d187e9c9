"""Attention backends, one module per registered name (``registry.py`` lists them).

``xla`` (blocked XLA, any platform), ``pallas_tpu``, ``pallas_gpu`` (Pallas lowered to Triton,
with its Mosaic GPU forward in ``pallas_gpu_mosaic.py``), ``triton_native`` (jax-triton; its
Triton source in ``triton_native_kernels.py``), ``cudnn`` (+ ``cudnn_packed.py`` for packed rows,
``cudnn_common.py`` shared by both) and ``split`` (``split_gpu``). ``_frame.py`` holds what the
blocked backends share; ``gpu_tables.py`` the GPU kernels' visit lists.
"""
