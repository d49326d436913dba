"""InputOrder: each input partition's records admitted in log order, once each, whatever order they
are delivered in. The broker is a dict of the offsets each partition holds (gaps are transaction
markers or deleted records) and the group's committed offsets."""

from __future__ import annotations

import pytest

from mambo.agents.order import InputOrder, Verdict

P, R, D = Verdict.PROCESS, Verdict.REPEAT, Verdict.DROP


class Broker:
    def __init__(self, log: dict[int, list[int]], committed: dict[int, int]) -> None:
        self.log, self.committed = log, committed
        self.asked: list[tuple[str, int, int]] = []

    def start(self, p: int) -> int:
        self.asked.append(("start", p, -1))
        return self.committed.get(p, self.log[p][0])

    def first_at(self, p: int, offset: int) -> int | None:
        self.asked.append(("first_at", p, offset))
        return next((o for o in self.log[p] if o >= offset), None)


def order(log: dict[int, list[int]], committed: dict[int, int] | None = None) -> tuple[InputOrder, Broker]:
    broker = Broker(log, committed or {})
    return InputOrder(broker.start, broker.first_at), broker


def test_records_in_log_order_are_processed_and_the_broker_asked_once_per_partition() -> None:
    io, broker = order({0: list(range(100)), 1: list(range(100))}, {0: 10, 1: 0})
    verdicts, reseek, gaps = io.admit([(0, 10), (1, 0), (0, 11), (1, 1), (0, 12)], {0, 1})
    assert verdicts == [P] * 5 and reseek == {} and gaps == []
    assert io.admit([(0, 13), (1, 2)], {0, 1})[0] == [P, P]
    assert broker.asked == [("start", 0, -1), ("start", 1, -1)]


def test_records_before_the_committed_offset_or_processed_already_are_repeats() -> None:
    io, _ = order({0: list(range(100))}, {0: 10})
    assert io.admit([(0, 8), (0, 9), (0, 10), (0, 11)], {0})[0] == [R, R, P, P]
    # a seek back to the committed offset delivers them again: skipped, then the next is processed
    assert io.admit([(0, 10), (0, 11), (0, 12)], {0})[0] == [R, R, P]


def test_a_stale_record_ahead_of_an_unprocessed_one_is_dropped_and_its_partition_sought_back() -> None:
    """What Faust did in the flaky two-worker run: after its recovery's seek to the committed offset
    10, a record fetched before the seek (12) came first, and the refetched 10 and 11 later."""
    io, _ = order({0: list(range(100)), 1: list(range(100))}, {0: 10, 1: 5})
    verdicts, reseek, gaps = io.admit([(0, 12), (1, 5), (0, 13)], {0, 1})
    assert verdicts == [D, P, D]  # 13 too: nothing of partition 0 runs ahead of 10
    assert reseek == {0: 10} and gaps == []
    verdicts, reseek, _ = io.admit([(0, 10), (0, 11), (0, 12), (0, 13), (1, 6)], {0, 1})
    assert verdicts == [P] * 5 and reseek == {}


def test_in_order_records_behind_stale_ones_in_a_batch_are_processed_and_the_broker_asked_once() -> None:
    """After a seek back, the refetched records can share a batch with stale ones still queued."""
    io, broker = order({0: list(range(100))}, {0: 10})
    verdicts, reseek, _ = io.admit([(0, 12), (0, 13), (0, 10), (0, 11), (0, 30), (0, 12)], {0})
    assert verdicts == [D, D, P, P, D, P]
    assert reseek == {0: 13}  # from where the partition got to
    assert broker.asked == [("start", 0, -1), ("first_at", 0, 10), ("first_at", 0, 12)]


def test_a_jump_over_offsets_without_records_is_a_real_gap_reported_for_the_commit() -> None:
    """Offsets 11 and 12 hold transaction markers (or were deleted): 13 is next in log order."""
    io, broker = order({0: [10, 13, 14]}, {0: 10})
    verdicts, reseek, gaps = io.admit([(0, 10), (0, 13), (0, 14)], {0})
    assert verdicts == [P, P, P] and reseek == {} and gaps == [(0, 11, 12)]
    assert ("first_at", 0, 11) in broker.asked


def test_nothing_committed_starts_at_the_log_start() -> None:
    io, _ = order({0: [40, 41, 42]})
    assert io.admit([(0, 41)], {0}) == ([D], {0: 40}, [])
    assert io.admit([(0, 40), (0, 41)], {0})[0] == [P, P]


def test_records_of_partitions_not_assigned_are_dropped_and_a_revoked_one_restarts_from_its_commit() -> None:
    io, broker = order({0: list(range(100)), 1: list(range(100))}, {0: 0, 1: 0})
    assert io.admit([(0, 0), (0, 1), (1, 0)], {0})[0] == [P, P, D]
    io.revoke([0])
    broker.committed[0] = 2  # what this worker committed on the revocation
    assert io.admit([(0, 1), (0, 2)], {0})[0] == [R, P]
    # a partition that went elsewhere and came back resumes from the other worker's commit
    assert io.admit([(0, 3)], {1})[0] == [D]
    broker.committed[0] = 50
    assert io.admit([(0, 3), (0, 50)], {0, 1})[0] == [R, P]


@pytest.mark.parametrize("first", [None, 11])
def test_a_broker_that_does_not_answer_or_shows_an_earlier_record_means_seek_back(first: int | None) -> None:
    io = InputOrder(lambda p: 10, lambda p, o: first)
    assert io.admit([(0, 10), (0, 12)], {0}) == ([P, D], {0: 11}, [])
