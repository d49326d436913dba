"""Which fatal fence the exactly-once worker survives (issue 14): a transaction its coordinator aborted
for its timeout while the worker waited on the broker (the coordinator's broker died mid-commit and
its successor loaded the transaction too late; librdkafka reports ``_FENCED``, fatal), never a fence
by another process holding the worker's transactional id.

The predicate alone needs no broker. On the session's broker: the fence injected at a commit after
the (for the predicate, shortened) timeout; and a real fence, a producer taking the worker's id as a
restarted worker would, which stops the worker, unless taken for a timeout, when the worker must
replace its fenced producer and lose or double nothing; and a send_offsets_to_transaction that does
not return (librdkafka issue 5511), given up after a (shortened) bound."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from mambo.connectors.replay import load_trades
from mambo.schemas.batches import TradeBatch
from mambo.schemas.topics import FILLS, ORDERS
from mambo.streams.kafka import worker as worker_module
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.worker import TRANSACTION_TIMEOUT_MS, _timed_out_by_broker

from .conftest import engine_config, read_topic
from .test_pipeline import SLICE, of, reference

TIMEOUT = TRANSACTION_TIMEOUT_MS / 1000
FENCED = KafkaError(KafkaError._FENCED, "Failed to end transaction: fenced", fatal=True)


def ago(seconds: float) -> float:
    return time.monotonic() - seconds


def test_a_commit_waiting_through_the_timeout_was_aborted_by_the_broker() -> None:
    begun = ago(TIMEOUT + 2)  # began, produced, called the broker at once, failed after the timeout
    assert _timed_out_by_broker(FENCED, begun, begun + 0.05, TIMEOUT)


@pytest.mark.parametrize(
    ("what", "error", "begun_ago", "waited_after"),
    [
        ("fenced before the timeout: another process", FENCED, TIMEOUT / 2, 0.05),
        ("called the broker only after the timeout: a paused zombie", FENCED, TIMEOUT + 5, TIMEOUT + 1),
        ("fenced while processing, before any call", FENCED, TIMEOUT + 2, float("inf")),
        (
            "another fatal error",
            KafkaError(KafkaError.INVALID_TXN_STATE, "invalid state", fatal=True),
            TIMEOUT + 2,
            0.05,
        ),
    ],
)
def test_any_other_fatal_error_stays_fatal(
    what: str, error: KafkaError, begun_ago: float, waited_after: float
) -> None:
    begun = ago(begun_ago)
    assert not _timed_out_by_broker(error, begun, begun + waited_after, TIMEOUT), what


SHORT = 3.0  # s: the transaction timeout the predicate sees in the worker tests (a batch takes less)


def fenced_at(commit: int, wait: float, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker's producers fail their ``commit``-th commit with a fatal ``_FENCED`` after ``wait`` s
    (without committing); the predicate judges against a timeout of SHORT s. The commits called."""
    commits: list[int] = []

    class Fenced(Producer):
        def commit_transaction(self, *args: Any) -> None:
            commits.append(len(commits) + 1)
            if commits[-1] == commit:
                time.sleep(wait)
                raise KafkaException(FENCED)
            super().commit_transaction(*args)

    real = worker_module._timed_out_by_broker
    monkeypatch.setattr(worker_module, "Producer", Fenced)
    monkeypatch.setattr(
        worker_module,
        "_timed_out_by_broker",
        lambda error, begun, waiting, timeout: real(error, begun, waiting, SHORT),
    )
    return commits


