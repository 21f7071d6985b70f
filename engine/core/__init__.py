"""The engine's torch-free core: scheduler, block manager, sequences, step plans, sampling params,
outputs, output processing, `EngineCore`, `AsyncEngine` and `LLM`.

Nothing here imports torch at module level (a test enforces it); the runner is imported lazily
when an engine is built with a real model.
"""
