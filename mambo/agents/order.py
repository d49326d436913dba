"""Admitting an input partition's messages in log order, each once, whatever order Faust delivers them in.

Start here: :class:`InputOrder` (``admit`` a batch's (partition, offset) pairs; the Faust agent in
:mod:`mambo.agents.app` acts on its verdicts).

Why: Faust does not always deliver a partition in log order. Its table recovery resumes the input
partitions and then seeks them back to their committed offsets; records fetched before the seek can
still be on their way out after it, and Faust's read-offset filter then drops the refetched records
*below* the stale ones. The agent would process a later record before an earlier one and lose the
earlier one. Faust also takes any jump in offsets as transaction markers and counts the offsets
skipped as done, so a commit could pass records not yet processed.

So each assigned partition has the offset of the next record the agent may process, starting at the
group's committed offset. A record below it was processed (a redelivery: skipped). A record above it
is checked against the broker: if a record between exists (the first committed record at or after the
expected offset comes before it), it is out of order: dropped and the partition sought back. If
there is none (transaction markers, or deleted records), the gap is real and the offsets between are
reported so Faust may count them as done. The broker is asked only on a jump, which for a
non-transactional producer of the input happens only after such a seek.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from enum import Enum

__all__ = ["InputOrder", "Verdict"]


class Verdict(Enum):
    """What to do with one delivered record."""

    PROCESS = "process"  # the next record in log order
    REPEAT = "repeat"  # processed before (by this process or, before the committed offset, by any)
    DROP = "drop"  # out of order or not assigned here: neither processed nor acknowledged


class InputOrder:
    """Per assigned input partition, the offset of the next record to process.

    ``start(p)`` gives the offset processing of partition ``p`` begins at (the group's committed
    offset, or the log start when nothing is committed); ``first_at(p, offset)`` the offset of the
    first record a consumer reads at or after ``offset`` (``None`` if the broker gave none). Both are
    asked only when needed: ``start`` once per partition after an assignment, ``first_at`` on a jump.
    """

    def __init__(self, start: Callable[[int], int], first_at: Callable[[int, int], int | None]) -> None:
        self._start = start
        self._first_at = first_at
        self._next: dict[int, int] = {}
        # partition -> (expected offset, the first record at or after it): asked once per jump
        self._checked: dict[int, tuple[int, int | None]] = {}

    def expected(self, partition: int) -> int | None:
        """The offset the partition's next record to process must have (None: not started)."""
        return self._next.get(partition)

    def revoke(self, partitions: Iterable[int]) -> None:
        """Partitions taken away: if one comes back, it starts again from the committed offset."""
        for p in partitions:
            self._next.pop(p, None)
            self._checked.pop(p, None)

    def admit(
        self, records: Sequence[tuple[int, int]], assigned: Collection[int]
    ) -> tuple[list[Verdict], dict[int, int], list[tuple[int, int, int]]]:
        """The verdict on each (partition, offset) of a batch, in delivery order, given the
        partitions assigned now; the partitions to seek back, each to the offset it must resume at
        after the batch; and the real gaps, (partition, first, last offset) of offsets that hold no
        record to process."""
        verdicts: list[Verdict] = []
        ahead: set[int] = set()  # partitions with a record dropped as out of order
        gaps: list[tuple[int, int, int]] = []
        self.revoke(set(self._next) - set(assigned))
        for p, offset in records:
            if p not in assigned:  # a stale record of a partition revoked
                verdicts.append(Verdict.DROP)
                continue
            expected = self._next.get(p)
            if expected is None:
                expected = self._next[p] = self._start(p)
            if offset < expected:
                verdicts.append(Verdict.REPEAT)
                continue
            if offset > expected:
                checked = self._checked.get(p)
                if checked is None or checked[0] != expected or checked[1] is None:
                    checked = self._checked[p] = (expected, self._first_at(p, expected))
                first = checked[1]
                if first is None or first < offset:
                    ahead.add(p)
                    verdicts.append(Verdict.DROP)
                    continue
                gaps.append((p, expected, offset - 1))
            self._next[p] = offset + 1
            verdicts.append(Verdict.PROCESS)
        return verdicts, {p: self._next[p] for p in ahead}, gaps
