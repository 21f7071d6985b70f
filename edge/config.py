"""Edge node configuration: one TOML file, dataclasses with defaults, errors that name the field.

`EdgeConfig.load("edge.toml")` refuses anything invalid with a `ConfigError` such as
``edge.toml: center.endpoints[1]: expected "host:port", got 'nope'``. Relative paths in the file
(model, certificates) are resolved against the file's folder. `deploy/edge.example.toml` documents
every key. `python -m isthmus.edge.config write|check` is what the installer uses.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isthmus.protocol.limits import MAX_FRAME_SIZE

from .allowlist import parse_networks
from .auth import ApiKey, ApiKeyStore
from .confidence import ConfidenceMonitor
from .jwt_auth import JwtConfig, JwtVerifier
from .router import RouterConfig
from .toml_dataclass import ConfigError, from_table, to_toml

if TYPE_CHECKING:  # built on demand by the methods below: a config alone loads none of them
    from isthmus.engine.core.options import EngineOptions

    from .ab_split import AbSplit
    from .audit import AuditLog
    from .auth_throttle import ThrottleLimits
    from .buffers import BufferLimits
    from .quic_limits import QuicLimits

__all__ = ["ConfigError", "EdgeConfig"]

_ENDPOINT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_QUANTIZATIONS = ("none", "nf4", "int8")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EdgeModelConfig:
    """The edge's `[model]` section (the checkpoint's own config is `engine.model.config.ModelConfig`)."""

    path: str = ""  # Hugging Face checkpoint folder (required)
    name: str = ""  # reported in Done.model; default: the folder name
    quantization: str = "none"  # "none", "nf4", "int8"
    dtype: str = "auto"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"

    def __post_init__(self) -> None:
        if self.quantization not in _QUANTIZATIONS:
            raise ValueError(
                f"quantization: expected one of {', '.join(_QUANTIZATIONS)}, got {self.quantization!r}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if not re.match(r"^(cpu|cuda(:\d+)?)$", self.device):
            raise ValueError(f'device: expected "cpu", "cuda" or "cuda:N", got {self.device!r}')


@dataclass(frozen=True)
class ListenConfig:
    """The QUIC listener for apps."""

    host: str = "0.0.0.0"
    port: int = 4433  # UDP
    cert: str = "edge.crt"  # PEM certificate chain
    key: str = "edge.key"  # PEM private key
    allow: list[str] = field(default_factory=list)  # CIDRs served (allowlist.py); [] = every address

    def __post_init__(self) -> None:
        _check_port("port", self.port, allow_zero=True)
        parse_networks(self.allow)


@dataclass(frozen=True)
class HttpConfig:
    """Metrics, health and the OpenAI-compatible API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9090  # TCP
    ready_requires_center: bool = False  # /readyz also needs a healthy center replica
    allow: list[str] = field(default_factory=list)  # CIDRs served (allowlist.py); [] = every address

    def __post_init__(self) -> None:
        _check_port("port", self.port, allow_zero=True)
        parse_networks(self.allow)


@dataclass(frozen=True)
class AuthConfig:
    """API keys as sha256 hex digests (`isthmus.edge.auth.hash_key`)."""

    allow_anonymous: bool = True  # only when no keys are configured
    anonymous_max_concurrent: int = 0  # 0 = unlimited
    max_failed_attempts: int = 10  # wrong keys one source address may present in a burst
    failed_attempt_window_s: float = 60.0  # seconds for that burst to be credited back
    max_throttled_sources: int = 65536  # source addresses remembered by the throttle
    keys: list[ApiKey] = field(default_factory=list)
    jwt: JwtConfig = field(default_factory=JwtConfig)  # bearer tokens beside the keys (jwt_auth.py)

    def __post_init__(self) -> None:
        if not self.keys and not self.jwt.enabled and not self.allow_anonymous:
            raise ValueError("keys: none configured and allow_anonymous = false would refuse every request")
        if self.anonymous_max_concurrent < 0:
            raise ValueError("anonymous_max_concurrent: expected an integer >= 0")
        self.throttle_limits()  # its errors name the field

    def throttle_limits(self) -> ThrottleLimits:
        from .auth_throttle import ThrottleLimits

        return ThrottleLimits(
            max_failures=self.max_failed_attempts,
            window_s=self.failed_attempt_window_s,
            max_sources=self.max_throttled_sources,
        )

    def store(self, audit: AuditLog | None = None) -> ApiKeyStore:
        """The key store; `audit` (an `AuditLog` or None) records its refused authentications."""
        return ApiKeyStore(
            self.keys,
            allow_anonymous=self.allow_anonymous,
            anonymous_max_concurrent=self.anonymous_max_concurrent,
            throttle=self.throttle_limits(),
            audit=audit,
            jwt=JwtVerifier(self.jwt) if self.jwt.enabled else None,
        )


