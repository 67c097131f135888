"""Keeping the target in step around COPY FROM STDIN that only one backend runs.

The client sends COPY data only for the truth's COPY. A target that began a COPY the
truth refused would wait for data that never comes, and take the client's next messages
for COPY data; a target that refused a COPY the truth runs simply ignores the data. So
after a statement that may start COPY FROM STDIN, the client's bytes are held from the
target until both backends have shown how they answered it; if only the target copies,
it gets CopyFail first. Bounded: past ``HOLD_BYTES`` the client is paused.
"""

from __future__ import annotations

from collections.abc import Callable

from twinkly.interfaces import ISessionOperations
from twinkly.tracking.pairing import Pairer
from twinkly.tracking.responses import SYNC_SUB, ResponseTracker, StatementResult
from twinkly.wire.frontend import CopyFail, encode

HOLD_BYTES = 1024 * 1024  # client bytes held for the target before the client waits


class CopyAlignment:
    """One session's COPY bookkeeping for its target."""

    def __init__(
        self,
        session: ISessionOperations,
        truth_tracker: ResponseTracker,
        target_tracker: ResponseTracker,
        pairer: Pairer,
        tick: Callable[[], float],
    ) -> None:
        self.session = session
        self._truth = truth_tracker
        self._target = target_tracker
        self._pairer = pairer
        self._tick = tick
        self._held: list[bytes] | None = None
        # Whether the target's bytes are held (``_held`` is a list): a plain attribute,
        # since the session asks after every read.
        self.holding = False
        self._held_bytes = 0
        self._key = 0  # result key of the statement that may copy

    def start(self, key: int) -> None:
        self._held = []
        self.holding = True
        self._held_bytes = 0
        self._key = key

    def hold(self, data: bytes) -> None:
        """Keep the client's bytes from the target while it may be in COPY FROM STDIN."""
        assert self._held is not None
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > HOLD_BYTES:
            self.session.pause_client("copy-hold")

    def check(self) -> None:
        """Release the held bytes once both backends have shown how they answered the
        COPY: if the target copies and the truth does not, end the target's COPY first
        (the client will send no data for it); otherwise the bytes go on as they are."""
        if self._held is None or not self.session.target_connected:
            return
        first, last = self._key, self._key | SYNC_SUB
        target = self._target
        target_copying = target.copy_in and first <= target.copy_key <= last
        if not target_copying:
            if target.last_key < first:
                return  # the target has not answered the COPY statement yet
        else:
            copied = self.truth_copied(target.copy_key)
            if copied is None:
                return  # the truth has not answered that statement yet
            if not copied:
                self.fail_target_copy()
                return
        self.release()

    def truth_copied(self, key: int) -> bool | None:
        """Whether the truth ran the statement ``key`` as COPY FROM STDIN; None while
        that is not known yet. The truth may be several statements ahead, so its answer
        is looked up among its results still waiting for the target's."""
        current = self._truth.current
        if current is not None and current.key == key:
            return True if current.copy == "in" else None
        for item in self._pairer.truth_pending():
            if item.key == key:
                return type(item) is StatementResult and item.copy == "in"
            if item.key > key:
                return False  # the truth went past it without a result: it skipped it
        return False if self._truth.last_key >= key else None

    def release(self) -> None:
        held, self._held = self._held, None
        self.holding = False
        for chunk in held or ():
            self.session.send_to_target(chunk)
        if held:
            self._target.sent(self._tick())
        self.session.resume_client("copy-hold")

    def fail_target_copy(self) -> None:
        """End the target's COPY; what the client sent since then may follow it."""
        message = "COPY ended by Twinkly: the source of truth did not run this COPY"
        self.session.send_to_target(encode(CopyFail(message)))
        self._target.copy_in = False
        if self._held is not None:
            self.release()

    def check_target_copy(self) -> None:
        """End a COPY FROM STDIN the target started but the truth did not (also when
        nothing is held: the COPY may come from a statement not seen as one)."""
        copying = self._target.current
        if copying is None or copying.copy != "in" or not self.session.target_connected:
            return
        if self.truth_copied(copying.key) is False:
            self.fail_target_copy()
