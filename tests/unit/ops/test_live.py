"""LiveStatus: what the status pages and the admin console read of a running proxy,
and what a reload applies."""

from __future__ import annotations

from collections import Counter

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.config.schema import loads
from twinkly.ops.live import LiveStatus, flatten
from twinkly.ops.status import IStatus
from twinkly.report.events import make_event
from twinkly.report.sink import MemorySink

BASE = """
proxy {
  postgresql { label = pg15, port = 1, password = "truth-secret" }
  yugabytedb { label = pg18, port = 2 }
  flow { max-target-ahead = 10 }
}
comparison { exclude-patterns = ["^SET"] }
monitoring { progress-interval = 30s }
"""


class FakeFactory:
    def __init__(self, config: object) -> None:
        self.config = config
        self.sessions: dict = {}
        self.sessions_total = 0
        self.monitor = Monitor(ComparisonSettings(), MemorySink(), ("pg15", "pg18"))

    def reconfigure(self, config: object) -> None:
        self.config = config


class LiveStatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write(BASE)
        self.clock = task.Clock()
        self.factory = FakeFactory(loads(BASE))
        self.applied: list = []
        self.status = LiveStatus(
            self.factory,  # type: ignore[arg-type]
            self.factory.monitor,
            None,
            self.clock,
            self.path,
            self.applied.append,
        )

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def test_provides_the_interface(self) -> None:
        verifyObject(IStatus, self.status)

    def test_reload_says_when_each_change_takes_effect(self) -> None:
        self.write(
            BASE.replace('["^SET"]', '["^SET", "^SHOW"]')
            .replace("max-target-ahead = 10", "max-target-ahead = 20")
            .replace("port = 2 }", "port = 3 }")
            .replace("30s", "10s")
        )
        changed = self.status.reload()
        self.assertEqual(
            sorted(changed),
            [
                "comparison.exclude-patterns",
                "monitoring.progress-interval (needs a restart: not applied)",
                "proxy.flow.max-target-ahead (for new sessions)",
                "yugabytedb.port (needs a restart: not applied)",
            ],
        )
        config = self.factory.config
        self.assertEqual(config.comparison.exclude_patterns, ("^SET", "^SHOW"))
        self.assertEqual(config.proxy.flow.max_target_ahead, 20)
        self.assertEqual(config.yugabytedb.port, 2)  # the backend stays where it was
        self.assertEqual(config.monitoring.progress_interval, 30.0)
        self.assertEqual(self.applied, [config])

    def test_a_bad_file_changes_nothing(self) -> None:
        from twinkly.config.schema import ConfigError

        before = self.factory.config
        self.write(BASE.replace("exclude-patterns", "exclude-pattern"))
        self.assertRaises(ConfigError, self.status.reload)
        self.assertIs(self.factory.config, before)
        self.assertEqual(self.applied, [])

    def test_secrets_are_masked(self) -> None:
        items = dict(self.status.config_items())
        self.assertEqual(items["postgresql.password"], "***")
        self.assertEqual(items["postgresql.label"], "pg15")
        self.assertNotIn("truth-secret", str(self.status.config_items()))

    def test_events_newest_first_by_kind_and_page(self) -> None:
        monitor = self.factory.monitor
        for i, kind in enumerate(["noise", "result_mismatch", "noise", "result_mismatch"]):
            monitor.emit(
                make_event(
                    kind,
                    now=1_700_000_000 + i,
                    session=1,
                    statement=f"s{i}",
                    fingerprint="f",
                    truth=None,
                    target=None,
                )
            )
        newest = self.status.events(kind="result_mismatch", limit=1)
        self.assertEqual([e["statement"] for e in newest], ["s3"])
        older = self.status.events(kind="result_mismatch", before=newest[0]["id"])
        self.assertEqual([e["statement"] for e in older], ["s1"])
        self.assertEqual(len(self.status.events()), 4)

    def test_muted_events_are_counted_apart_and_not_kept(self) -> None:
        self.assertTrue(self.status.mute("f"))
        self.assertFalse(self.status.mute("f"))
        monitor = self.factory.monitor
        monitor.emit(
            make_event(
                "result_mismatch",
                now=1_700_000_000,
                session=1,
                statement="s",
                fingerprint="f",
                truth=None,
                target=None,
            )
        )
        self.assertEqual(monitor.events, Counter({"muted": 1}))
        self.assertEqual(self.status.events(), [])
        self.assertTrue(self.status.unmute("f"))

    def test_readiness_checks_are_shared_and_reused_briefly(self) -> None:
        checks: list[defer.Deferred] = []

        def check(backend: object) -> defer.Deferred:
            checks.append(defer.Deferred())
            return checks[-1]

        self.status._check = check  # type: ignore[method-assign]
        first, second = self.status.ready(), self.status.ready()
        self.assertEqual(len(checks), 2)  # one check of each backend for both callers
        checks[0].callback(None)
        checks[1].callback("pg18 (127.0.0.1:2): connection refused")
        # Ready: the truth takes logins; sessions go on without the target meanwhile.
        expected = self.successResultOf(first)
        self.assertEqual(expected[0], True)
        self.assertEqual(expected[1]["target"], "pg18 (127.0.0.1:2): connection refused")
        self.assertEqual(self.successResultOf(second), expected)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(self.status.ready()), expected)
        self.assertEqual(len(checks), 2)
        self.clock.advance(1.5)
        self.status.ready()
        self.assertEqual(len(checks), 4)  # stale: checked again

    def test_flatten_names_keys_as_the_file_does(self) -> None:
        keys = flatten(self.factory.config)
        self.assertIn("comparison.slow-query-ratio", keys)
        self.assertIn("comparison.explain.statement-timeout", keys)
        self.assertEqual(keys["proxy.flow.max-target-ahead"], 10)

    def test_large_plans_stay_in_the_file_only(self) -> None:
        from twinkly.compare import shared_state as m

        monitor = self.factory.monitor
        small = {"truth": [{"Plan": {}}], "target": [{"Plan": {}}]}
        large = {"truth": [{"Plan": {"Filter": "x" * m.RECENT_PLAN_BYTES}}], "target": None}
        for plans in (small, large):
            monitor.emit(
                make_event(
                    "slow_query",
                    now=1_700_000_000,
                    session=1,
                    statement="s",
                    fingerprint="f",
                    truth=None,
                    target=None,
                    plans=plans,
                )
            )
        kept_large, kept_small = self.status.events(kind="slow_query")
        self.assertEqual(kept_small["plans"], small)
        self.assertEqual(kept_large["plans"], {"truth": None, "target": None})
        self.assertIn("see event", kept_large["plans_omitted"])
        written = list(monitor.sink.events)  # the report itself keeps everything
        self.assertEqual(written[1]["plans"], large)
