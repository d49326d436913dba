"""The outbox readers for the embedded runtime: a JSON-lines file and the ClickHouse history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import ClickHouseSink
from mambo.notify.delivery import DeliveryLog, Notifier, make_channels
from mambo.notify.outbox import ClickHouseOutbox, FileOutbox, OutboxFile
from mambo.schemas.events import Notification, make_id
from mambo.schemas.topics import NOTIFICATIONS
from tests.notify.servers import WebhookReceiver

S = 1_000_000_000


def note(i: int, ts_init: int | None = None) -> Notification:
    return Notification(
        event_id=make_id("outbox-note", i),
        ts_event=i * S,
        ts_init=i * S if ts_init is None else ts_init,
        account="main",
        kind="drawdown",
        level="warning",
        title=f"[main] drawdown #{i}",
        body="drawdown 6.00% passed 5%",
        source_topic="equity",
        source_id=make_id("equity", i),
    )


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


def test_file_outbox_reads_whole_lines_and_resumes_at_its_cursor(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    writer = OutboxFile(path)
    writer("fills", object())  # other topics are not the outbox's
    writer(NOTIFICATIONS.name, note(1))
    line = note(2).model_dump_json()
    with path.open("a") as f:
        f.write(line[:20])  # a line still being written
    log = DeliveryLog(tmp_path / "d.sqlite")
    reader = FileOutbox(path, log)
    [(n, end)] = reader.poll(10, 0.0)
    assert n == note(1) and end == len(note(1).model_dump_json()) + 1
    assert reader.poll(10, 0.0) == []
    with path.open("a") as f:
        f.write(line[20:] + "\n")
    [(n2, end2)] = reader.poll(10, 0.0)
    assert n2 == note(2) and end2 == path.stat().st_size
    reader.commit([end])
    assert [n for n, _ in FileOutbox(path, log).poll(10, 0.0)] == [note(2)]  # from the commit on
    writer.close()


def test_clickhouse_outbox_polls_the_history_by_ts_init_and_drops_repeats(
    clickhouse_client: Client, clickhouse_db: str, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write(NOTIFICATIONS.table, [note(1), note(2)])
    sink.flush()
    log = DeliveryLog(tmp_path / "d.sqlite")
    reader = ClickHouseOutbox(clickhouse_client, clickhouse_db, log, lookback=60)
    notifier = Notifier(make_channels([webhook.url]), delivered=log)
    for n, token in reader.poll(100, 0.0):
        notifier.offer(n, token)
    notifier.step()
    reader.commit(notifier.acked())
    assert webhook.event_ids() == [note(1).event_id, note(2).event_id]
    # a row that lands later with an earlier ts_init (within the look-back), and a new one
    sink.write(NOTIFICATIONS.table, [note(3, ts_init=1 * S + 1), note(4)])
    sink.flush()
    assert [n.event_id for n, _ in reader.poll(100, 0.0)] == [note(3).event_id, note(4).event_id]
    # a restarted reader starts from the committed cursor less the look-back: it sees 1..4 again, and
    # the delivery log drops what was delivered
    again = ClickHouseOutbox(clickhouse_client, clickhouse_db, log, lookback=60)
    notifier = Notifier(make_channels([webhook.url]), delivered=log)
    for n, token in again.poll(100, 0.0):
        notifier.offer(n, token)
    notifier.step()
    assert webhook.event_ids() == [note(i).event_id for i in (1, 2, 3, 4)]
    assert notifier.stats.duplicates == 2


def test_clickhouse_outbox_reads_notifications_of_today(
    clickhouse_client: Client, clickhouse_db: str, tmp_path: Path
) -> None:
    """Times of this century (ns since 1970 past 1.7e18): the poll's condition compares them as the
    nanoseconds they are (compared as a DateTime64, ClickHouse refused them: decimal overflow)."""
    now = 1_764_806_400 * S  # 2025-12-04
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write(NOTIFICATIONS.table, [note(i, ts_init=now + i * S) for i in range(1, 4)])
    sink.flush()
    log = DeliveryLog(tmp_path / "d.sqlite")
    reader = ClickHouseOutbox(clickhouse_client, clickhouse_db, log, lookback=1)
    assert [n.event_id for n, _ in reader.poll(100, 0.0)] == [note(i).event_id for i in range(1, 4)]
    later = ClickHouseOutbox(clickhouse_client, clickhouse_db, log, lookback=1)
    later.cursor = now + 3 * S  # a second's look-back from the third: the first is before it
    assert [n.event_id for n, _ in later.poll(100, 0.0)] == [note(2).event_id, note(3).event_id]
