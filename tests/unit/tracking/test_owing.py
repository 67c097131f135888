"""owe: what a batch of client messages makes both trackers owe.

Every case runs on the Python reference and on the C one (skipped when not built), each
with recording trackers (whose expect() is called) and with real trackers of the
implementation (which the C one fills directly)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twinkly.tracking import owing, responses
from twinkly.tracking.contexts import ClientContexts
from twinkly.wire import frontend as f
from twinkly.wire.framing import MessageFramer


def messages(*ms: object) -> list[tuple[int, bytes]]:
    return MessageFramer().feed(b"".join(f.encode(m) for m in ms))


class RecordingTracker:
    def __init__(self) -> None:
        self.owed: list[tuple] = []

    def expect(self, kind: str, now: float, seq: int = 0, context: object = None) -> None:
        self.owed.append((kind, now, seq, context))


class CountingContexts(ClientContexts):
    """A subclass: its context() must be asked for every message, Query included."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    def context(self, type_byte: int, payload: bytes) -> tuple | None:
        self.asked.append(type_byte)
        return super().context(type_byte, payload)


PREPARED = (
    f.Parse("s1", "select $1::int", (23,)),
    f.Bind("p1", "s1", (0,), (b"7",), ()),
    f.Describe("P", "p1"),
    f.Execute("p1", 0),
    f.Sync(),
)


class OweCases:
    owe: Any

    def owing(self, batch: list, seq: int = 0, contexts: Any = "fresh", target: bool = True):  # type: ignore[no-untyped-def]
        truth = RecordingTracker()
        other = RecordingTracker() if target else None
        if contexts == "fresh":
            contexts = ClientContexts()
        result = self.owe(batch, 5.0, seq, truth, other, contexts)
        return result, truth.owed, other.owed if other is not None else None

    def test_a_simple_query(self) -> None:
        result, truth, target = self.owing(messages(f.Query("select 1")), seq=41)
        self.assertEqual(result, (42, 0, False))
        self.assertEqual(truth, [("Q", 5.0, 42, ("select 1", None, ()))])
        self.assertEqual(target, truth)

    def test_the_extended_protocol(self) -> None:
        result, truth, target = self.owing(messages(*PREPARED))
        self.assertEqual(result, (5, 0, False))
        self.assertEqual([o[0] for o in truth], ["P", "B", "DP", "E", "S"])
        self.assertEqual([o[2] for o in truth], [1, 2, 3, 4, 5])
        bind = messages(PREPARED[1])[0][1]
        self.assertEqual(truth[1][3], ("select $1::int", bind, (23,)))
        self.assertEqual(truth[3][3], ("select $1::int", bind, (23,)))
        self.assertIsNone(truth[4][3])  # a Sync has no context
        self.assertEqual(target, truth)

    def test_no_target_and_no_contexts(self) -> None:
        result, truth, target = self.owing(
            messages(f.Query("select 1"), f.Describe("S", "x")), contexts=None, target=False
        )
        self.assertEqual(result, (2, 0, False))
        self.assertEqual(truth, [("Q", 5.0, 1, None), ("DS", 5.0, 2, None)])
        self.assertIsNone(target)

    def test_copy_from_stdin_holds_the_target(self) -> None:
        result, _, _ = self.owing(messages(f.Query("select 1"), f.Query("COPY t FROM StdIn")))
        self.assertEqual(result, (2, 2, False))
        parse = f.Parse("", "copy t from STDIN", ())
        batch = messages(parse, f.Bind("", "", (), (), ()), f.Execute("", 0), f.Sync())
        self.assertEqual(self.owing(batch)[0], (4, 3, False))  # held after the Execute
        self.assertEqual(self.owing(messages(f.Query("select 'copy', 'stdout'")))[0], (1, 0, False))

    def test_terminate_and_messages_that_owe_nothing(self) -> None:
        batch = messages(f.Query("select 1"), f.CopyData(b"x"), f.Terminate())
        result, truth, _ = self.owing(batch)
        self.assertEqual(result, (1, 0, True))
        self.assertEqual(len(truth), 1)

    def test_copy_end_and_close(self) -> None:
        batch = messages(f.CopyDone(), f.CopyFail("no"), f.Close("S", "s1"))
        result, truth, _ = self.owing(batch)
        self.assertEqual(result, (3, 0, False))
        self.assertEqual([o[0] for o in truth], ["c", "c", "C"])

    def test_a_contexts_subclass_is_asked_for_every_message(self) -> None:
        contexts = CountingContexts()
        _, truth, _ = self.owing(messages(f.Query("select 2"), *PREPARED), contexts=contexts)
        self.assertEqual(contexts.asked, [ord(c) for c in "QPBDE"])
        self.assertEqual(truth[0][3], ("select 2", None, ()))

    def test_invalid_utf8_is_replaced(self) -> None:
        batch = [(ord("Q"), b"select '\xff'\x00")]
        _, truth, _ = self.owing(batch)
        self.assertEqual(truth[0][3], ("select '\ufffd'", None, ()))

    def test_real_trackers_owe_the_same(self) -> None:
        """The trackers of each implementation end up owing the same requests."""
        for impl in filter(None, (responses.PYTHON, responses.C)):
            truth = impl.ResponseTracker(lambda item: None, lambda: 0.0)
            target = impl.ResponseTracker(lambda item: None, lambda: 0.0)
            result = self.owe(messages(*PREPARED), 1.0, 0, truth, target, ClientContexts())
            self.assertEqual(result, (5, 0, False))
            self.assertEqual((truth.owed, target.owed), (5, 5), impl.name)


