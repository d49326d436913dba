"""The invariants ClickHouse checks by itself: each is a query or two over the raw tables.

Every function takes a client and the database, and returns a :class:`~mambo.audit.report.Finding`.
Reads use ``FINAL`` (one row per event id) except where the raw rows are the point (event ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from mambo.audit.report import Finding, amount, when
from mambo.schemas.ddl import table_columns
from mambo.schemas.events import timeframe_ns
from mambo.schemas.topics import TABLES

__all__ = [
    "candles_from_trades",
    "equity_identity",
    "event_ids",
    "fills_have_orders",
    "fills_in_range",
    "orders_have_intents",
    "positions_at_mark",
    "repeated_bars",
]

#: Columns an event's repeats may differ in: when it entered Mambo (README, "at least once").
_MAY_DIFFER = frozenset({"ts_init"})


def _rows(client: Client, sql: str, **parameters: Any) -> Sequence[Sequence[Any]]:
    return client.query(sql, parameters=parameters).result_rows


def _t(database: str, table: str) -> str:
    return f"`{database}`.`{table}`"


def event_ids(client: Client, database: str) -> Finding:
    """No event id has two different contents (``ts_init`` aside) in any table: read from the raw rows,
    before ``FINAL`` or a merge keeps one of them. A merge that already collapsed two versions hides
    them here; the recomputing checks then still see the version that stayed."""
    checked, bad, example = 0, 0, ""
    for table in TABLES:
        content = ", ".join(f"`{c.name}`" for c in table_columns(table) if c.name not in _MAY_DIFFER)
        [(rows, n, first)] = _rows(
            client,
            f"SELECT (SELECT count() FROM {_t(database, table)}), count(), min(event_id) FROM "
            f"(SELECT event_id FROM {_t(database, table)} GROUP BY event_id "
            f"HAVING uniqExact(tuple({content})) > 1)",
        )
        checked += rows
        bad += n
        if n and not example:
            example = f"{table} {first}: " + _difference(client, database, table, first)
    return Finding("one content per event id", checked, bad, example)


def _difference(client: Client, database: str, table: str, event_id: str) -> str:
    """The columns in which the rows of one event id differ, with two of their values."""
    result = client.query(
        f"SELECT * EXCEPT (ts_init) FROM {_t(database, table)} WHERE event_id = {{id:String}}",
        parameters={"id": event_id},
    )
    rows = list(result.named_results())
    differ = [c for c in result.column_names if len({repr(r[c]) for r in rows}) > 1]
    parts = [f"{c} {_short(rows[0][c])} vs {_short(next(r[c] for r in rows if r[c] != rows[0][c]))}"
             for c in differ[:2]]  # fmt: skip
    return f"{len(rows)} rows; " + "; ".join(parts)


def _short(value: object, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def repeated_bars(client: Client, database: str) -> Finding:
    """No two candles (distinct event ids) share an exchange, symbol, timeframe and open time."""
    candles = _t(database, "candles")
    [(bars, bad)] = _rows(
        client,
        f"SELECT count(), countIf(n > 1) FROM (SELECT uniqExact(event_id) AS n FROM {candles} "
        "GROUP BY exchange, symbol, timeframe, open_time)",
    )
    example = ""
    if bad:
        [(ex, sym, tf, ot, n, ids)] = _rows(
            client,
            "SELECT exchange, symbol, timeframe, toUnixTimestamp64Nano(open_time), count(), "
            f"groupArray(tuple(open, close, volume, trades)) FROM {candles} FINAL "
            "GROUP BY exchange, symbol, timeframe, open_time HAVING count() > 1 ORDER BY open_time LIMIT 1",
        )
        versions = ", ".join(f"O {o:g} C {c:g} V {v:g} ({t} trades)" for o, c, v, t in ids[:2])
        example = f"{ex}:{sym} {tf} {when(ot)}: {n} candles: {versions}"
    return Finding("one candle per bar", bars, bad, example)


def _references(
    client: Client, database: str, invariant: str, child: str, key: str, parent: str, what: str
) -> Finding:
    """Every ``child`` row (one per ``key``) names a ``client_order_id`` found in ``parent``."""
    [(n, bad, first)] = _rows(
        client,
        "SELECT count(), countIf(NOT known), argMinIf(tuple(coid, exchange, symbol, strategy, side, ts), "
        "ts, NOT known) FROM (SELECT any(client_order_id) AS coid, any(exchange) AS exchange, "
        "any(symbol) AS symbol, any(strategy) AS strategy, any(side) AS side, "
        f"toUnixTimestamp64Nano(min(ts_event)) AS ts FROM {_t(database, child)} GROUP BY {key}) AS c "
        f"LEFT JOIN (SELECT DISTINCT client_order_id AS coid, 1 AS known FROM {_t(database, parent)}) AS p "
        "USING coid",
    )
    example = ""
    if bad:
        coid, ex, sym, strategy, side, ts = first
        example = f"{what} {coid} ({ex}:{sym} {strategy} {side}, {when(ts)}) has none"
    return Finding(invariant, n, bad, example)


def orders_have_intents(client: Client, database: str) -> Finding:
    """Every order (client order id) comes from an intent."""
    return _references(
        client, database, "every order has its intent", "orders", "client_order_id", "order_intents", "order"
    )


def fills_have_orders(client: Client, database: str) -> Finding:
    """Every fill names an order of the history."""
    return _references(
        client, database, "every fill has its order", "fills", "event_id", "orders", "fill of order"
    )


def equity_identity(client: Client, database: str) -> Finding:
    """``cash + positions_value == equity`` in every snapshot, exactly (``Decimal(38, 18)``)."""
    equity = _t(database, "equity")
    [(n, bad)] = _rows(
        client, f"SELECT count(), countIf(cash + positions_value != equity) FROM {equity} FINAL"
    )
    example = ""
    if bad:
        [(account, ts, cash, value, eq)] = _rows(
            client,
            f"SELECT account, toUnixTimestamp64Nano(ts_event), cash, positions_value, equity FROM {equity} "
            "FINAL WHERE cash + positions_value != equity ORDER BY ts_event LIMIT 1",
        )
        example = (
            f"{account} {when(ts)}: cash {amount(cash)} + positions {amount(value)} "
            f"= {amount(cash + value)}, equity {amount(eq)}"
        )
    return Finding("cash + positions = equity", n, bad, example)


def candles_from_trades(client: Client, database: str) -> Finding:
    """Every candle built from trades (``trades > 0``; an exchange's own candles have 0) recomputes from
    the stored trades of its bar ``[open_time, open_time + timeframe)``: high, low and trade count
    exactly, volume to 1e-9 relative (a float sum's order), open and close among the prices traded at
    the bar's first and last time stamp (the table keeps no order among trades of one time stamp).

    A trade that came after its bar had closed (a late trade, left out of the candle by policy) shows
    here as a difference: the candle no longer says what the market traded."""
    candles, trades = _t(database, "candles"), _t(database, "trades")
    timeframes = [r[0] for r in _rows(client, f"SELECT DISTINCT timeframe FROM {candles} WHERE trades > 0")]
    checked, bad, example = 0, 0, ""
    for tf in sorted(timeframes, key=timeframe_ns):
        [(n, wrong, first)] = _rows(
            client,
            f"""
            WITH bars AS (
                SELECT exchange, symbol, intDiv(ts, {timeframe_ns(tf)}) * {timeframe_ns(tf)} AS ot,
                    groupUniqArrayIf(price, ts = first) AS opens,
                    groupUniqArrayIf(price, ts = last) AS closes,
                    max(price) AS high, min(price) AS low, sum(qty) AS volume, count() AS n
                FROM (
                    SELECT exchange, symbol, toUnixTimestamp64Nano(ts_event) AS ts, price, qty,
                        min(ts) OVER w AS first, max(ts) OVER w AS last
                    FROM {trades} FINAL
                    WINDOW w AS (PARTITION BY exchange, symbol, intDiv(ts, {timeframe_ns(tf)}))
                )
                GROUP BY exchange, symbol, ot
            )
            SELECT count(), countIf(NOT same),
                argMinIf(tuple(ex, sym, ot, o, h, l, cl, v, n, t_o, t_h, t_l, t_c, t_v, t_n), ot, NOT same)
            FROM (
                SELECT c.exchange AS ex, c.symbol AS sym, c.ot AS ot, c.open AS o, c.high AS h, c.low AS l,
                    c.close AS cl, c.volume AS v, c.trades AS n, b.opens AS t_o, b.high AS t_h, b.low AS t_l,
                    b.closes AS t_c, b.volume AS t_v, b.n AS t_n,
                    has(t_o, o) AND h = t_h AND l = t_l AND has(t_c, cl) AND n = t_n
                        AND abs(v - t_v) <= 1e-9 * abs(t_v) AS same
                FROM (SELECT exchange, symbol, toUnixTimestamp64Nano(open_time) AS ot, open, high, low,
                        close, volume, trades FROM {candles} FINAL
                        WHERE timeframe = {{tf:String}} AND trades > 0) AS c
                LEFT JOIN bars AS b ON c.exchange = b.exchange AND c.symbol = b.symbol AND c.ot = b.ot
            )
            """,
            tf=tf,
        )
        checked += n
        bad += wrong
        if wrong and not example:
            ex, sym, ot, o, h, lo, c, v, k, opens, bh, bl, closes, bv, bn = first
            example = (
                f"{ex}:{sym} {tf} {when(ot)}: stored O {o:g} H {h:g} L {lo:g} C {c:g} V {v:g} ({k} trades); "
                f"trades give O {_prices(opens)} H {bh:g} L {bl:g} C {_prices(closes)} V {bv:g} ({bn})"
            )
    return Finding("candles recompute from trades", checked, bad, example)


def _prices(values: Sequence[float]) -> str:
    return "/".join(f"{v:g}" for v in sorted(values)) or "-"


@dataclass(frozen=True)
class _Moment:
    """An event with a price (a fill, a position's mark) and what its market did at the event's time."""

    id: str
    market: str
    side: str
    ts: int
    price: Decimal
    qty: Decimal
    bar: tuple[str, float, float] | None  # the finest candle holding the time: timeframe, low, high
    second: tuple[float, float] | None  # the low and high of the market's trades in the time's second
    books: tuple[tuple[float, float], ...]  # the book tops (bid, ask) in force then
    close: float  # the close of the market's last candle ending at or before the time (0: none)

    def traded(self, price: float) -> bool:
        """Whether ``price`` lies in the candle's range, the second's trades or a book top's spread."""
        ranges = [r[1:] for r in (self.bar,) if r] + [r for r in (self.second,) if r] + list(self.books)
        return any(0 < low <= price <= high for low, high in ranges)

    def context(self) -> str:
        bar = f"{self.bar[0]} bar [{self.bar[1]:g}, {self.bar[2]:g}]" if self.bar else "no candle"
        second = f", trades [{self.second[0]:g}, {self.second[1]:g}]" if self.second and not self.bar else ""
        book = f", book {self.books[0][0]:g}/{self.books[0][1]:g}" if self.books else ", no quote"
        return bar + second + book


def _market_at(client: Client, database: str, events: str) -> list[_Moment]:
    """What each event's market did at the event's time. ``events`` is a query of ``id, exchange,
    symbol, ts_event, price, qty, side``; the answers come in event time order."""
    candles, quotes, trades = (_t(database, t) for t in ("candles", "quotes", "trades"))
    per_timeframe = (
        f"(SELECT * FROM e, (SELECT DISTINCT timeframe AS tf FROM {candles}) AS tfs) AS et ASOF LEFT JOIN "
        "(SELECT exchange, symbol, timeframe, open_time AS ot, ts_event AS te, low, high, close "
        f"FROM {candles} FINAL) AS c "
        "ON et.exchange = c.exchange AND et.symbol = c.symbol AND et.tf = c.timeframe "
        "AND et.ts_event {op} c.{at}"
    )
    book = (
        f"(SELECT exchange, symbol, ts_event AS qt, bid, ask FROM {quotes} FINAL) AS q "
        "ON e.exchange = q.exchange AND e.symbol = q.symbol AND e.ts_event {op} q.qt"
    )
    rows = _rows(
        client,
        f"""
        WITH e AS ({events}),
        bars AS (
            SELECT et.id AS id, argMinIf(tuple(c.timeframe, c.low, c.high), c.te - c.ot, et.ts_event < c.te)
                AS bar, countIf(et.ts_event < c.te) > 0 AS found
            FROM {per_timeframe.format(op=">=", at="ot")} GROUP BY et.id
        ),
        closes AS (
            SELECT et.id AS id, argMaxIf(c.close, c.te, c.te > 0) AS close
            FROM {per_timeframe.format(op=">=", at="te")} GROUP BY et.id
        ),
        seconds AS (
            SELECT e.id AS id, min(t.price) AS low, max(t.price) AS high
            FROM e INNER JOIN
                (SELECT exchange, symbol, toStartOfSecond(ts_event) AS s, price FROM {trades} FINAL) AS t
                ON e.exchange = t.exchange AND e.symbol = t.symbol AND toStartOfSecond(e.ts_event) = t.s
            GROUP BY e.id
        ),
        book_at AS (
            SELECT e.id AS id, q.bid AS bid, q.ask AS ask FROM e ASOF LEFT JOIN {book.format(op=">=")}
        ),
        book_before AS (
            SELECT e.id AS id, q.bid AS bid, q.ask AS ask FROM e ASOF LEFT JOIN {book.format(op=">")}
        )
        SELECT e.id, concat(e.exchange, ':', e.symbol), e.side, toUnixTimestamp64Nano(e.ts_event), e.price,
            e.qty, bars.found, bars.bar, seconds.low, seconds.high, book_at.bid, book_at.ask, book_before.bid,
            book_before.ask, closes.close
        FROM e LEFT JOIN bars ON e.id = bars.id LEFT JOIN closes ON e.id = closes.id
            LEFT JOIN seconds ON e.id = seconds.id
            LEFT JOIN book_at ON e.id = book_at.id LEFT JOIN book_before ON e.id = book_before.id
        ORDER BY e.ts_event, e.id
        """,
    )
    return [_moment(row) for row in rows]


def _moment(row: Sequence[Any]) -> _Moment:
    event_id, market, side, ts, price, qty, found, bar, low, high, bid1, ask1, bid0, ask0, close = row
    books = tuple((b, a) for b, a in ((bid1, ask1), (bid0, ask0)) if b > 0)
    second = (low, high) if low > 0 else None
    return _Moment(event_id, market, side, ts, price, qty, bar if found else None, second, books, close)


def fills_in_range(client: Client, database: str) -> Finding:
    """Every fill's price lies within what its market traded at that time, or at its book.

    What it traded: ``[low, high]`` of the finest stored candle of the fill's market whose interval
    ``[open_time, open_time + timeframe)`` holds the fill's time (a fill on a trade lies in the 1s bar
    of its trade; a fill on a candle, stamped with its open time, in that candle), or of the market's
    stored trades in the fill's second (for the last bar of a run, which no later trade closed). The
    book: between the bid and the ask of the book top in force at the fill's time (the last quote at
    or before it, or the one before that when both share the time stamp). A fill with none of these
    is a violation. Slippage, when a run sets it, moves fills outside on purpose: they show here.
    """
    moments = _market_at(
        client,
        database,
        "SELECT event_id AS id, exchange, symbol, ts_event, price, qty, side "
        f"FROM {_t(database, 'fills')} FINAL",
    )
    bad = [m for m in moments if not m.traded(float(m.price))]
    example = ""
    if bad:
        m = bad[0]
        example = f"fill {m.id} {m.market} {m.side} {amount(m.qty)} @ {amount(m.price)} at {when(m.ts)}: "
        example += m.context()
    return Finding("fills within the market", len(moments), len(bad), example)


def positions_at_mark(client: Client, database: str) -> Finding:
    """Every open position is valued at its market's price at that time: its ``mark_price`` lies within
    what the market traded then (as for fills) or is the close of the market's last candle ending at
    or before it (the portfolio marks at closed candles). A position valued at a price from before its
    re-entry shows here."""
    moments = _market_at(
        client,
        database,
        "SELECT event_id AS id, exchange, symbol, ts_event, mark_price AS price, qty, '' AS side "
        f"FROM {_t(database, 'positions')} FINAL WHERE qty != 0",
    )
    bad = [m for m in moments if not (float(m.price) == m.close or m.traded(float(m.price)))]
    example = ""
    if bad:
        m = bad[0]
        example = f"{m.market} {amount(m.qty)} at {when(m.ts)} marked {amount(m.price)}: {m.context()}"
        example += f", last close {m.close:g}" if m.close else ""
    return Finding("positions at the market's price", len(moments), len(bad), example)