@dataclass(frozen=True)
class AuditConfig:
    """The audit log (`audit.py`): admin actions and refused authentications, one JSON line each."""

    path: str = ""  # "" = off, "-" = stdout (the journal), else a file rotated by size
    max_bytes: int = 10 * 1024 * 1024  # bytes before the file rotates
    backups: int = 5  # rotated files kept (audit.log.1 ...)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("max_bytes: expected an integer >= 1")
        if self.backups < 0:
            raise ValueError("backups: expected an integer >= 0")

    def open(self) -> AuditLog | None:
        """An `AuditLog`, or None when off."""
        if not self.path:
            return None
        from .audit import AuditLog

        return AuditLog.open(self.path, max_bytes=self.max_bytes, backups=self.backups)


@dataclass(frozen=True)
class CenterConfig:
    """Center replicas (each one TP group) and how to reach them."""

    endpoints: list[str] = field(default_factory=list)  # "host:port"
    tls: bool = False
    ca: str | None = None  # PEM CA bundle (None: system roots)
    cert: str | None = None  # PEM client certificate for mutual TLS
    key: str | None = None  # PEM client key
    server_name: str | None = None
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    max_attempts: int = 3
    breaker_failures: int = 3
    breaker_cooldown_s: float = 5.0
    # per endpoint, same order; [] = all 1.0; 0 = no new requests (admin API: POST /admin/pool)
    weights: list[float] = field(default_factory=list)
    # False: a replica whose Status.weights_digest differs from the pool's is kept out (pool_digest.py)
    allow_mixed_weights: bool = False

    def __post_init__(self) -> None:
        if self.weights and len(self.weights) != len(self.endpoints):
            num = len(self.endpoints)
            raise ValueError(f"weights: expected one per endpoint ({num}), got {len(self.weights)}")
        for i, w in enumerate(self.weights):
            if not 0 <= w <= 1000:
                raise ValueError(f"weights[{i}]: expected a number in [0, 1000], got {w!r}")
        for i, ep in enumerate(self.endpoints):
            m = _ENDPOINT.match(ep)
            if m is None or not 1 <= int(m.group(1)) <= 65535:
                raise ValueError(f'endpoints[{i}]: expected "host:port", got {ep!r}')
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert: cert and key must be given together")
        for name in ("health_interval_s", "health_timeout_s", "breaker_cooldown_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a number > 0")
        if self.max_attempts < 1 or self.breaker_failures < 1:
            raise ValueError("max_attempts: max_attempts and breaker_failures must be >= 1")

    def pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `CenterPool(endpoints, **kwargs)`."""
        from .replica import CenterTls, PoolOptions

        tls = None
        if self.tls:
            tls = CenterTls(
                ca_file=self.ca, cert_file=self.cert, key_file=self.key, server_name=self.server_name
            )
        options = PoolOptions(
            health_interval_s=self.health_interval_s,
            health_timeout_s=self.health_timeout_s,
            max_attempts=self.max_attempts,
            breaker_failures=self.breaker_failures,
            breaker_cooldown_s=self.breaker_cooldown_s,
            breaker_max_cooldown_s=max(60.0, self.breaker_cooldown_s),
            allow_mixed_weights=self.allow_mixed_weights,
        )
        return {"tls": tls, "options": options}


@dataclass(frozen=True)
class AbConfig:
    """A/B split of center traffic between the `[center]` pool (stable) and a candidate pool
    (`ab_split.py`); on when `candidate_endpoints` is set. Same TLS and pool options as `[center]`."""

    candidate_endpoints: list[str] = field(default_factory=list)  # "host:port"
    candidate_weights: list[float] = field(default_factory=list)  # per endpoint; [] = all 1.0
    percent: float = 0.0  # share of sticky ids sent to the candidate, 0-100
    sticky: str = "user"  # "user": the request's user id, else its API key; "key": the API key
    salt: str = ""  # hashed with the sticky id; change it to reshuffle who is on which variant
    rollout_state: str = "rollout-state.json"  # canary rollout state (rollout_driver.py); "" = not kept

    def __post_init__(self) -> None:
        try:  # the same checks as [center]; errors renamed to these fields
            CenterConfig(endpoints=self.candidate_endpoints, weights=self.candidate_weights)
        except ValueError as exc:
            raise ValueError(f"candidate_{exc}") from None
        self.split()

    @property
    def enabled(self) -> bool:
        return bool(self.candidate_endpoints)

    def split(self) -> AbSplit:
        from .ab_split import AbSplit

        return AbSplit(percent=self.percent, salt=self.salt, sticky=self.sticky)


@dataclass(frozen=True)
class AdminConfig:
    """The admin API (`admin_api.py`) on the HTTP port: off unless a token digest is set."""

    token_sha256: str = ""  # sha256 hex of the admin token (`isthmus.edge.auth.hash_key`); "" = off

    def __post_init__(self) -> None:
        if self.token_sha256 and not re.match(r"^[0-9a-f]{64}$", self.token_sha256):
            raise ValueError("token_sha256: expected 64 lowercase hex characters")


@dataclass(frozen=True)
class LogConfig:
    level: str = ""  # "DEBUG", "INFO", "WARNING", "ERROR"; "" = the --log-level given at start

    def __post_init__(self) -> None:
        if self.level not in ("", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"level: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.level!r}")


@dataclass(frozen=True)
class ConfidenceConfig:
    """Mid-answer hand-over on a confidence collapse (see `confidence.py`)."""

    enabled: bool = True
    window: int = 16  # tokens
    threshold: float = 3.0  # nats: mean entropy over the window
    max_checked_tokens: int = 64  # tokens

    def __post_init__(self) -> None:
        try:
            ConfidenceMonitor(self.window, self.threshold, self.max_checked_tokens)
        except ValueError as exc:  # its messages say "confidence.<field>"; we are already inside it
            raise ValueError(str(exc).removeprefix("confidence.")) from None

    def monitor(self) -> ConfidenceMonitor:
        return ConfidenceMonitor(self.window, self.threshold, self.max_checked_tokens)


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = 1024
    max_streams_per_connection: int = 64
    max_frame_size: int = MAX_FRAME_SIZE  # bytes
    idle_timeout_s: float = 60.0
    stream_high_watermark: int = 256 * 1024  # bytes unacknowledged: pause the stream
    stream_low_watermark: int = 64 * 1024  # bytes: resume
    stream_hard_limit: int = 1024 * 1024  # bytes: cancel with SLOW_READER
    connection_high_watermark: int = 4 * 1024 * 1024  # bytes
    connection_low_watermark: int = 1024 * 1024  # bytes
    stall_timeout_s: float = 30.0  # seconds paused before SLOW_READER
    max_queue: int = 1024  # requests waiting in the engine
    max_prompt_tokens: int | None = None  # default: the model's context length
    max_connections_per_source: int = 256  # QUIC connections from one source address
    evict_idle_after_s: float = 2.0  # at max_connections, a connection this idle may be evicted
    max_receive_buffer_per_connection: int = 8 * 1024 * 1024  # bytes held before requests are read
    max_receive_buffer_total: int = 256 * 1024 * 1024  # bytes: the same over all connections

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise ValueError(f"{f.name}: expected a number > 0, got {value!r}")
        if not 0 < self.max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size: at most {MAX_FRAME_SIZE} bytes (the protocol limit)")
        if not self.stream_low_watermark <= self.stream_high_watermark <= self.stream_hard_limit:
            raise ValueError("stream_high_watermark: need stream_low <= stream_high <= stream_hard_limit")
        if not self.connection_low_watermark <= self.connection_high_watermark:
            raise ValueError("connection_high_watermark: need connection_low <= connection_high")

    def buffer_limits(self) -> BufferLimits:
        from .buffers import BufferLimits

        return BufferLimits(
            stream_high=self.stream_high_watermark,
            stream_low=self.stream_low_watermark,
            stream_hard=self.stream_hard_limit,
            connection_high=self.connection_high_watermark,
            connection_low=self.connection_low_watermark,
            stall_timeout_s=self.stall_timeout_s,
        )

    def quic_limits(self) -> QuicLimits:
        from .quic_limits import QuicLimits
        from .receive_budget import ReceiveLimits

        return QuicLimits(
            max_connections=self.max_connections,
            max_streams_per_connection=self.max_streams_per_connection,
            max_frame_size=self.max_frame_size,
            idle_timeout_s=self.idle_timeout_s,
            buffers=self.buffer_limits(),
            max_connections_per_source=self.max_connections_per_source,
            evict_idle_after_s=self.evict_idle_after_s,
            receive=ReceiveLimits(
                max_per_connection=self.max_receive_buffer_per_connection,
                max_total=self.max_receive_buffer_total,
            ),
        )


@dataclass(frozen=True)
class EngineConfig:
    """Engine sizing (see `isthmus.engine.core.options.EngineOptions`)."""

    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None
    kv_cache_memory: int | None = None  # bytes
    kv_memory_fraction: float = 0.3
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None
    use_cuda_graphs: bool = True
    seed: int = 0
    verify_checksums: bool = False
    enable_prefix_caching: bool = True  # reuse the KV of shared prompt prefixes (docs/prefix-caching.md)

    def __post_init__(self) -> None:
        if not 0 < self.kv_memory_fraction <= 1:
            raise ValueError("kv_memory_fraction: expected a number in (0, 1]")
        for name in (
            "block_size",
            "num_kv_blocks",
            "kv_cache_memory",
            "max_num_seqs",
            "max_num_batched_tokens",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class EdgeConfig:
    """The whole edge node configuration. `load(path)` reads and checks a TOML file."""

    model: EdgeModelConfig = field(default_factory=EdgeModelConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    center: CenterConfig = field(default_factory=CenterConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    ab: AbConfig = field(default_factory=AbConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str | None = field(default=None, compare=False)  # the file it was read from

    @classmethod
    def load(cls, path: str | Path) -> EdgeConfig:
        """Read, check and resolve a TOML config; raises ConfigError naming the file and field."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        cfg = cls.from_dict(data, name=path.name, base_dir=path.parent, source=str(path))
        _check_router_model(cfg.router.model, path.name)
        _check_auth(cfg.auth, path.name)
        return cfg

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        name: str = "edge.toml",
        base_dir: Path | None = None,
        source: str | None = None,
    ) -> EdgeConfig:
        if "source" in data:
            raise ConfigError(f"{name}: source: unknown key")
        try:
            cfg = from_table(cls, data, "")
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        if not cfg.model.path:
            raise ConfigError(f"{name}: model.path: required")
        return cfg._resolved(base_dir, source) if base_dir is not None else cfg

    def _resolved(self, base: Path, source: str | None) -> EdgeConfig:
        def res(p: str | None) -> str | None:
            return str((base / p).resolve()) if p and not Path(p).is_absolute() else p

        return dataclasses.replace(
            self,
            model=dataclasses.replace(self.model, path=res(self.model.path) or ""),
            listen=dataclasses.replace(
                self.listen, cert=res(self.listen.cert) or "", key=res(self.listen.key) or ""
            ),
            center=dataclasses.replace(
                self.center, ca=res(self.center.ca), cert=res(self.center.cert), key=res(self.center.key)
            ),
            router=dataclasses.replace(self.router, model=_router_model_path(self.router.model, res)),
            auth=dataclasses.replace(self.auth, jwt=self.auth.jwt.resolved(res)),
            audit=dataclasses.replace(self.audit, path=_router_model_path(self.audit.path, res)),
            ab=dataclasses.replace(self.ab, rollout_state=res(self.ab.rollout_state) or ""),
            source=source,
        )

    @property
    def model_name(self) -> str:
        return self.model.name or Path(self.model.path).name

    def engine_options(self) -> EngineOptions:
        """`EngineOptions` for the edge engine."""
        from isthmus.engine.core.options import EngineOptions

        e = self.engine
        return EngineOptions(
            model=self.model.path,
            dtype=self.model.dtype,
            quantization=None if self.model.quantization == "none" else self.model.quantization,
            device=self.model.device,
            verify_checksums=e.verify_checksums,
            block_size=e.block_size,
            num_kv_blocks=e.num_kv_blocks,
            kv_cache_memory=e.kv_cache_memory,
            kv_memory_fraction=e.kv_memory_fraction,
            max_num_seqs=e.max_num_seqs,
            max_num_batched_tokens=e.max_num_batched_tokens,
            max_waiting=self.limits.max_queue,
            max_model_len=e.max_model_len,
            use_cuda_graphs=e.use_cuda_graphs,
            seed=e.seed,
            enable_prefix_caching=e.enable_prefix_caching,
        )

    def to_toml(self) -> str:
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        return to_toml(sections)


def _router_model_path(model: str, res: Any) -> str:
    """A `[router] model` file resolved like the other paths; "" and "heuristic" are not files
    (nor is "-", stdout for `[audit] path`, which is resolved the same way)."""
    return model if model in ("", "heuristic", "-") else res(model) or ""


def _check_router_model(model: str, name: str) -> None:
    """Refuse a `[router] model` file that cannot be loaded, naming the file and the problem."""
    from .router import load_model

    try:
        load_model(model)
    except ValueError as exc:  # RouterModelError
        raise ConfigError(f"{name}: router.model: {exc}") from None


def _check_auth(auth: AuthConfig, name: str) -> None:
    """Refuse JWT key files that cannot be read or parsed, or tenants named like keys."""
    try:
        auth.store()
    except ValueError as exc:
        raise ConfigError(f"{name}: auth: {exc}") from None


def _check_port(name: str, port: int, allow_zero: bool) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"{name}: expected a port number 0-65535, got {port!r}")


if __name__ == "__main__":  # `python -m isthmus.edge.config write|check` (installer, unit)
    from isthmus.edge.config_write import main

    raise SystemExit(main())
