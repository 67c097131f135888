"""Configuration: HOCON in, frozen dataclasses out, every key checked.

Parsed once, before the reactor starts. An unknown key or a bad value raises
ConfigError naming the key's full path, so a typo stops start-up instead of being
silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException
from pyparsing import ParseBaseException

from twinkly.auth import METHODS, ClientAuthConfig

TLS_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
BACKEND_KEYS = ("postgresql", "yugabytedb")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key's path."""


@dataclass(frozen=True)
class BackendConfig:
    name: str  # "postgresql" or "yugabytedb": the key it came from
    label: str
    host: str = "127.0.0.1"
    port: int = 5432
    user: str | None = None  # None: the client's user name
    password: str | None = None
    database: str | None = None  # None: the client's database
    tls: str = "disable"
    ca_file: str | None = None
    connect_timeout: float = 10.0

    def describe(self) -> str:
        return f"{self.label} ({self.host}:{self.port})"


@dataclass(frozen=True)
class FlowConfig:
    # Target results held ahead of the truth before the target is paused.
    max_target_ahead: int = 1000
    # Held results past which the session stops pairing instead of growing.
    max_held_results: int = 100_000


@dataclass(frozen=True)
class ProxyConfig:
    listen_address: str = "127.0.0.1"
    listen_port: int = 5431
    max_message_bytes: int = 64 * 1024 * 1024
    shutdown_timeout: float = 10.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    auth: ClientAuthConfig = field(default_factory=ClientAuthConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    # Regexes: matching simple queries go to that backend only.
    postgres_only_patterns: tuple[str, ...] = ()
    yugabyte_only_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExplainConfig:
    """comparison.explain: plans of slow statements, taken on side connections."""

    enabled: bool = True
    analyze: bool = True  # EXPLAIN ANALYZE what is provably read-only
    statement_timeout: float = 5.0
    max_concurrent: int = 2
    max_queued: int = 16


@dataclass(frozen=True)
class AIConfig:
    """comparison.ai: an OpenAI-compatible endpoint explaining slow statements."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:8080/v1/chat/completions"
    model: str = "gpt-4o-mini"
    api_key_env: str = "TWINKLY_AI_API_KEY"  # the key itself never sits in the file
    timeout: float = 30.0
    max_per_minute: int = 6
    redact: bool = True


@dataclass(frozen=True)
class ComparisonConfig:
    enabled: bool = True
    source_of_truth: str = "postgresql"
    fail_on_differences: bool = False
    log_differences_only: bool = False
    exclude_patterns: tuple[str, ...] = ()  # regexes: run on both, never compared
    float_tolerance: float = 1e-9
    numeric_scale: bool = True
    timestamptz_as_instant: bool = True
    jsonb_key_order: bool = True
    max_sample_rows: int = 20  # differing rows kept per event
    max_compared_rows: int = 10_000  # rows kept per result for a value-level diff
    max_target_lag: int = 1000  # truth results the target may lag before the client waits
    max_target_lag_bytes: int = 64 * 1024 * 1024  # truth bytes not yet matched by the target
    sample_rate: float = 1.0
    hold_bytes: int = 8 * 1024 * 1024  # fail-on-differences: truth bytes held per group
    report_slow_queries: bool = True
    fail_on_slow_queries: bool = False
    slow_query_ratio: float = 4.0
    slow_query_min_ms: float = 10.0
    slow_query_min_samples: int = 20
    slow_query_interval: float = 60.0  # seconds between slow_query events of a fingerprint
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    ai: AIConfig = field(default_factory=AIConfig)


@dataclass(frozen=True)
class ReportingConfig:
    events_file: str = "reports/twinkly-events.jsonl"
    redact: bool = False
    bundles: str | None = None  # directory for one repro bundle per mismatching fingerprint


@dataclass(frozen=True)
class MonitoringConfig:
    log_errors: bool = False


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig
    postgresql: BackendConfig
    yugabytedb: BackendConfig
    comparison: ComparisonConfig = field(default_factory=ComparisonConfig)
    reporting: ReportingConfig = field(default_factory=ReportingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)

    @property
    def truth(self) -> BackendConfig:
        return (
            self.postgresql if self.comparison.source_of_truth == "postgresql" else self.yugabytedb
        )

    @property
    def target(self) -> BackendConfig:
        return (
            self.yugabytedb if self.comparison.source_of_truth == "postgresql" else self.postgresql
        )

    def with_overrides(
        self,
        listen: tuple[str, int] | None = None,
        source_of_truth: str | None = None,
    ) -> Config:
        config = self
        if listen is not None:
            proxy = replace(config.proxy, listen_address=listen[0], listen_port=listen[1])
            config = replace(config, proxy=proxy)
        if source_of_truth is not None:
            if source_of_truth not in BACKEND_KEYS:
                raise ConfigError(
                    f"comparison.source-of-truth: must be one of {', '.join(BACKEND_KEYS)},"
                    f" got {source_of_truth!r}"
                )
            comparison = replace(config.comparison, source_of_truth=source_of_truth)
            config = replace(config, comparison=comparison)
        return config


# --- reading typed values with their path ----------------------------------------------


class _Section:
    """One HOCON object being read; remembers which keys were consumed."""

    def __init__(self, tree: ConfigTree | None, path: str) -> None:
        self._tree = tree if tree is not None else ConfigTree()
        self._path = path
        self._used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _raw(self, key: str) -> Any:
        self._used.add(key)
        return self._tree.get(key, None) if key in self._tree else None

    def section(self, key: str) -> _Section:
        value = self._raw(key)
        if value is not None and not isinstance(value, ConfigTree):
            raise ConfigError(f"{self._key(key)}: expected an object, got {value!r}")
        return _Section(value, self._key(key))

    def string(
        self, key: str, default: str | None, choices: tuple[str, ...] = (), exact: bool = False
    ) -> Any:
        """A string; with ``exact``, only a quoted one (HOCON reads ``007`` as 7)."""
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, (ConfigTree, list, bool)) or (exact and not isinstance(value, str)):
            raise ConfigError(
                f"{self._key(key)}: expected a string{' in quotes' if exact else ''}, got {value!r}"
            )
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(
                f"{self._key(key)}: must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{self._key(key)}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{self._key(key)}: expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{self._key(key)}: must be between {low} and {high}, got {number}")
        return number

    def seconds(self, key: str, default: float) -> float:
        value = self._raw(key)
        if value is None:
            return default
        try:
            number = _parse_seconds(value)
        except ValueError:
            raise ConfigError(
                f"{self._key(key)}: expected a duration such as 10, 10s or 500ms, got {value!r}"
            ) from None
        if number < 0:
            raise ConfigError(f"{self._key(key)}: must not be negative")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "on"):
            return True
        if str(value).lower() in ("false", "no", "off"):
            return False
        raise ConfigError(f"{self._key(key)}: expected true or false, got {value!r}")

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._raw(key)
        if value is None:
            return default
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
        except ValueError:
            raise ConfigError(f"{self._key(key)}: expected a number, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{self._key(key)}: must be between {low} and {high}, got {number}")
        return number

    def patterns(self, key: str) -> tuple[str, ...]:
        """A list of regexes, taken literally and compiled once to check them."""
        out = []
        for index, value in enumerate(self.raw_list(key)):
            path = f"{self._key(key)}[{index}]"
            if not isinstance(value, str):
                raise ConfigError(f"{path}: expected a regular expression in quotes")
            try:
                re.compile(value)
            except re.error as e:
                raise ConfigError(f"{path}: invalid regular expression {value!r}: {e}") from None
            out.append(value)
        return tuple(out)

    def raw_list(self, key: str) -> list[Any]:
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self._key(key)}: expected a list, got {value!r}")
        return value

    def finish(self) -> None:
        """Reject every key that was not read."""
        for key in self._tree:
            if key not in self._used:
                raise ConfigError(f"{self._key(key)}: unknown configuration key")


def _parse_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if type(value).__name__ == "relativedelta":  # pyhocon's reading of "5 seconds"
        if value.years or value.months:
            raise ValueError(value)
        parts = ("days", "hours", "minutes", "seconds", "microseconds")
        return timedelta(**{p: getattr(value, p) for p in parts}).total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


# --- the schema -----------------------------------------------------------------------


def _backend(section: _Section, name: str, default_port: int) -> BackendConfig:
    config = BackendConfig(
        name=name,
        label=section.string("label", name),
        host=section.string("host", "127.0.0.1"),
        port=section.integer("port", default_port, 1, 65535),
        user=section.string("user", None),
        password=section.string("password", None, exact=True),
        database=section.string("database", None),
        tls=section.string("tls", "disable", TLS_MODES),
        ca_file=section.string("ca-file", None),
        connect_timeout=section.seconds("connect-timeout", 10.0),
    )
    if config.tls in ("verify-ca", "verify-full") and not config.ca_file:
        raise ConfigError(f"{section._key('ca-file')}: required when tls = {config.tls}")
    section.finish()
    return config


def _client_auth(section: _Section) -> ClientAuthConfig:
    method = section.string("method", "trust", METHODS)
    users = []
    for index, entry in enumerate(section.raw_list("users")):
        path = f"{section._key('users')}[{index}]"
        if not isinstance(entry, ConfigTree):
            raise ConfigError(f"{path}: expected an object with name and password")
        user = _Section(entry, path)
        name = user.string("name", None)
        password = user.string("password", None, exact=True)
        if not name:
            raise ConfigError(f"{path}.name: required")
        if password is None and method != "trust":
            raise ConfigError(f"{path}.password: required for auth method {method}")
        user.finish()
        users.append((name, password or ""))
    if method != "trust" and not users:
        raise ConfigError(f"{section._key('users')}: auth method {method} needs at least one user")
    section.finish()
    return ClientAuthConfig(method, tuple(users))


def _proxy(section: _Section) -> ProxyConfig:
    tls = section.section("tls")
    flow = section.section("flow")
    auth = section.section("auth")
    routing = section.section("routing")
    config = ProxyConfig(
        listen_address=section.string("listen-address", "127.0.0.1"),
        listen_port=section.integer("listen-port", 5431, 0, 65535),
        max_message_bytes=section.integer(
            "max-message-bytes", 64 * 1024 * 1024, 1024, 1024 * 1024 * 1024
        ),
        shutdown_timeout=section.seconds("shutdown-timeout", 10.0),
        tls_cert_file=tls.string("cert-file", None),
        tls_key_file=tls.string("key-file", None),
        auth=_client_auth(auth),
        flow=FlowConfig(
            max_target_ahead=flow.integer("max-target-ahead", 1000, 1, 10_000_000),
            max_held_results=flow.integer("max-held-results", 100_000, 10, 100_000_000),
        ),
        postgres_only_patterns=routing.patterns("postgres-only-patterns"),
        yugabyte_only_patterns=routing.patterns("yugabyte-only-patterns"),
    )
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        raise ConfigError("proxy.tls: cert-file and key-file must be given together")
    for key in ("cert-file", "key-file"):
        value = tls.string(key, None)
        if value and not Path(value).is_file():
            raise ConfigError(f"proxy.tls.{key}: no such file: {value}")
    tls.finish()
    flow.finish()
    routing.finish()
    section.finish()
    return config


def from_tree(tree: ConfigTree) -> Config:
    root = _Section(tree, "")
    proxy_section = root.section("proxy")
    postgresql = _backend(proxy_section.section("postgresql"), "postgresql", 5432)
    yugabytedb = _backend(proxy_section.section("yugabytedb"), "yugabytedb", 5433)
    proxy = _proxy(proxy_section)
    comparison = _comparison(root.section("comparison"))
    reporting_section = root.section("reporting")
    reporting = ReportingConfig(
        events_file=reporting_section.string("events-file", ReportingConfig.events_file),
        redact=reporting_section.boolean("redact", False),
        bundles=reporting_section.string("bundles", None),
    )
    reporting_section.finish()
    monitoring_section = root.section("monitoring")
    monitoring = MonitoringConfig(log_errors=monitoring_section.boolean("log-errors", False))
    monitoring_section.finish()
    root.finish()
    if (postgresql.host, postgresql.port) == (yugabytedb.host, yugabytedb.port):
        raise ConfigError(
            "proxy.yugabytedb.port: both backends point at the same server"
            f" {postgresql.host}:{postgresql.port}"
        )
    return Config(
        proxy=proxy,
        postgresql=postgresql,
        yugabytedb=yugabytedb,
        comparison=comparison,
        reporting=reporting,
        monitoring=monitoring,
    )


def _comparison(section: _Section) -> ComparisonConfig:
    normalize = section.section("normalize")
    config = ComparisonConfig(
        enabled=section.boolean("enabled", True),
        source_of_truth=section.string("source-of-truth", "postgresql", BACKEND_KEYS),
        fail_on_differences=section.boolean("fail-on-differences", False),
        log_differences_only=section.boolean("log-differences-only", False),
        exclude_patterns=section.patterns("exclude-patterns"),
        float_tolerance=section.number("float-tolerance", 1e-9, 0.0, 1.0),
        numeric_scale=normalize.boolean("numeric-scale", True),
        timestamptz_as_instant=normalize.boolean("timestamptz-as-instant", True),
        jsonb_key_order=normalize.boolean("jsonb-key-order", True),
        max_sample_rows=section.integer("max-sample-rows", 20, 0, 10_000),
        max_compared_rows=section.integer("max-compared-rows", 10_000, 0, 10_000_000),
        max_target_lag=section.integer("max-target-lag", 1000, 1, 10_000_000),
        max_target_lag_bytes=section.integer(
            "max-target-lag-bytes", 64 * 1024 * 1024, 1024, 1 << 40
        ),
        sample_rate=section.number("sample-rate", 1.0, 0.0, 1.0),
        hold_bytes=section.integer("hold-bytes", 8 * 1024 * 1024, 1024, 1 << 34),
        report_slow_queries=section.boolean("report-slow-queries", True),
        fail_on_slow_queries=section.boolean("fail-on-slow-queries", False),
        slow_query_ratio=section.number("slow-query-ratio", 4.0, 1.0, 1e6),
        slow_query_min_ms=section.number("slow-query-min-ms", 10.0, 0.0, 1e9),
        slow_query_min_samples=section.integer("slow-query-min-samples", 20, 1, 1 << 31),
        slow_query_interval=section.seconds("slow-query-interval", 60.0),
        explain=_explain(section.section("explain")),
        ai=_ai(section.section("ai")),
    )
    normalize.finish()
    section.finish()
    return config


def _explain(section: _Section) -> ExplainConfig:
    config = ExplainConfig(
        enabled=section.boolean("enabled", True),
        analyze=section.boolean("analyze", True),
        statement_timeout=section.seconds("statement-timeout", 5.0),
        max_concurrent=section.integer("max-concurrent", 2, 1, 64),
        max_queued=section.integer("max-queued", 16, 0, 10_000),
    )
    section.finish()
    return config


def _ai(section: _Section) -> AIConfig:
    config = AIConfig(
        enabled=section.boolean("enabled", False),
        endpoint=section.string("endpoint", AIConfig.endpoint),
        model=section.string("model", AIConfig.model),
        api_key_env=section.string("api-key-env", AIConfig.api_key_env),
        timeout=section.seconds("timeout", 30.0),
        max_per_minute=section.integer("max-per-minute", 6, 0, 100_000),
        redact=section.boolean("redact", True),
    )
    if config.enabled and not config.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{section._key('endpoint')}: must be an http:// or https:// URL")
    section.finish()
    return config


def load(path: str | Path) -> Config:
    """Parse a HOCON file (with environment substitution) into a Config."""
    try:
        tree = ConfigFactory.parse_file(str(path), resolve=True)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except (ConfigException, ValueError, ParseBaseException) as e:
        raise ConfigError(f"{path}: {e}") from None
    return from_tree(tree)


def loads(text: str) -> Config:
    try:
        tree = ConfigFactory.parse_string(text, resolve=True)
    except (ConfigException, ValueError, ParseBaseException) as e:
        raise ConfigError(str(e)) from None
    return from_tree(tree)
