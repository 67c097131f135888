"""Configuration: HOCON in, frozen dataclasses out, every key checked.

Parsed once, before the reactor starts. An unknown key or a bad value raises
ConfigError naming the key's full path, so a typo stops start-up instead of being
silently ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException
from pyparsing import ParseBaseException

from twinkly.config.hocon import ConfigError, Section

__all__ = ["Config", "ConfigError", "load", "loads"]

TLS_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
BACKEND_KEYS = ("postgresql", "yugabytedb")
FSYNC_MODES = ("never", "interval", "always")


METHODS = ("trust", "password", "md5", "scram-sha-256")  # client authentication


@dataclass(frozen=True)
class ClientAuthConfig:
    method: str = "trust"  # one of METHODS
    users: tuple[tuple[str, str], ...] = ()  # (name, password or md5 hash)

    def password_of(self, user: str) -> str | None:
        return dict(self.users).get(user)


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

    @property
    def socket_path(self) -> str | None:
        """The Unix socket to connect to when ``host`` is a directory (it starts with
        a slash, as in libpq), or None for TCP."""
        if not self.host.startswith("/"):
            return None
        return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"

    def describe(self) -> str:
        return f"{self.label} ({self.socket_path or f'{self.host}:{self.port}'})"


@dataclass(frozen=True)
class FlowConfig:
    # Target results held ahead of the truth before the target is paused.
    max_target_ahead: int = 1000
    # Held results past which the session stops pairing instead of growing.
    max_held_results: int = 100_000


@dataclass(frozen=True)
class AdminConfig:
    """proxy.admin: the console on the virtual database, for these users only."""

    users: tuple[str, ...] = ()
    database: str = "twinkly"


@dataclass(frozen=True)
class ProxyConfig:
    listen_address: str = "127.0.0.1"
    listen_port: int = 5431
    max_message_bytes: int = 64 * 1024 * 1024
    shutdown_timeout: float = 10.0
    workers: int = 1  # proxy processes sharing the listening address ("auto": one per core)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    auth: ClientAuthConfig = field(default_factory=ClientAuthConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    # Regexes: matching simple queries go to that backend only.
    postgres_only_patterns: tuple[str, ...] = ()
    yugabyte_only_patterns: tuple[str, ...] = ()
    admin: AdminConfig = field(default_factory=AdminConfig)
    # Limits, as in pgbouncer: start-up and authentication must finish within
    # client_login_timeout; past max_client_connections (or max_startup_connections
    # still logging in) a new client gets SQLSTATE 53300 and is closed.
    client_login_timeout: float = 15.0
    max_client_connections: int = 1000
    max_startup_connections: int = 256
    # After a failed connect the target is retried after this backoff (doubling up to
    # the maximum), not once per session: see twinkly/proxy/breaker.py.
    target_retry_initial: float = 1.0
    target_retry_max: float = 30.0
    # A client kept waiting on its target this long without a break has the target
    # dropped (a lock cycle across the two databases): see twinkly/proxy/stall.py.
    target_stall_timeout: float = 15.0


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
    # False: a session whose target cannot be reached runs on the truth alone (not
    # compared). Unset in the file, it follows fail-on-differences.
    require_target: bool = False
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
    # Columns whose values each server generates itself: learnt ("auto") or not ("off"),
    # plus these "table.column" / "schema.table.column" names, always.
    volatile_columns: str = "auto"
    volatile_column_list: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportingConfig:
    events_file: str = "reports/twinkly-events.jsonl"
    redact: bool = False
    bundles: str | None = None  # directory for one repro bundle per mismatching fingerprint
    # Events reach the file at least this often; fsync: never, interval (once per
    # flush) or always (after every write).
    flush_interval: float = 1.0
    fsync: str = "interval"


@dataclass(frozen=True)
class HTTPConfig:
    """monitoring.http: /metrics, /healthz, /readyz, /api/* and the dashboard."""

    enabled: bool = False
    listen_address: str = "127.0.0.1"
    port: int = 9187


@dataclass(frozen=True)
class ManholeConfig:
    """monitoring.manhole: a Python console in the running service, over SSH."""

    enabled: bool = False
    listen_address: str = "127.0.0.1"
    port: int = 2222
    users: tuple[tuple[str, str], ...] = ()  # (name, password)
    host_key: str | None = None  # generated and kept there when missing


@dataclass(frozen=True)
class MonitoringConfig:
    log_errors: bool = False
    http: HTTPConfig = field(default_factory=HTTPConfig)
    manhole: ManholeConfig = field(default_factory=ManholeConfig)
    progress_interval: float = 60.0  # seconds between progress lines; 0: none


@dataclass(frozen=True)
class DebugConfig:
    """debug: a decoded trace of every message on all three legs of a session."""

    log_protocol: bool = False
    log_protocol_file: str = "reports/twinkly-protocol.log"
    log_protocol_max_bytes: int = 100 * 1024 * 1024
    # Only sessions whose application_name matches (None: all sessions).
    log_protocol_application: str | None = None


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig
    postgresql: BackendConfig
    yugabytedb: BackendConfig
    comparison: ComparisonConfig = field(default_factory=ComparisonConfig)
    reporting: ReportingConfig = field(default_factory=ReportingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

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


# --- the schema -----------------------------------------------------------------------


def _backend(section: Section, name: str, default_port: int) -> BackendConfig:
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
    if config.socket_path is not None and config.tls not in ("disable", "prefer"):
        # PostgreSQL never speaks TLS on a Unix socket: a mode that insists on it could
        # only fail at every connection.
        raise ConfigError(
            f"{section._key('tls')}: {config.tls} cannot be used with a Unix socket"
            f" (host = {config.host}); use tls = disable, or a TCP host"
        )
    section.finish()
    return config


def _client_auth(section: Section) -> ClientAuthConfig:
    method = section.string("method", "trust", METHODS)
    users = []
    for index, entry in enumerate(section.raw_list("users")):
        path = f"{section._key('users')}[{index}]"
        if not isinstance(entry, ConfigTree):
            raise ConfigError(f"{path}: expected an object with name and password")
        user = Section(entry, path)
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


MAX_WORKERS = 64  # the worker index travels in the high bits of the cancel key


def _workers(section: Section) -> int:
    """``proxy.workers``: a count, or ``auto`` for one per core."""
    if section.string("workers", None) == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    return section.integer("workers", 1, 1, MAX_WORKERS)


def _proxy(section: Section) -> ProxyConfig:
    tls = section.section("tls")
    flow = section.section("flow")
    auth = section.section("auth")
    routing = section.section("routing")
    admin = section.section("admin")
    config = ProxyConfig(
        listen_address=section.string("listen-address", "127.0.0.1"),
        listen_port=section.integer("listen-port", 5431, 0, 65535),
        max_message_bytes=section.integer(
            "max-message-bytes", 64 * 1024 * 1024, 1024, 1024 * 1024 * 1024
        ),
        shutdown_timeout=section.seconds("shutdown-timeout", 10.0),
        workers=_workers(section),
        tls_cert_file=tls.string("cert-file", None),
        tls_key_file=tls.string("key-file", None),
        auth=_client_auth(auth),
        flow=FlowConfig(
            max_target_ahead=flow.integer("max-target-ahead", 1000, 1, 10_000_000),
            max_held_results=flow.integer("max-held-results", 100_000, 10, 100_000_000),
        ),
        postgres_only_patterns=routing.patterns("postgres-only-patterns"),
        yugabyte_only_patterns=routing.patterns("yugabyte-only-patterns"),
        admin=AdminConfig(
            users=admin.strings("users"), database=admin.string("database", "twinkly")
        ),
        client_login_timeout=section.seconds("client-login-timeout", 15.0),
        max_client_connections=section.integer("max-client-connections", 1000, 1, 1_000_000),
        max_startup_connections=section.integer("max-startup-connections", 256, 1, 1_000_000),
        target_retry_initial=section.seconds("target-retry-initial", 1.0),
        target_retry_max=section.seconds("target-retry-max", 30.0),
        target_stall_timeout=section.seconds("target-stall-timeout", 15.0),
    )
    if config.client_login_timeout <= 0:
        raise ConfigError("proxy.client-login-timeout: must be more than 0")
    if config.max_startup_connections > config.max_client_connections:
        raise ConfigError(
            "proxy.max-startup-connections: must not exceed proxy.max-client-connections"
            f" ({config.max_client_connections})"
        )
    if not 0 < config.target_retry_initial <= config.target_retry_max:
        raise ConfigError(
            "proxy.target-retry-initial: must be more than 0 and at most proxy.target-retry-max"
        )
    admin.finish()
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
    root = Section(tree, "")
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
        flush_interval=reporting_section.seconds("flush-interval", 1.0),
        fsync=reporting_section.string("fsync", "interval", FSYNC_MODES),
    )
    if reporting.flush_interval > 3600:
        raise ConfigError("reporting.flush-interval: must be at most 1h")
    reporting_section.finish()
    monitoring = _monitoring(root.section("monitoring"))
    debug = _debug(root.section("debug"))
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
        debug=debug,
    )


def _monitoring(section: Section) -> MonitoringConfig:
    http, manhole = section.section("http"), section.section("manhole")
    config = MonitoringConfig(
        log_errors=section.boolean("log-errors", False),
        http=HTTPConfig(
            enabled=http.boolean("enabled", False),
            listen_address=http.string("listen-address", "127.0.0.1"),
            port=http.integer("port", 9187, 0, 65535),
        ),
        manhole=ManholeConfig(
            enabled=manhole.boolean("enabled", False),
            listen_address=manhole.string("listen-address", "127.0.0.1"),
            port=manhole.integer("port", 2222, 0, 65535),
            users=tuple(manhole.mapping("users").items()),
            host_key=manhole.string("host-key", None),
        ),
        progress_interval=section.seconds("progress-interval", 60.0),
    )
    if config.manhole.enabled and not config.manhole.users:
        raise ConfigError("monitoring.manhole.users: the manhole needs at least one user")
    http.finish()
    manhole.finish()
    section.finish()
    return config


def _debug(section: Section) -> DebugConfig:
    config = DebugConfig(
        log_protocol=section.boolean("log-protocol", False),
        log_protocol_file=section.string("log-protocol-file", DebugConfig.log_protocol_file),
        log_protocol_max_bytes=section.integer(
            "log-protocol-max-bytes", DebugConfig.log_protocol_max_bytes, 1024, 1 << 40
        ),
        log_protocol_application=section.string("log-protocol-application", None),
    )
    if config.log_protocol_application is not None:
        try:
            re.compile(config.log_protocol_application)
        except re.error as e:
            raise ConfigError(
                f"debug.log-protocol-application: invalid regular expression: {e}"
            ) from None

    section.finish()
    return config


def _comparison(section: Section) -> ComparisonConfig:
    normalize = section.section("normalize")
    fail_on_differences = section.boolean("fail-on-differences", False)
    config = ComparisonConfig(
        enabled=section.boolean("enabled", True),
        source_of_truth=section.string("source-of-truth", "postgresql", BACKEND_KEYS),
        fail_on_differences=fail_on_differences,
        require_target=section.boolean("require-target", fail_on_differences),
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
        volatile_columns=section.string("volatile-columns", "auto", ("auto", "off")),
        volatile_column_list=_column_names(section, "volatile-column-list"),
    )
    normalize.finish()
    section.finish()
    return config


_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){1,2}")


def _column_names(section: Section, key: str) -> tuple[str, ...]:
    """``table.column`` or ``schema.table.column`` names (unquoted identifiers)."""
    names = section.strings(key)
    for index, name in enumerate(names):
        if not _COLUMN_NAME.fullmatch(name):
            raise ConfigError(
                f"{section._key(key)}[{index}]: expected table.column or"
                f" schema.table.column, got {name!r}"
            )
    return names


def _explain(section: Section) -> ExplainConfig:
    config = ExplainConfig(
        enabled=section.boolean("enabled", True),
        analyze=section.boolean("analyze", True),
        statement_timeout=section.seconds("statement-timeout", 5.0),
        max_concurrent=section.integer("max-concurrent", 2, 1, 64),
        max_queued=section.integer("max-queued", 16, 0, 10_000),
    )
    section.finish()
    return config


def _ai(section: Section) -> AIConfig:
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
