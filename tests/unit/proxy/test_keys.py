"""Cancel keys: the truth's process id, a secret of Twinkly's naming the owning worker."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.proxy.keys import CancelKeys
from twinkly.testing import ClientHarness


class CancelKeyTests(SynchronousTestCase):
    def test_the_truths_process_id_is_kept(self) -> None:
        process_id, secret = CancelKeys(3).allocate(4242, set())
        self.assertEqual(process_id, 4242)
        self.assertEqual(len(secret), 4)

    def test_a_missing_or_taken_id_is_replaced(self) -> None:
        keys = CancelKeys()
        for truth_id, taken in ((None, set()), (0, set()), (77, {77})):
            process_id, _ = keys.allocate(truth_id, taken)
            self.assertGreater(process_id, 0)
            self.assertNotIn(process_id, taken)
            self.assertLess(process_id, 2**31)

    def test_the_secret_names_its_worker(self) -> None:
        for worker in (0, 1, 7, 63):
            for _ in range(20):
                _, secret = CancelKeys(worker).allocate(1, set())
                self.assertEqual(CancelKeys.owner(secret), worker)

    def test_secrets_differ(self) -> None:
        keys = CancelKeys(5)
        self.assertEqual(len({keys.allocate(1, set())[1] for _ in range(50)}), 50)

    def test_a_worker_index_out_of_range_is_refused(self) -> None:
        self.assertRaises(ValueError, CancelKeys, 64)
        self.assertRaises(ValueError, CancelKeys, -1)


class ForwardingTests(SynchronousTestCase):
    def test_a_cancel_for_another_worker_is_forwarded_and_an_own_one_delivered(self) -> None:
        forwarded: list[tuple] = []
        h = ClientHarness(keys=CancelKeys(2), forward_cancel=lambda *a: forwarded.append(a))
        h.startup()
        h.connect_backends()
        session = h.client.session
        process_id = session.session_id
        secret = h.factory.sessions[process_id][0]
        self.assertEqual(CancelKeys.owner(secret), 2)
        other = CancelKeys(1).allocate(process_id, set())[1]
        h.factory.cancel(process_id, other)
        self.assertEqual(forwarded, [(1, process_id, other)])
        h.factory.cancel(process_id, secret)  # its own: sent to both backends
        self.assertEqual(len(forwarded), 1)
        cancels = [
            c for c in h.reactor.tcpClients if c[1] in (5001, 5002)
        ]  # one connection per backend to deliver the CancelRequest
        self.assertEqual(sorted(c[1] for c in cancels), [5001, 5002])
