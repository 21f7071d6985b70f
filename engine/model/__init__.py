"""The model: config, the causal LM, attention, RoPE, checkpoints, loading, quantization and the
tensor-parallel rewrites. Modules here import torch (except `config`, `checkpoint` readers'
pure parts and `weights_sync`); this package's ``__init__`` imports nothing.
"""
