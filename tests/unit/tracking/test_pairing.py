"""Pairer: merging the two backends' results by the client message they answer.

Every case runs on the Python reference with the Python tracker's items, and on the C
pairer with the C tracker's items and with the Python tracker's (which it leaves to the
reference); the C variants are skipped when the extension was not built."""

from __future__ import annotations

import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twinkly.interfaces import IPairObserver
from twinkly.tracking import pairing, responses
from twinkly.tracking.pairing import PairCounter, Pairer
from twinkly.tracking.responses import SUB_BITS, SYNC_SUB, StatementResult, SyncPoint


@implementer(IPairObserver)
class Recorder:
    """Records every call, with items shown by their names."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def statements_paired(self, truth: StatementResult, target: StatementResult) -> None:
        self.calls.append(("pair", name(truth), name(target)))

    def statement_unpaired(self, result: StatementResult, side: str) -> None:
        self.calls.append(("alone", side, name(result)))

    def sync_paired(self, truth: SyncPoint, target: SyncPoint) -> None:
        self.calls.append(("sync", truth.status, target.status))

    def truth_sync_alone(self, truth: SyncPoint) -> None:
        pass

    def pairing_abandoned(self, reason: str) -> None:
        self.calls.append(("abandoned", reason))


def name(result: StatementResult) -> str:
    """Results are named by request and tag, e.g. 'B' or 'E:x'."""
    return result.request + (f":{result.command_tag}" if result.tag else "")


def result(label: str) -> StatementResult:
    request, _, tag = label.partition(":")
    item = StatementResult(request, 0.0)
    if tag:
        item.tag = tag.encode()
    return item


def items(spec: str) -> list:
    """'P B E:x |I' -> results P, B, E tagged x, then a SyncPoint with status I."""
    out: list = []
    for word in spec.split():
        out.append(SyncPoint(word[1:], 0.0) if word.startswith("|") else result(word))
    return out


def interleavings(truth: list, target: list) -> dict[str, list[tuple[str, object]]]:
    """A few arrival orders of the same two streams."""
    zipped: list[tuple[str, object]] = []
    for i in range(max(len(truth), len(target))):
        if i < len(truth):
            zipped.append(("truth", truth[i]))
        if i < len(target):
            zipped.append(("target", target[i]))
    target_lead = []
    for i in range(max(len(truth), len(target))):
        if i < len(target):
            target_lead.append(("target", target[i]))
        if i < len(truth):
            target_lead.append(("truth", truth[i]))
    return {
        "truth first": [("truth", t) for t in truth] + [("target", t) for t in target],
        "target first": [("target", t) for t in target] + [("truth", t) for t in truth],
        "interleaved": zipped,
        "interleaved, target leading": target_lead,
        "target half first": [("target", t) for t in target[: len(target) // 2]]
        + [("truth", t) for t in truth]
        + [("target", t) for t in target[len(target) // 2 :]],
    }


class PairerCases:
    def run_orders(self, truth_spec: str, target_spec: str, expected: list[tuple]) -> None:
        truth, target = items(truth_spec), items(target_spec)
        for order, arrivals in interleavings(truth, target).items():
            recorder = Recorder()
            pairer = Pairer(recorder)
            for side, item in arrivals:
                (pairer.add_truth if side == "truth" else pairer.add_target)(item)
            self.assertEqual(recorder.calls, expected, order)
            self.assertEqual((pairer.truth_ahead, pairer.target_ahead), (0, 0), order)
            self.assertIsNone(pairer.abandoned)

    def test_positional_pairs_and_syncs(self) -> None:
        self.run_orders(
            "Q:SELECT Q:UPDATE |I P B E:x |T",
            "Q:SELECT Q:UPDATE |I P B E:y |T",
            [
                ("pair", "Q:SELECT", "Q:SELECT"),
                ("pair", "Q:UPDATE", "Q:UPDATE"),
                ("sync", "I", "I"),
                ("pair", "P", "P"),
                ("pair", "B", "B"),
                ("pair", "E:x", "E:y"),
                ("sync", "T", "T"),
            ],
        )

    def test_truth_error_leaves_target_results_unpaired(self) -> None:
        # the truth failed at Bind and skipped the rest until Sync
        self.run_orders(
            "P B:ERR |I P |I",
            "P B E:INSERT P B E:UPDATE |I P |I",
            [
                ("pair", "P", "P"),
                ("pair", "B:ERR", "B"),
                ("alone", "target", "E:INSERT"),
                ("alone", "target", "P"),
                ("alone", "target", "B"),
                ("alone", "target", "E:UPDATE"),
                ("sync", "I", "I"),
                ("pair", "P", "P"),
                ("sync", "I", "I"),
            ],
        )

    def test_target_error_leaves_truth_results_unpaired(self) -> None:
        self.run_orders(
            "P B E:SELECT |I",
            "P:ERR |I",
            [
                ("pair", "P", "P:ERR"),
                ("alone", "truth", "B"),
                ("alone", "truth", "E:SELECT"),
                ("sync", "I", "I"),
            ],
        )

    def test_both_fail_at_different_points(self) -> None:
        self.run_orders(
            "P B E:ERR |E",
            "P B:ERR |I",
            [
                ("pair", "P", "P"),
                ("pair", "B", "B:ERR"),
                ("alone", "truth", "E:ERR"),
                ("sync", "E", "I"),
            ],
        )

    def test_items_wait_for_their_partner(self) -> None:
        recorder = Recorder()
        pairer = Pairer(recorder)
        first, second, sync = items("Q:A Q:B |I")
        pairer.add_truth(first)
        pairer.add_truth(second)
        self.assertEqual(recorder.calls, [])
        self.assertEqual((pairer.truth_ahead, pairer.target_ahead), (2, 0))
        self.assertIs(pairer.truth_head(), first)
        pairer.add_target(result("Q:A"))
        self.assertEqual(recorder.calls, [("pair", "Q:A", "Q:A")])
        self.assertIs(pairer.truth_head(), second)
        pairer.add_target(result("Q:B"))
        pairer.add_target(SyncPoint("I", 0.0))
        self.assertEqual(pairer.target_ahead, 1)
        self.assertIsNone(pairer.truth_head())
        pairer.add_truth(sync)
        self.assertEqual(recorder.calls[-1], ("sync", "I", "I"))
        self.assertEqual((pairer.truth_ahead, pairer.target_ahead), (0, 0))


class CapCases:
    def test_truth_too_far_ahead(self) -> None:
        recorder = Recorder()
        pairer = Pairer(recorder, max_held=3)
        for _ in range(3):
            pairer.add_truth(result("Q"))
        self.assertIsNone(pairer.abandoned)
        self.assertEqual(pairer.truth_ahead, 3)
        pairer.add_truth(result("Q"))
        self.assertIsNotNone(pairer.abandoned)
        self.assertIn("3", pairer.abandoned)
        self.assertEqual(recorder.calls, [("abandoned", pairer.abandoned)])
        self.assertEqual(pairer.dropped, 4)
        self.assertEqual((pairer.truth_ahead, pairer.target_ahead), (0, 0))
        # later items on either side are dropped and counted, never paired, reported once
        for _ in range(5):
            pairer.add_target(result("Q"))
            pairer.add_truth(result("Q"))
        pairer.abandon("again")
        self.assertEqual(pairer.dropped, 14)
        self.assertEqual(len(recorder.calls), 1)

    def test_target_too_far_ahead(self) -> None:
        recorder = Recorder()
        pairer = Pairer(recorder, max_held=2)
        pairer.add_target(result("Q"))
        pairer.add_target(SyncPoint("I", 0.0))
        pairer.add_target(result("Q"))
        self.assertEqual(len(recorder.calls), 1)
        self.assertIn("ahead", recorder.calls[0][1])
        self.assertEqual(pairer.dropped, 3)

    def test_pairing_keeps_the_held_count_down(self) -> None:
        recorder = Recorder()
        pairer = Pairer(recorder, max_held=2)
        for _ in range(100):
            pairer.add_truth(result("Q"))
            pairer.add_truth(result("Q"))
            pairer.add_target(result("Q"))
            pairer.add_target(result("Q"))
        self.assertIsNone(pairer.abandoned)
        self.assertEqual(len(recorder.calls), 200)

    def test_explicit_abandon(self) -> None:
        recorder = Recorder()
        pairer = Pairer(recorder)
        pairer.add_truth(result("Q"))
        pairer.abandon("the target connection was lost")
        self.assertEqual(recorder.calls, [("abandoned", "the target connection was lost")])
        self.assertEqual(pairer.dropped, 1)
        pairer.add_target(result("Q"))
        self.assertEqual(pairer.dropped, 2)
        self.assertEqual(len(recorder.calls), 1)


class ObserverCases:
    def test_observers_provide_the_interface(self) -> None:
        self.assertTrue(verifyObject(IPairObserver, PairCounter()))
        self.assertTrue(verifyObject(IPairObserver, Recorder()))

    def test_pair_counter_counts(self) -> None:
        counter = PairCounter()
        pairer = Pairer(counter, max_held=5)
        for item in items("P B:ERR |I Q |I"):
            pairer.add_truth(item)
        for item in items("P B E P |I Q |I"):
            pairer.add_target(item)
        self.assertEqual(counter.paired, 3)
        self.assertEqual(counter.unpaired, {"truth": 0, "target": 2})
        self.assertEqual(counter.syncs, 2)
        self.assertIsNone(counter.abandoned)
        for _ in range(6):
            pairer.add_truth(result("Q"))
        self.assertIsNotNone(counter.abandoned)


def keyed(spec: str) -> list:
    """'P@1 B@2:ERR |I@5' -> items keyed by the client message they answer; a result
    of statement k of simple query n is 'Q@n.k'."""
    out: list = []
    for word in spec.split():
        label, _, where = word.partition("@")
        where, _, tag = where.partition(":")
        seq, _, statement = where.partition(".")
        if label.startswith("|"):
            out.append(SyncPoint(label[1:], 0.0, (int(seq) << SUB_BITS) | SYNC_SUB))
            continue
        item = result(label + (f":{tag}" if tag else ""))
        item.key = (int(seq) << SUB_BITS) | int(statement or 0)
        out.append(item)
    return out


class KeyedPairingCases:
    """Pairing by the key of the client message each item answers."""

    def run_keyed(self, truth_spec: str, target_spec: str, expected: list[tuple]) -> Pairer:
        truth, target = keyed(truth_spec), keyed(target_spec)
        for order, arrivals in interleavings(truth, target).items():
            recorder = Recorder()
            pairer = Pairer(recorder)
            for side, item in arrivals:
                (pairer.add_truth if side == "truth" else pairer.add_target)(item)
            self.assertEqual(recorder.calls, expected, order)
            self.assertEqual((pairer.truth_ahead, pairer.target_ahead), (0, 0), order)
        return pairer

    def test_a_sync_one_backend_ignored_during_copy_does_not_shift_pairing(self) -> None:
        # The truth ran an extended COPY FROM STDIN and ignored the Sync (message 5)
        # sent during it; the target failed at Parse and answered both Syncs.
        pairer = self.run_keyed(
            "P@1 B@2 E@4:COPY |I@7 Q@8.0:SELECT |I@8",
            "P@1:ERR |I@5 |I@7 Q@8.0:SELECT |I@8",
            [
                ("pair", "P", "P:ERR"),
                ("alone", "truth", "B"),
                ("alone", "truth", "E:COPY"),
                ("sync", "I", "I"),
                ("pair", "Q:SELECT", "Q:SELECT"),
                ("sync", "I", "I"),
            ],
        )
        self.assertEqual(pairer.unpaired_syncs, 1)

    def test_statements_of_one_simple_query(self) -> None:
        # "select 1; select 1/0; select 3": the truth stops at the error, the target not.
        self.run_keyed(
            "Q@1.0:SELECT Q@1.1:ERR |I@1",
            "Q@1.0:SELECT Q@1.1:SELECT Q@1.2:SELECT |I@1",
            [
                ("pair", "Q:SELECT", "Q:SELECT"),
                ("pair", "Q:ERR", "Q:SELECT"),
                ("alone", "target", "Q:SELECT"),
                ("sync", "I", "I"),
            ],
        )


class Implementation:
    """The module's ``Pairer``, ``StatementResult`` and ``SyncPoint``, as one
    implementation gives them, for the length of a test."""

    pairer: Any
    items: Any

    def setUp(self) -> None:
        module = sys.modules[__name__]
        self.patch(module, "Pairer", self.pairer)  # type: ignore[attr-defined]
        self.patch(module, "StatementResult", self.items.StatementResult)  # type: ignore[attr-defined]
        self.patch(module, "SyncPoint", self.items.SyncPoint)  # type: ignore[attr-defined]


class Python(Implementation):
    pairer, items = pairing.PYTHON, responses.PYTHON


class C(Implementation):
    pairer, items = pairing.C, responses.C
    if pairing.C is None:
        skip = "the C tracker was not built"


class CWithPythonItems(Implementation):
    pairer, items = pairing.C, responses.PYTHON
    if pairing.C is None:
        skip = "the C tracker was not built"


for _cases in (PairerCases, CapCases, ObserverCases, KeyedPairingCases):
    for _impl in (Python, C, CWithPythonItems):
        _name = _cases.__name__.replace("Cases", "Tests") + _impl.__name__
        globals()[_name] = type(_name, (_impl, _cases, SynchronousTestCase), {})
del _cases, _impl, _name


class SelectionTests(SynchronousTestCase):
    def test_the_pairer_runs_with_its_tracker(self) -> None:
        expected = pairing.C if responses.IMPLEMENTATION == "c" else pairing.PYTHON
        self.assertIs(pairing.Pairer, expected)
