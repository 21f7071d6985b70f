"""Names that collided across packages are distinct now; the engine's old public name stays as an alias."""

from __future__ import annotations

import isthmus.engine as engine
from isthmus import protocol
from isthmus.engine.core.outputs import TokenUsage, Usage


def test_engine_usage_is_token_usage_and_still_exported() -> None:
    assert "TokenUsage" in engine.__all__ and "Usage" in engine.__all__  # no public name lost
    assert engine.TokenUsage is TokenUsage and engine.Usage is TokenUsage and Usage is TokenUsage
    assert TokenUsage is not protocol.Usage


def test_edge_model_config_is_not_the_engine_model_config() -> None:
    from isthmus.edge import config as edge_config

    assert not hasattr(edge_config, "ModelConfig")
    assert edge_config.EdgeModelConfig().quantization == "none"
