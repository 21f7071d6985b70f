"""EdgeConfig: load, defaults, round trip, relative paths, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from isthmus.edge.auth import hash_key
from isthmus.edge.config import ConfigError, EdgeConfig
from isthmus.edge.config_write import main, write_default_config

MINIMAL = 'model = { path = "models/tiny" }\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults_and_resolved_paths(tmp_path: Path) -> None:
    cfg = EdgeConfig.load(write(tmp_path, MINIMAL))
    assert cfg.model.path == str((tmp_path / "models" / "tiny").resolve())
    assert cfg.listen.cert == str((tmp_path / "edge.crt").resolve())
    assert cfg.router.threshold is None and cfg.center.endpoints == []  # None: the model's default
    assert cfg.model_name == "tiny"
    assert cfg.source == str(tmp_path / "edge.toml")


def test_full_file(tmp_path: Path) -> None:
    text = f"""
[model]
path = "/models/ds7b"
quantization = "nf4"
device = "cuda:1"
[listen]
port = 5000
[auth]
[[auth.keys]]
sha256 = "{hash_key("k1")}"
name = "app"
max_concurrent = 4
[center]
endpoints = ["10.0.0.1:50051", "[::1]:50052", "center-2.internal:50051"]
tls = true
ca = "ca.pem"
[router]
threshold = 0.6
[router.weights]
math = 0.5
[confidence]
window = 8
max_checked_tokens = 32
[limits]
stream_high_watermark = 100000
[engine]
num_kv_blocks = 128
"""
    cfg = EdgeConfig.load(write(tmp_path, text))
    assert cfg.model.quantization == "nf4" and cfg.listen.port == 5000
    assert cfg.router.threshold == 0.6 and cfg.router.weights.math == 0.5 and cfg.router.weights.code == 0.15
    assert cfg.center.ca == str((tmp_path / "ca.pem").resolve())
    store = cfg.auth.store()
    assert store.acquire("k1").key_name == "app"
    opts = cfg.engine_options()
    assert (opts.quantization, opts.device, opts.num_kv_blocks, opts.max_waiting) == (
        "nf4",
        "cuda:1",
        128,
        1024,
    )
    assert cfg.limits.buffer_limits().stream_high == 100000
    assert cfg.confidence.monitor().window == 8
    kwargs = cfg.center.pool_kwargs()
    assert kwargs["tls"].ca_file == cfg.center.ca


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[center]\nendpoints = ["a:1", "nope"]', 'edge.toml: center.endpoints[1]: expected "host:port"'),
        ('[center]\nendpoints = ["a:70000"]', "center.endpoints[0]"),
        ("[center]\nendpoints = 5", "center.endpoints: expected an array"),
        ('[listen]\nport = "x"', "listen.port: expected an integer"),
        ("[listen]\nport = true", "listen.port: expected an integer"),
        ("[listen]\nport = 99999", "listen.port: expected a port"),
        ("[listen]\nprot = 1", "listen.prot: unknown key"),
        ("[bogus]\nx = 1", "bogus: unknown key"),
        ('[model]\npath = "m"\nquantization = "fp3"', "model.quantization: expected one of"),
        ("[router]\nthreshold = -0.5", "router.threshold: expected a finite number >= 0"),
        ("[router.weights]\nmath = -1", "router.weights.math"),
        ("[router]\nthreshold = nan", "router.threshold: expected a finite number"),
        ("[confidence]\nwindow = 0", "edge.toml: confidence.window: expected an integer >= 1"),
        ("[limits]\nstream_low_watermark = 10000000", "limits.stream_high_watermark"),
        ("[auth]\nallow_anonymous = false", "auth.keys: none configured"),
        ('[[auth.keys]]\nsha256 = "abc"', "auth.keys[0].sha256: expected 64"),
        ("[[auth.keys]]\nname = 'x'", "auth.keys[0]: "),
        ("[engine]\nkv_memory_fraction = 2.0", "engine.kv_memory_fraction"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        EdgeConfig.load(write(tmp_path, text if text.startswith("[model]") else MINIMAL + text))
    assert message in str(info.value)
    assert str(info.value).startswith("edge.toml: ")


def test_missing_model_path_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.path: required"):
        EdgeConfig.load(write(tmp_path, "[listen]\nport = 1\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        EdgeConfig.load(write(tmp_path, "[[["))
    with pytest.raises(ConfigError, match="cannot read"):
        EdgeConfig.load(tmp_path / "missing.toml")


def test_write_default_round_trips_and_keeps_existing(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "edge.toml"
    h = hash_key("secret")
    assert write_default_config(
        path,
        model="/m",
        centers=["c1:50051", "c2:50051"],
        port=4500,
        http_port=9100,
        api_key_hashes=[f"{h}:ops:2"],
    )
    cfg = EdgeConfig.load(path)
    assert cfg.center.endpoints == ["c1:50051", "c2:50051"]
    assert (cfg.listen.port, cfg.http.port) == (4500, 9100)
    assert cfg.auth.keys[0].name == "ops" and cfg.auth.keys[0].max_concurrent == 2
    before = path.read_text()
    assert write_default_config(path, model="/other") is False
    assert path.read_text() == before
    assert write_default_config(path, model="/other", force=True) is True
    assert EdgeConfig.load(path).model.path == "/other"


def test_round_trip_is_exact(tmp_path: Path) -> None:
    import tomllib

    cfg = EdgeConfig.load(write(tmp_path, MINIMAL + '[center]\nendpoints = ["x:1"]\nca = "/ca.pem"\n'))
    assert EdgeConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_write_refuses_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"center\.endpoints\[0\]"):
        write_default_config(tmp_path / "e.toml", model="/m", centers=["bad"])
    with pytest.raises(ConfigError, match=r"auth\.keys\[0\]\.sha256"):
        write_default_config(tmp_path / "e.toml", model="/m", api_key_hashes=["xyz:n"])
    assert not (tmp_path / "e.toml").exists()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "edge.toml"
    assert main(["write", "--out", str(out), "--model", "/m", "--center", "h:1"]) == 0
    assert main(["check", str(out)]) == 0
    out.write_text(MINIMAL + "[listen]\nport = -1\n")
    assert main(["check", str(out)]) == 1
    assert "listen.port" in capsys.readouterr().err


def test_example_config_documents_every_key() -> None:
    import tomllib

    example = Path(__file__).resolve().parents[2] / "deploy" / "edge.example.toml"
    cfg = EdgeConfig.load(example)
    assert cfg.model.quantization == "nf4" and len(cfg.center.endpoints) == 2
    text = example.read_text()
    defaults = tomllib.loads(EdgeConfig().to_toml())

    def check(prefix: str, table: dict[str, object]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                assert f"[{prefix}.{key}]" in text, f"{prefix}.{key}"
                check(f"{prefix}.{key}", value)
            elif (prefix, key) == ("auth", "keys"):
                assert "[[auth.keys]]" in text
            else:
                assert f"{key} =" in text, f"{prefix}.{key} missing from the example"

    for section, table in defaults.items():
        check(section, table)
