"""The model runner: one forward step over a `SchedulePlan`, the paged KV cache, CUDA graphs,
device placement and the sampler. Everything here imports torch.
"""
