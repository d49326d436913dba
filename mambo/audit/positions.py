"""Fills against positions, exactly (Decimal): each market's position is the signed sum of its fills
(and of the venue's liquidations of a perpetual, which close what they take without a fill).

A buy adds its quantity and a sell takes it away; a fee charged in the market's base currency
(``fee_currency`` equal to the base of the symbol, as Binance charges a spot buy) takes the fee away
too, since the account holds that much less of the coin. Checked after every fill: the position event
the portfolio published for a fill (its id derives from the fill's) must hold the running sum, and the
market's last position must hold the whole sum. Fills that share a time stamp have no order in the
table, so after such a group the sum is compared with the position of any fill of the group.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from itertools import groupby

from clickhouse_connect.driver.client import Client

from mambo.audit.report import Finding, amount, when
from mambo.core.portfolio import MONEY, held
from mambo.schemas.events import make_id, market_key

__all__ = ["fills_sum_to_positions"]


def fills_sum_to_positions(client: Client, database: str) -> Finding:
    """Per account and market, the running signed sum of fills equals the position after each fill, and
    the whole sum the market's last position (see the module docstring). One violation per account and
    market at most: the first place where they part."""
    fills = client.query(
        "SELECT account, exchange, symbol, toUnixTimestamp64Nano(ts_event), fill_id, side, qty, fee, "
        f"fee_currency FROM `{database}`.`fills` FINAL ORDER BY account, exchange, symbol, ts_event"
    ).result_rows
    positions: dict[str, Decimal] = {}
    last: dict[tuple[str, str], tuple[int, set[Decimal]]] = {}
    for event_id, account, market, ts, qty in client.query(
        "SELECT event_id, account, concat(exchange, ':', symbol), toUnixTimestamp64Nano(ts_event), qty "
        f"FROM `{database}`.`positions` FINAL ORDER BY ts_event"
    ).result_rows:
        positions[event_id] = qty
        key = (account, market)
        if key not in last or ts > last[key][0]:
            last[key] = (ts, set())
        last[key][1].add(qty)
    by_market: dict[tuple[str, str], list[tuple[int, str, Decimal]]] = defaultdict(list)
    for account, ex, sym, ts, fill_id, side, qty, fee, currency in fills:
        by_market[(account, market_key(ex, sym))].append((ts, fill_id, held(side, qty, fee, currency, sym)))
    for account, ex, sym, ts, event_id, side, qty in client.query(
        "SELECT account, exchange, symbol, toUnixTimestamp64Nano(ts_event), event_id, side, qty "
        f"FROM `{database}`.`liquidations` FINAL"
    ).result_rows:  # the position event of a liquidation derives from its id, as a fill's does
        by_market[(account, market_key(ex, sym))].append((ts, event_id, qty if side == "buy" else -qty))
    for rows in by_market.values():
        rows.sort(key=lambda r: r[0])
    bad, example = 0, ""
    for key in sorted(by_market.keys() | last.keys()):
        problem = _first_difference(key, by_market.get(key, []), positions, last.get(key))
        if problem:
            bad += 1
            example = example or f"{key[0]} {key[1]}: {problem}"
    return Finding("fills sum to positions", len(by_market.keys() | last.keys()), bad, example)


def _first_difference(
    key: tuple[str, str],
    fills: list[tuple[int, str, Decimal]],
    positions: dict[str, Decimal],
    last: tuple[int, set[Decimal]] | None,
) -> str:
    total = Decimal(0)
    for ts, group in groupby(fills, key=lambda f: f[0]):
        ids = []
        for _, fill_id, change in group:
            ids.append(fill_id)
            total = MONEY.add(total, change)
        after = {q for i in ids if (q := positions.get(make_id("position", *key, i))) is not None}
        if not after:
            return f"fill {ids[0]} at {when(ts)} has no position after it"
        if total not in after:
            return f"fills to {when(ts)} sum to {amount(total)}, the position after them holds {_qtys(after)}"
    if last is None:
        return f"{len(fills)} fills and no position"
    if total not in last[1]:
        return f"the fills sum to {amount(total)}, the last position ({when(last[0])}) holds {_qtys(last[1])}"
    return ""


def _qtys(values: set[Decimal]) -> str:
    return " or ".join(amount(v) for v in sorted(values))
