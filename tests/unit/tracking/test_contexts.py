"""ClientContexts: which SQL (and Bind) each client message runs, through named
prepared statements and portals."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.tracking.contexts import ClientContexts
from twinkly.wire import frontend as f
from twinkly.wire.buffers import Reader
from twinkly.wire.framing import MessageFramer


def message(m: object) -> tuple[int, bytes]:
    ((type_byte, payload),) = MessageFramer().feed(f.encode(m))
    return type_byte, payload


class ClientContextsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.contexts = ClientContexts(max_names=3)

    def context(self, m: object) -> tuple | None:
        return self.contexts.context(*message(m))

    def test_simple_query(self) -> None:
        self.assertEqual(self.context(f.Query("select 1")), ("select 1", None, ()))

    def test_named_statement_portal_execute(self) -> None:
        parse = f.Parse("s1", "select $1::int", (23,))
        self.assertEqual(self.context(parse), ("select $1::int", None, (23,)))
        bind = f.Bind("p1", "s1", (0,), (b"7",), ())
        bound = self.context(bind)
        self.assertEqual((bound[0], bound[2]), ("select $1::int", (23,)))
        self.assertEqual(f.Bind.read(Reader(bound[1])), bind)
        self.assertEqual(self.context(f.Execute("p1", 0)), bound)
        self.assertEqual(self.context(f.Describe("S", "s1")), ("select $1::int", None, (23,)))
        self.assertEqual(self.context(f.Describe("P", "p1")), bound)

    def test_unknown_names_and_close(self) -> None:
        self.assertIsNone(self.context(f.Execute("nope", 0)))
        self.assertIsNone(self.context(f.Bind("", "missing")))
        self.context(f.Parse("s1", "select 1"))
        self.context(f.Close("S", "s1"))
        self.assertIsNone(self.context(f.Bind("", "s1")))

    def test_names_are_bounded(self) -> None:
        for i in range(5):
            self.context(f.Parse(f"s{i}", f"select {i}"))
        self.assertEqual(len(self.contexts.statements), 3)
        self.assertIsNone(self.context(f.Bind("", "s0")))
        self.assertEqual(self.context(f.Bind("", "s4"))[0], "select 4")