class PythonOwe(OweCases, SynchronousTestCase):
    owe = staticmethod(owing.PYTHON)


class COwe(OweCases, SynchronousTestCase):
    owe = staticmethod(owing.C) if owing.C is not None else None
    if owing.C is None:
        skip = "the C tracker was not built"


def _batches() -> list[list[tuple[int, bytes]]]:
    """Batches a session could send, malformed ones among them, in one order."""
    batches = [messages(*PREPARED)]
    for i in range(6):  # more names than the contexts keep (max_names=3 below)
        batches.append(messages(
            f.Parse(f"s{i}", f"select {i} + $1", (23,) if i % 2 else ()),
            f.Bind(f"p{i % 4}", f"s{i}", (), (b"1",), ()),
            f.Describe("S", f"s{i}"),
            f.Describe("P", f"p{i % 4}"),
            f.Execute(f"p{i % 4}", 0),
            f.Bind("", f"s{i - 2}", (), (), ()),  # an evicted statement: no context
            f.Execute("", 0),
            f.Sync(),
        ))  # fmt: skip
    batches.append(messages(f.Close("S", "s5"), f.Describe("S", "s5"), f.Close("P", "p1")))
    batches.append(messages(f.Parse("", "select 'caf\u00e9'", (25, 1043)), f.Sync()))
    batches.append([(ord("E"), b"no terminator"), (ord("B"), b"p\x00s"), (ord("D"), b"X")])
    batches.append([(ord("P"), b"s\x00select 1\x00\x00"), (ord("P"), b"t\x00x\x00\x00\x02")])
    batches.append([(ord("D"), b""), (ord("E"), b""), (ord("F"), b"\x00\x00\x04\xd2")])
    batches.append([(ord("Q"), b""), (ord("Q"), b"select '\xff'\x00")])
    return batches


class EquivalenceTests(SynchronousTestCase):
    """The C owe and the reference, batch after batch, each with its own contexts and
    trackers: the same numbers, the same owed requests and contexts, the same names."""

    if owing.C is None:
        skip = "the C tracker was not built"

    def test_the_same_batches_owe_the_same(self) -> None:
        sides = []
        for owe in (owing.PYTHON, owing.C):
            contexts = ClientContexts(max_names=3)
            truth, target = RecordingTracker(), RecordingTracker()
            results = [
                owe(batch, 1.0, 10 * i, truth, target, contexts)
                for i, batch in enumerate(_batches())
            ]
            sides.append((results, truth.owed, target.owed, contexts.statements, contexts.portals))
        python, c = sides
        self.assertEqual(python[0], c[0])
        self.assertEqual(python[1], c[1])
        self.assertEqual(python[2], c[2])
        self.assertEqual(list(python[3].items()), list(c[3].items()))  # order: eviction
        self.assertEqual(list(python[4].items()), list(c[4].items()))
        self.assertGreater(sum(context is not None for *_, context in c[1]), 20)


class SelectionTests(SynchronousTestCase):
    def test_owe_runs_with_its_tracker(self) -> None:
        expected = owing.C if responses.IMPLEMENTATION == "c" else owing.PYTHON
        self.assertIs(owing.owe, expected)