def test_a_transaction_the_coordinator_timed_out_is_done_again(
    bootstrap: str, kafka_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = load_trades()[0].slice(0, 12_000)  # 72 orders, 36 fills: enough to miss or double one
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for s in range(0, len(batch), SLICE):
            pub.publish_trades(batch.slice(s, s + SLICE))
    ref = reference(engine_config(), batch)
    commits = fenced_at(3, SHORT + 0.5, monkeypatch)
    worker = worker_module.Worker(bootstrap, engine_config(), prefix=kafka_prefix, batch_size=2_000)
    worker.run(idle_exit=3.0)
    assert len(commits) > 3 and worker.processed == len(batch) and worker.aborted >= 1
    for topic in (ORDERS.name, FILLS.name):  # none lost, none doubled (the fenced batch was not committed)
        got = read_topic(bootstrap, topic, kafka_prefix)
        assert sorted(got, key=lambda e: e.event_id) == of(ref, topic), topic


def run_fenced(
    bootstrap: str, prefix: str, trades: TradeBatch
) -> tuple[worker_module.Worker, list[BaseException]]:
    """A worker through ``trades`` while another producer takes its first transactional id (as a
    restarted worker would): after the worker committed twice on the first half, before the second."""
    half = len(trades) // 2
    with KafkaPublisher(bootstrap, prefix) as pub:
        pub.publish_trades(trades.slice(0, half))
    worker = worker_module.Worker(bootstrap, engine_config(), prefix=prefix, batch_size=500)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(idle_exit=3.0)
        except BaseException as ex:
            raised.append(ex)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while worker.batches < 2 and thread.is_alive():
        assert time.monotonic() < deadline, "the worker committed nothing"
        time.sleep(0.05)
    successor = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{prefix}mambo-worker-1"})
    successor.init_transactions(30)  # fences the worker's producer of that id
    with KafkaPublisher(bootstrap, prefix) as pub:
        pub.publish_trades(trades.slice(half, len(trades)))
    thread.join(120)
    assert not thread.is_alive()
    return worker, raised


def test_a_fence_by_another_process_stops_the_worker(bootstrap: str, kafka_prefix: str) -> None:
    worker, raised = run_fenced(bootstrap, kafka_prefix, load_trades()[0].slice(0, 12_000))
    assert len(raised) == 1 and isinstance(raised[0], KafkaException), raised
    assert raised[0].args[0].fatal() and worker.aborted == 0


def test_a_producer_fenced_for_real_is_replaced_and_nothing_is_lost_or_doubled(
    bootstrap: str, kafka_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery from a real fatal state of librdkafka (the fence taken as the coordinator's timeout):
    the fenced producer's abort fails, a new one under the same id fences the other in turn, the
    batch is done again."""
    monkeypatch.setattr(worker_module, "_timed_out_by_broker", lambda *args: True)
    trades = load_trades()[0].slice(0, 12_000)
    ref = reference(engine_config(), trades)
    worker, raised = run_fenced(bootstrap, kafka_prefix, trades)
    assert raised == [] and worker.aborted >= 1 and worker.processed == len(trades)
    for topic in (ORDERS.name, FILLS.name):
        got = read_topic(bootstrap, topic, kafka_prefix)
        assert sorted(got, key=lambda e: e.event_id) == of(ref, topic), topic


def test_a_send_offsets_that_never_returns_is_given_up_and_its_batch_done_again(
    bootstrap: str, kafka_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka issue 5511: send_offsets_to_transaction blocked past its timeout (here 3 s against a
    bound shortened to 1 s). The worker gives the producer up, a new one fences it, nothing is lost
    or doubled."""
    calls: list[int] = []

    class Stuck(Producer):
        def send_offsets_to_transaction(self, *args: Any) -> None:
            calls.append(len(calls) + 1)
            if calls[-1] == 3:
                time.sleep(3.0)
                raise KafkaException(FENCED)  # what librdkafka answers once it wakes up, fenced
            super().send_offsets_to_transaction(*args)

    monkeypatch.setattr(worker_module, "Producer", Stuck)
    monkeypatch.setattr(worker_module, "SEND_OFFSETS_BOUND", 1.0)
    trades = load_trades()[0].slice(0, 12_000)
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for s in range(0, len(trades), SLICE):
            pub.publish_trades(trades.slice(s, s + SLICE))
    ref = reference(engine_config(), trades)
    worker = worker_module.Worker(bootstrap, engine_config(), prefix=kafka_prefix, batch_size=2_000)
    worker.run(idle_exit=3.0)
    assert len(calls) > 3 and worker.aborted >= 1 and worker.processed == len(trades)
    for topic in (ORDERS.name, FILLS.name):
        got = read_topic(bootstrap, topic, kafka_prefix)
        assert sorted(got, key=lambda e: e.event_id) == of(ref, topic), topic
