"""Delivery through apprise to local servers: Telegram's Bot API and a JSON webhook; retries, backoff,
deduplication, dead letters, redaction, and a receiver killed mid-run while the pipeline goes on."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mambo.cli import app
from mambo.connectors.replay import DEMO_TRADES, load_trades
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig
from mambo.notify import NotificationStage
from mambo.notify.delivery import (
    Channel,
    DeliveryLog,
    Notifier,
    Redactor,
    RetryPolicy,
    make_channels,
    secret_parts,
)
from mambo.notify.outbox import FileOutbox, OutboxFile, run_notifier
from mambo.schemas.events import Notification, make_id
from mambo.streams.embedded import EmbeddedRuntime
from tests.notify.servers import TelegramBotApi, WebhookReceiver

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")


def note(i: int, kind: str = "entry") -> Notification:
    return Notification(
        event_id=make_id("n", i),
        ts_event=i,
        ts_init=i,
        account="main",
        kind=kind,
        level="info",
        market="binance:BTC/USDT",
        title=f"[main] entry buy BTC/USDT #{i}",
        body=f"buy 0.5 BTC/USDT at 50000 on binance #{i}",
        source_topic="fills",
        source_id=make_id("fill", i),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def telegram() -> Iterator[TelegramBotApi]:
    server = TelegramBotApi(TOKEN)
    server.start()
    yield server
    server.stop()


def telegram_channel(server: TelegramBotApi, token: str = TOKEN) -> Channel:
    [channel] = make_channels([f"tgram://{token}/4242"], timeout=2.0)
    channel.plugin.notify_url = server.base  # apprise's Telegram plugin, pointed at the local Bot API
    return channel


def test_telegram_bot_api_receives_send_message(telegram: TelegramBotApi) -> None:
    notifier = Notifier([telegram_channel(telegram)], RetryPolicy(max_attempts=1))
    notifier.offer(note(1), "t1")
    notifier.step()
    assert notifier.acked() == ["t1"]
    [req] = telegram.received
    assert req["path"] == f"/bot{TOKEN}/sendMessage"
    body = req["body"]
    assert body["chat_id"] == 4242 or body["chat_id"] == "4242"
    assert "[main] entry buy BTC/USDT #1" in body["text"]
    assert "buy 0.5 BTC/USDT at 50000 on binance #1" in body["text"]
    assert body["text"].rstrip().endswith(f"id {note(1).event_id}")
    assert notifier.stats.delivered == 1


def test_refused_sends_back_off_then_give_up_as_dead_letters_without_leaking_the_token(
    telegram: TelegramBotApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = "987654321:ZZwrongTokenWrongTokenWrongToken00"
    clock = Clock()
    dead = tmp_path / "dead.jsonl"
    policy = RetryPolicy(retry_seconds=1, retry_max_seconds=4, max_attempts=4)
    notifier = Notifier([telegram_channel(telegram, bad)], policy, dead_letters=dead, clock=clock)
    notifier.offer(note(1), "t1")
    waits = []
    with caplog.at_level(logging.DEBUG):
        for _ in range(4):
            waits.append(notifier.step())
            clock.now += waits[-1]
    assert waits[:3] == [1.0, 2.0, 4.0]  # doubling from retry_seconds, capped at retry_max_seconds
    assert telegram.received == []
    assert (notifier.stats.failures, notifier.stats.dead) == (4, 1)
    assert notifier.acked() == ["t1"]  # given up: the outbox moves on past it
    [letter] = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["attempts"] == 4 and letter["notification"]["event_id"] == note(1).event_id
    logs = caplog.text + str(capsys.readouterr()) + dead.read_text()
    assert "Unauthorized" in caplog.text  # apprise did log the refusal, and the request URL at debug ...
    assert "sendMessage" in caplog.text
    for secret in (bad, bad.split(":")[1]):  # ... but never the token
        assert secret not in logs


def test_redaction_covers_the_secret_parts_of_each_kind_of_url() -> None:
    assert TOKEN in secret_parts(f"tgram://{TOKEN}/4242")
    slack = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general"
    assert {"T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ"} <= set(secret_parts(slack))
    hook = "json://user:hunter22@127.0.0.1:8080/hooks/s3cr3t-path?-token=abcdef"
    parts = secret_parts(hook)
    assert {"hunter22", "s3cr3t-path", "abcdef"} <= set(parts) and "127.0.0.1" not in parts
    r = Redactor([hook, slack])
    line = "POST http://127.0.0.1:8080/hooks/s3cr3t-path?token=abcdef as user:hunter22 to T1JJ3T3L2"
    assert r.redact(line) == "POST http://127.0.0.1:8080/***/***?token=*** as ***:*** to ***"


def test_a_failing_webhook_is_retried_and_delivers_each_message_once_in_order(
    webhook: WebhookReceiver,
) -> None:
    clock = Clock()
    notifier = Notifier(make_channels([webhook.url]), RetryPolicy(retry_seconds=0.5), clock=clock)
    webhook.fail_next = 2
    for i in range(5):
        notifier.offer(note(i), i)
    for _ in range(10):
        clock.now += notifier.step()
    assert webhook.event_ids() == [note(i).event_id for i in range(5)]
    assert notifier.stats.failures == 2
    assert notifier.acked() == [0, 1, 2, 3, 4]
    body = webhook.received[0]["body"]
    assert (body["title"], body["type"]) == ("[main] entry buy BTC/USDT #0", "info")


def test_duplicates_are_dropped_by_event_id_across_restarts(webhook: WebhookReceiver, tmp_path: Path) -> None:
    log_file = tmp_path / "delivered.sqlite"
    first = Notifier(make_channels([webhook.url]), delivered=DeliveryLog(log_file))
    for i in (1, 2, 1):  # the same notification twice in one read
        first.offer(note(i), i)
    first.step()
    assert webhook.event_ids() == [note(1).event_id, note(2).event_id]
    assert first.stats.duplicates == 1
    # a restart that re-reads the outbox (delivered, not yet committed) sends nothing again
    second = Notifier(make_channels([webhook.url]), delivered=DeliveryLog(log_file))
    for i in (1, 2, 3):
        second.offer(note(i), i)
    second.step()
    assert webhook.event_ids() == [note(i).event_id for i in (1, 2, 3)]
    assert second.acked() == [1, 2, 3] and second.stats.duplicates == 2


def test_a_channel_that_is_down_holds_back_only_itself_and_the_commit(webhook: WebhookReceiver) -> None:
    down = WebhookReceiver()  # never started: connection refused
    clock = Clock()
    notifier = Notifier(
        make_channels([down.url, webhook.url], timeout=1.0), RetryPolicy(retry_seconds=5), clock=clock
    )
    for i in range(3):
        notifier.offer(note(i), i)
    assert notifier.step() == 5.0
    assert webhook.count == 3  # the live channel got everything
    assert notifier.acked() == []  # nothing is done on every channel: nothing may be committed
    down.start()
    try:
        clock.now += 5
        notifier.step()
        assert down.event_ids() == [note(i).event_id for i in range(3)]
        assert notifier.acked() == [0, 1, 2]
    finally:
        down.stop()


def test_kinds_turned_off_are_skipped_and_the_rate_is_capped(webhook: WebhookReceiver) -> None:
    clock = Clock()
    notifier = Notifier(
        make_channels([webhook.url]), RetryPolicy(max_per_minute=2), kinds=("exit",), clock=clock
    )
    notifier.offer(note(0, "entry"), 0)
    for i in range(1, 4):
        notifier.offer(note(i, "exit"), i)
    wait = notifier.step()
    assert webhook.count == 2 and wait == 60.0  # two a minute
    clock.now += wait
    notifier.step()
    assert webhook.event_ids() == [note(i).event_id for i in (1, 2, 3)]
    assert notifier.stats.skipped == 1 and notifier.acked() == [0, 1, 2, 3]


def run_pipeline(
    stage: NotificationStage | None = None,
    outbox: Path | None = None,
    between: Callable[[int], None] | None = None,
) -> float:
    """Trades per second of the embedded pipeline over the bundled recording, timing its own work
    only (``between(i)`` runs after the i-th batch, untimed)."""
    config = EngineConfig(
        timeframes=("1s",),
        trading_timeframe="1s",
        strategies=STRATEGIES,
        risk=RiskConfig(max_orders_per_minute=2),
    )
    rt = EmbeddedRuntime(config, metrics=False)
    writer = None
    if stage is not None and outbox is not None:
        rt.bus.add_stage(stage)
        writer = OutboxFile(outbox)
        rt.observe(writer)
    batch, _ = load_trades(DEMO_TRADES)
    elapsed = 0.0
    for i, start in enumerate(range(0, len(batch), 1_000)):
        t0 = time.perf_counter()
        rt.ingest_trades(batch.slice(start, start + 1_000))
        elapsed += time.perf_counter() - t0
        if between is not None:
            between(i)
    t0 = time.perf_counter()
    rt.finish()
    elapsed += time.perf_counter() - t0
    if writer is not None:
        writer.close()
    return len(batch) / elapsed


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_receiver_killed_mid_run_gets_everything_once_and_the_pipeline_never_waits(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    receiver.start()
    outbox = tmp_path / "outbox.jsonl"
    delivered = DeliveryLog(tmp_path / "delivered.sqlite")
    policy = RetryPolicy(
        retry_seconds=0.05, retry_max_seconds=0.2, max_attempts=10_000, max_per_minute=10_000
    )
    notifier = Notifier(make_channels([receiver.url], timeout=1.0), policy, delivered=delivered)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_notifier, args=(FileOutbox(outbox, delivered), notifier, stop), daemon=True
    )
    thread.start()
    killed_at: list[int] = []

    def kill_after_a_few(i: int) -> None:
        # once the run has made some notifications and the receiver has taken a few, it dies; the
        # pipeline goes on making more
        if i == 10:
            assert wait_for(lambda: receiver.count >= 3, 10)
            receiver.stop()
            killed_at.append(receiver.count)

    try:
        run_pipeline()  # warm up (numba, caches)
        # side by side, interleaved (the machine is shared): without notifications, and with the stage,
        # the outbox and the notifier delivering it to a receiver that dies in the first run and stays
        # down. Each run makes the same notifications (same ids): the later runs' are dropped as repeats
        baseline, with_notify = [], []
        for k in range(4):
            baseline.append(run_pipeline())
            stage = NotificationStage(rejections_per_minute=1)
            with_notify.append(run_pipeline(stage, outbox, kill_after_a_few if k == 0 else None))
        written = [
            Notification.model_validate_json(line).event_id for line in outbox.read_text().splitlines()
        ]
        unique = list(dict.fromkeys(written))
        assert len(written) == 4 * len(unique)
        assert killed_at and len(unique) > killed_at[0] + 10
        assert wait_for(lambda: notifier.stats.failures >= 3, 10)  # retried while it is away
        assert receiver.count == killed_at[0]
        receiver.start()  # back on the same port
        assert wait_for(lambda: receiver.count >= len(unique), 30)
        assert wait_for(lambda: notifier.pending == 0, 10)
        assert receiver.event_ids() == unique  # every one, once, in order
        assert notifier.stats.duplicates == 3 * len(unique)
    finally:
        stop.set()
        thread.join(10)
        receiver.stop()
    best, best_with = max(baseline), max(with_notify)
    print(
        f"trades/s, best of 4: without notifications {best:,.0f}, with them (receiver down) {best_with:,.0f}"
    )
    assert best_with > 0.75 * best, (baseline, with_notify)
    cursor = DeliveryLog(tmp_path / "delivered.sqlite").get_cursor(f"file:{outbox.resolve()}")
    assert cursor is not None and int(cursor) == outbox.stat().st_size  # all of it committed


def test_mambo_notify_delivers_an_outbox_file(
    webhook: WebhookReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    outbox.write_text("".join(note(i).model_dump_json() + "\n" for i in range(3)) + "not json\n")
    secret_hook = f"{webhook.url}/{TOKEN.replace(':', '')}"
    monkeypatch.setenv("MAMBO_NOTIFY__CHANNELS", json.dumps([secret_hook]))
    result = CliRunner().invoke(
        app,
        [
            "notify",
            "--source",
            "file",
            "--outbox-file",
            str(outbox),
            "--idle-exit",
            "0.5",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert webhook.event_ids() == [note(i).event_id for i in range(3)]
    assert "delivered 3" in result.output
    assert TOKEN.replace(":", "") not in result.output
    monkeypatch.setenv("MAMBO_NOTIFY__CHANNELS", "[]")
    result = CliRunner().invoke(app, ["notify", "--source", "file", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no channels" in result.output
