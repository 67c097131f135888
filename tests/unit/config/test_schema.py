"""Configuration: HOCON -> frozen dataclasses; every problem names its key path."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from twinkly.config.schema import BackendConfig, Config, ConfigError, load, loads

SHIPPED = Path(__file__).resolve().parents[3] / "conf" / "twinkly.conf"
ENV_NAMES = ("TWINKLY_PORT", "TWINKLY_PG15_PORT", "TWINKLY_PG18_PORT", "TWINKLY_TEST_VALUE")


class ConfigTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        for name in ENV_NAMES:
            self.set_env(name, None)

    def set_env(self, name: str, value: str | None) -> None:
        """Set or unset an environment variable until the end of the test."""
        old = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

        def restore() -> None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

        self.addCleanup(restore)

    def assertConfigError(self, text: str, key: str) -> str:
        """The text is refused with a message that starts with the key's path."""
        with self.assertRaises(ConfigError) as caught:
            loads(text)
        message = str(caught.exception)
        self.assertTrue(
            message.startswith(key + ":") or message.startswith(key + " "),
            f"{message!r} does not start with {key!r}",
        )
        return message


class LoadTests(ConfigTestCase):
    def test_shipped_file(self) -> None:
        config = load(SHIPPED)
        self.assertEqual(
            (config.proxy.listen_address, config.proxy.listen_port), ("127.0.0.1", 5431)
        )
        self.assertEqual(config.proxy.auth.method, "trust")
        self.assertEqual(config.proxy.auth.users, ())
        self.assertEqual(config.postgresql.describe(), "pg15 (127.0.0.1:54315)")
        self.assertEqual(config.yugabytedb.describe(), "pg18 (127.0.0.1:54318)")
        self.assertEqual(config.postgresql.password, "twinkly-pw")
        self.assertEqual(config.truth.name, "postgresql")
        self.assertEqual(config.target.name, "yugabytedb")
        self.assertTrue(config.comparison.enabled)

    def test_shipped_file_with_environment(self) -> None:
        self.set_env("TWINKLY_PORT", "6543")
        self.set_env("TWINKLY_PG18_PORT", "55018")
        config = load(SHIPPED)
        self.assertEqual(config.proxy.listen_port, 6543)
        self.assertEqual(config.yugabytedb.port, 55018)
        self.assertEqual(config.postgresql.port, 54315)

    def test_missing_file(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        missing = os.path.join(directory, "nope.conf")
        e = self.assertRaises(ConfigError, load, missing)
        self.assertIn("not found", str(e))
        self.assertIn(missing, str(e))

    def test_unresolved_substitution(self) -> None:
        self.assertRaises(ConfigError, loads, "proxy.postgresql.password = ${TWINKLY_TEST_VALUE}")

    def test_syntax_error_is_a_config_error(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        broken = os.path.join(directory, "broken.conf")
        Path(broken).write_text("proxy { listen-port = \n")
        e = self.assertRaises(ConfigError, load, broken)
        self.assertTrue(str(e).startswith(broken))
        self.assertRaises(ConfigError, loads, "a = [1, 2")

    def test_defaults(self) -> None:
        config = loads("")
        proxy = config.proxy
        self.assertEqual((proxy.listen_address, proxy.listen_port), ("127.0.0.1", 5431))
        self.assertEqual(proxy.max_message_bytes, 64 * 1024 * 1024)
        self.assertEqual(proxy.shutdown_timeout, 10.0)
        self.assertEqual((proxy.tls_cert_file, proxy.tls_key_file), (None, None))
        self.assertEqual((proxy.auth.method, proxy.auth.users), ("trust", ()))
        self.assertEqual(
            (
                config.comparison.max_target_lag,
                proxy.flow.max_target_ahead,
                proxy.flow.max_held_results,
            ),
            (1000, 1000, 100_000),
        )
        self.assertEqual(
            config.postgresql,
            BackendConfig(name="postgresql", label="postgresql", port=5432),
        )
        self.assertEqual(config.yugabytedb.port, 5433)
        self.assertEqual(config.yugabytedb.tls, "disable")
        self.assertIsNone(config.yugabytedb.user)
        self.assertEqual(config.postgresql.connect_timeout, 10.0)
        self.assertEqual(
            (config.comparison.enabled, config.comparison.source_of_truth), (True, "postgresql")
        )

    def test_values_are_read(self) -> None:
        config = loads(
            """
            proxy {
              listen-address = "0.0.0.0"
              listen-port = 0
              max-message-bytes = 1048576
              flow { max-target-ahead = 6, max-held-results = 70 }
              auth { method = md5, users = [{name = alice, password = "pw"}] }
              postgresql { host = db1, port = 6000, user = u, database = d, tls = prefer }
              yugabytedb { tls = verify-full, ca-file = /etc/ca.pem }
            }
            comparison { enabled = off, source-of-truth = yugabytedb, max-target-lag = 5 }
            """
        )
        self.assertEqual(config.proxy.listen_port, 0)
        self.assertEqual(config.proxy.max_message_bytes, 1048576)
        self.assertEqual(config.proxy.flow.max_held_results, 70)
        self.assertEqual(config.proxy.auth.users, (("alice", "pw"),))
        self.assertEqual(config.proxy.auth.password_of("alice"), "pw")
        self.assertEqual((config.postgresql.host, config.postgresql.port), ("db1", 6000))
        self.assertEqual(config.yugabytedb.ca_file, "/etc/ca.pem")
        self.assertFalse(config.comparison.enabled)
        self.assertEqual((config.truth.name, config.target.name), ("yugabytedb", "postgresql"))

    def test_environment_substitution(self) -> None:
        text = 'proxy.postgresql { password = "default", password = ${?TWINKLY_TEST_VALUE} }'
        self.assertEqual(loads(text).postgresql.password, "default")
        self.set_env("TWINKLY_TEST_VALUE", "from-env")
        self.assertEqual(loads(text).postgresql.password, "from-env")

    def test_durations(self) -> None:
        cases = [('"500ms"', 0.5), ('"10s"', 10.0), ("3", 3.0), ("2.5", 2.5), ('"2m"', 120.0)]
        for text, seconds in cases:
            config = loads(f"proxy.postgresql.connect-timeout = {text}")
            self.assertEqual(config.postgresql.connect_timeout, seconds, text)
        config = loads('proxy.shutdown-timeout = "250ms"')
        self.assertEqual(config.proxy.shutdown_timeout, 0.25)

    def test_unquoted_durations(self) -> None:
        # pyhocon reads these as timedelta / relativedelta, not as strings
        cases = [("500ms", 0.5), ("10s", 10.0), ("10 seconds", 10.0), ("2 minutes", 120.0)]
        for text, seconds in cases:
            config = loads(f"proxy.postgresql.connect-timeout = {text}")
            self.assertEqual(config.postgresql.connect_timeout, seconds, text)

    def test_with_overrides(self) -> None:
        config = loads("")
        moved = config.with_overrides(listen=("0.0.0.0", 6000))
        self.assertEqual((moved.proxy.listen_address, moved.proxy.listen_port), ("0.0.0.0", 6000))
        self.assertEqual(config.proxy.listen_port, 5431)  # the original is unchanged
        self.assertEqual(moved.postgresql, config.postgresql)
        swapped = config.with_overrides(source_of_truth="yugabytedb")
        self.assertIsInstance(swapped, Config)
        self.assertEqual((swapped.truth.name, swapped.target.name), ("yugabytedb", "postgresql"))
        self.assertEqual(swapped.proxy, config.proxy)
        self.assertIs(config.with_overrides(), config)
        e = self.assertRaises(ConfigError, config.with_overrides, source_of_truth="mysql")
        self.assertTrue(str(e).startswith("comparison.source-of-truth"))


class UnknownKeyTests(ConfigTestCase):
    def test_unknown_keys_name_their_path(self) -> None:
        cases = [
            ("bogus = 1", "bogus"),
            ("proxy.postgresql.hots = x", "proxy.postgresql.hots"),
            ("proxy.yugabytedb.passwd = x", "proxy.yugabytedb.passwd"),
            ("proxy.tls.cert = x", "proxy.tls.cert"),
            ("proxy.flow.max-lag = 1", "proxy.flow.max-lag"),
            ("proxy.auth.methods = md5", "proxy.auth.methods"),
            ("proxy.auth.users = [{name = a, password = b, role = c}]", "proxy.auth.users[0].role"),
            ("comparison.enable = true", "comparison.enable"),
        ]
        for text, key in cases:
            message = self.assertConfigError(text, key)
            self.assertIn("unknown", message)

    def test_unknown_key_directly_under_proxy(self) -> None:
        self.assertConfigError("proxy.listen-prot = 5431", "proxy.listen-prot")


class UnixSocketTests(SynchronousTestCase):
    def test_a_host_starting_with_a_slash_is_a_socket_directory(self) -> None:
        config = loads('proxy.postgresql { host = "/run/postgresql/", port = 5433 }')
        truth = config.postgresql
        self.assertEqual(truth.socket_path, "/run/postgresql/.s.PGSQL.5433")
        self.assertEqual(truth.describe(), "postgresql (/run/postgresql/.s.PGSQL.5433)")
        self.assertIsNone(config.yugabytedb.socket_path)
        self.assertEqual(config.yugabytedb.describe(), "yugabytedb (127.0.0.1:5433)")

    def test_tls_prefer_is_allowed_and_not_asked_for(self) -> None:
        config = loads('proxy.postgresql { host = "/tmp", tls = prefer }')
        self.assertEqual(config.postgresql.tls, "prefer")


class BadValueTests(ConfigTestCase):
    def test_bad_values_name_their_key(self) -> None:
        cases = [
            ('proxy.postgresql.port = "abc"', "proxy.postgresql.port"),
            ("proxy.postgresql.port = 70000", "proxy.postgresql.port"),
            ("proxy.yugabytedb.port = 0", "proxy.yugabytedb.port"),
            ("proxy.yugabytedb.port = 5.5", "proxy.yugabytedb.port"),
            ("proxy.listen-port = -1", "proxy.listen-port"),
            ("proxy.listen-port = true", "proxy.listen-port"),
            ("proxy.max-message-bytes = 10", "proxy.max-message-bytes"),
            ("proxy.postgresql.tls = sometimes", "proxy.postgresql.tls"),
            ("proxy.yugabytedb.tls = verify-ca", "proxy.yugabytedb.ca-file"),
            (
                'proxy.postgresql { host = "/run/postgresql", tls = require }',
                "proxy.postgresql.tls",
            ),
            ("comparison.source-of-truth = mysql", "comparison.source-of-truth"),
            ("comparison.enabled = maybe", "comparison.enabled"),
            ("proxy.auth.method = kerberos", "proxy.auth.method"),
            ("proxy.auth { method = md5, users = [{name = bob}] }", "proxy.auth.users[0].password"),
            ("proxy.auth { method = md5, users = [{password = x}] }", "proxy.auth.users[0].name"),
            ("proxy.auth { method = scram-sha-256 }", "proxy.auth.users"),
            ("proxy.auth.users = [bob]", "proxy.auth.users[0]"),
            ("proxy.auth.users = bob", "proxy.auth.users"),
            ('proxy.postgresql.connect-timeout = "soon"', "proxy.postgresql.connect-timeout"),
            ("proxy.postgresql.connect-timeout = -1", "proxy.postgresql.connect-timeout"),
            ('proxy.shutdown-timeout = "1h"', "proxy.shutdown-timeout"),
            ("proxy.flow.max-held-results = 1", "proxy.flow.max-held-results"),
            ("proxy.postgresql.host = [a, b]", "proxy.postgresql.host"),
            ("proxy.postgresql = 5", "proxy.postgresql"),
            ("proxy.tls = yes", "proxy.tls"),
            ("proxy.tls.cert-file = /nonexistent/cert.pem", "proxy.tls"),
            ("comparison.fail-on-differences = 2", "comparison.fail-on-differences"),
            ("comparison.hold-bytes = 1", "comparison.hold-bytes"),
            ("comparison.float-tolerance = -1", "comparison.float-tolerance"),
            ("comparison.sample-rate = 1.5", "comparison.sample-rate"),
            ('comparison.sample-rate = "most"', "comparison.sample-rate"),
            ('comparison.exclude-patterns = ["(unclosed"]', "comparison.exclude-patterns[0]"),
            ("comparison.exclude-patterns = [5]", "comparison.exclude-patterns[0]"),
            (
                'proxy.routing.postgres-only-patterns = ["[a"]',
                "proxy.routing.postgres-only-patterns[0]",
            ),
            (
                "comparison.normalize.jsonb-key-order = sometimes",
                "comparison.normalize.jsonb-key-order",
            ),
            ("comparison.max-target-lag = 0", "comparison.max-target-lag"),
            ("comparison.max-target-lag-bytes = 10", "comparison.max-target-lag-bytes"),
            ("reporting.redact = perhaps", "reporting.redact"),
            ("monitoring.log-errors = 3", "monitoring.log-errors"),
            ("reporting.events = x", "reporting.events"),
        ]
        for text, key in cases:
            self.assertConfigError(text, key)

    def test_regexes_are_taken_literally(self) -> None:
        config = loads('comparison.exclude-patterns = ["^select .*$", "\\$1 and ${?HOME}"]')
        self.assertEqual(config.comparison.exclude_patterns, ("^select .*$", "\\$1 and ${?HOME}"))

    def test_comparison_and_reporting_values(self) -> None:
        config = loads(
            """
            comparison { float-tolerance = 0.001, max-sample-rows = 5, sample-rate = 0.25,
                         log-differences-only = yes, normalize { numeric-scale = false } }
            reporting { events-file = "/tmp/e.jsonl", redact = true, bundles = "/tmp/b" }
            monitoring.log-errors = true
            """
        )
        c = config.comparison
        self.assertEqual((c.float_tolerance, c.max_sample_rows, c.sample_rate), (0.001, 5, 0.25))
        self.assertTrue(c.log_differences_only)
        self.assertFalse(c.numeric_scale)
        self.assertEqual(
            (config.reporting.events_file, config.reporting.redact, config.reporting.bundles),
            ("/tmp/e.jsonl", True, "/tmp/b"),
        )
        self.assertTrue(config.monitoring.log_errors)

    def test_volatile_columns(self) -> None:
        self.assertEqual(loads("").comparison.volatile_columns, "auto")
        config = loads(
            'comparison { volatile-columns = off, volatile-column-list = ["t.ts", "s.t.c_1"] }'
        )
        self.assertEqual(config.comparison.volatile_columns, "off")
        self.assertEqual(config.comparison.volatile_column_list, ("t.ts", "s.t.c_1"))
        message = self.assertConfigError(
            "comparison.volatile-columns = sometimes", "comparison.volatile-columns"
        )
        self.assertIn("auto, off", message)
        key = "comparison.volatile-column-list"
        for bad in ('["t.ts", "ts"]', '["t.ts", "a.b.c.d"]', '["t.ts", "t.x y"]', "[t.ts, 1]"):
            self.assertConfigError(f"{key} = {bad}", key + "[1]")
        message = self.assertConfigError(f'{key} = ["ts"]', key + "[0]")
        self.assertIn("expected table.column or schema.table.column, got 'ts'", message)
        self.assertConfigError(f'{key} = "t.ts"', key)

    def test_port_messages_say_what_is_wrong(self) -> None:
        message = self.assertConfigError('proxy.postgresql.port = "abc"', "proxy.postgresql.port")
        self.assertIn("'abc'", message)
        message = self.assertConfigError("proxy.postgresql.port = 70000", "proxy.postgresql.port")
        self.assertIn("70000", message)

    def test_numeric_password_is_kept_or_refused(self) -> None:
        for text in ("007", "1.50"):
            try:
                config = loads(f"proxy.postgresql.password = {text}")
            except ConfigError as e:
                self.assertTrue(str(e).startswith("proxy.postgresql.password"))
            else:
                self.assertEqual(config.postgresql.password, text)

    def test_quoted_numeric_password(self) -> None:
        config = loads('proxy.postgresql.password = "007"')
        self.assertEqual(config.postgresql.password, "007")

    def test_trust_users_need_no_password(self) -> None:
        config = loads("proxy.auth { method = trust, users = [{name = bob}] }")
        self.assertEqual(config.proxy.auth.users, (("bob", ""),))

    def test_tls_files(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert.write_text("cert")
        self.assertConfigError(f'proxy.tls.cert-file = "{cert}"', "proxy.tls")
        self.assertConfigError(f'proxy.tls.key-file = "{cert}"', "proxy.tls")
        text = f'proxy.tls {{ cert-file = "{cert}", key-file = "{key}" }}'
        message = self.assertConfigError(text, "proxy.tls.key-file")
        self.assertIn(str(key), message)
        key.write_text("key")
        config = loads(text)
        self.assertEqual(
            (config.proxy.tls_cert_file, config.proxy.tls_key_file), (str(cert), str(key))
        )

    def test_both_backends_at_the_same_server(self) -> None:
        self.assertConfigError(
            "proxy.postgresql.port = 7000\nproxy.yugabytedb.port = 7000", "proxy.yugabytedb.port"
        )
        config = loads(
            "proxy.postgresql.port = 7000\nproxy.yugabytedb { port = 7000, host = 10.0.0.2 }"
        )
        self.assertEqual(config.yugabytedb.host, "10.0.0.2")
