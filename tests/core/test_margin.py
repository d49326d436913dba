"""The futures margin account: hand-worked accounts, Binance's own liquidation example, funding signs,
liquidation exactly at the liquidation price, and the exact identities over random sequences
(hypothesis) of fills, marks and funding, long and short, isolated and cross, across brackets."""

from __future__ import annotations

import copy
import itertools
import json
import pickle
from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mambo.core.margin import (
    LEDGER_KINDS,
    Bracket,
    Brackets,
    MarginAccount,
    liquidation_price,
    load_brackets,
)
from mambo.core.portfolio import MONEY
from mambo.schemas.events import (
    Fill,
    FundingPayment,
    FundingRate,
    Liquidation,
    MarginMode,
    MarkPrice,
    OrderSide,
    split_key,
)

D = Decimal
BRACKETS = load_brackets()
BTC = "binanceusdm:BTC/USDT:USDT"
ETH = "binanceusdm:ETH/USDT:USDT"
XRP = "binanceusdm:XRP/USDT:USDT"
_ids = itertools.count(1)


def fill(
    key: str, side: OrderSide, qty: str | Decimal, price: str | Decimal, fee: str | Decimal = "0"
) -> Fill:
    exchange, symbol = split_key(key)
    n = next(_ids)
    return Fill(
        event_id=f"f{n}",
        ts_event=n,
        ts_init=n,
        exchange=exchange,
        symbol=symbol,
        fill_id=f"f{n}",
        client_order_id=f"o{n}",
        strategy="test",
        side=side,
        price=D(price),
        qty=D(qty),
        fee=D(fee),
        fee_currency="USDT",
        liquidity="taker",
    )


def account(
    balance: str, mode: MarginMode = "cross", leverage: int = 10, fee_rate: str = "0.0125"
) -> MarginAccount:
    return MarginAccount(
        D(balance),
        BRACKETS,
        default_leverage=leverage,
        default_margin_mode=mode,
        liquidation_fee_rate=D(fee_rate),
    )


def brackets_by_rule(symbol: str, tiers: list[tuple[int, int, str, str]]) -> Brackets:
    """Brackets from (cap, initial leverage, ratio) rows with each ``cum`` by Binance's published rule
    ``cum[n] = cum[n-1] + floor[n] × (ratio[n] − ratio[n-1])``, worked out here, not read from anywhere."""
    rows, floor, cum, prev_ratio = [], D(0), D(0), None
    for n, (cap, lev, ratio, _) in enumerate(tiers, 1):
        r = D(ratio)
        if prev_ratio is not None:
            cum += floor * (r - prev_ratio)
        rows.append(Bracket(n, lev, floor, D(cap), r, cum))
        floor, prev_ratio = D(cap), r
    return Brackets(symbol, tuple(rows))


# --- brackets ------------------------------------------------------------------------------------


def test_bundled_brackets_are_binances_and_satisfy_the_cum_rule() -> None:
    assert {"BTC/USDT:USDT", "ETH/USDT:USDT", "XRP/USDT:USDT"} <= set(BRACKETS)
    btc = BRACKETS["BTC/USDT:USDT"]
    # the tiers load checked (Brackets.__post_init__); spot-check two against the recorded reply
    assert btc.tiers[2] == Bracket(3, 75, D(600_000), D(3_000_000), D("0.0065"), D(950))
    assert btc.max_leverage == 125 and btc.max_notional == D(1_800_000_000)
    # cum by the rule, worked by hand: 50,000 × (0.005 − 0.004) = 50; + 600,000 × (0.0065 − 0.005) = 950
    assert btc.tiers[1].cum == 50 and btc.tiers[2].cum == 50 + 900
    # the maintenance margin is continuous at a tier boundary: 600,000 × 0.005 − 50 = 600,000 × 0.0065 − 950
    assert btc.maintenance_margin(D(600_000)) == D(2950) == D(600_000) * D("0.005") - 50
    assert btc.at(D(599_999.99)).bracket == 2 and btc.at(D(600_000)).bracket == 3
    assert btc.at(D(10) ** 12).bracket == 12  # beyond the last cap: the last tier


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cum": "51.0"}, "cum 51.0 != 50"),
        ({"notionalFloor": "60000"}, "previous cap"),
        ({"maintMarginRatio": "0.003"}, "maintMarginRatio falls"),
        ({"initialLeverage": "150"}, "initialLeverage rises"),
        ({"notionalCap": "40000"}, "notionalCap 40000 <= notionalFloor"),
    ],
)
def test_broken_brackets_are_refused_with_the_reason(change: dict[str, str], message: str) -> None:
    raw = [
        {"bracket": 1, "initialLeverage": 125, "notionalCap": "50000", "notionalFloor": "0",
         "maintMarginRatio": "0.004", "cum": "0"},
        {"bracket": 2, "initialLeverage": 100, "notionalCap": "600000", "notionalFloor": "50000",
         "maintMarginRatio": "0.005", "cum": "50"},
    ]  # fmt: skip
    assert Brackets.from_binance("BTC/USDT:USDT", raw).tiers[1].cum == 50
    raw[1] = {**raw[1], **change}
    with pytest.raises(ValueError, match=message):
        Brackets.from_binance("BTC/USDT:USDT", raw)


def test_a_bad_brackets_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"symbol": "BTCUSDT"}))
    with pytest.raises(ValueError, match="leverageBracket reply"):
        load_brackets(bad)
    bad.write_text(json.dumps([{"symbol": "BTCUSDT", "brackets": [{"bracket": 1}]}]))
    with pytest.raises(ValueError, match="malformed leverage bracket"):
        load_brackets(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_brackets(tmp_path / "missing.json")


# --- Binance's worked example ---------------------------------------------------------------------

# Binance's FAQ "How to Calculate Liquidation Price of USDⓈ-M Futures Contracts" works a cross account:
# wallet 1,535,443.01 USDT; BTCUSDT long 109.488 @ 32,481.98 (mark 31,967.27; ratio 2.5%, amount 16,300);
# ETHUSDT long 3,683.979 @ 1,456.84 (mark 1,335.18; ratio 10%, amount 135,365). freqtrade's
# tests/exchange/test_binance.py (@ c9ae5e1e, "From calc example") gives the liquidation prices 26,316.89
# (BTC) and 1,153.26 (ETH) cross, 18,778.73 and 1,114.78 isolated with the same wallet.
# Those are the brackets Binance had then; they are rebuilt here from the ratios by the cum rule.
OLD_BTC = brackets_by_rule(
    "BTC/USDT:USDT",
    [(50_000, 125, "0.004", ""), (250_000, 100, "0.005", ""), (1_000_000, 50, "0.01", ""),
     (10_000_000, 20, "0.025", ""), (20_000_000, 10, "0.05", "")],
)  # fmt: skip
OLD_ETH = brackets_by_rule(
    "ETH/USDT:USDT",
    [(10_000, 100, "0.005", ""), (100_000, 75, "0.0065", ""), (500_000, 50, "0.01", ""),
     (1_000_000, 25, "0.02", ""), (2_000_000, 10, "0.05", ""), (5_000_000, 5, "0.1", ""),
     (10_000_000, 4, "0.125", "")],
)  # fmt: skip


def test_the_old_tables_give_the_maintenance_amounts_of_binances_example() -> None:
    assert OLD_BTC.tiers[3].cum == 16_300 and OLD_BTC.tiers[3].maint_margin_ratio == D("0.025")
    assert OLD_ETH.tiers[5].cum == 135_365 and OLD_ETH.tiers[5].maint_margin_ratio == D("0.1")


def test_binances_cross_example_through_the_account() -> None:
    acc = MarginAccount(
        D("1535443.01"), {"BTC/USDT:USDT": OLD_BTC, "ETH/USDT:USDT": OLD_ETH}, default_leverage=5
    )
    acc.apply(fill(BTC, "buy", "109.488", "32481.98"))
    acc.apply(fill(ETH, "buy", "3683.979", "1456.84"))
    assert acc.mark(BTC, D("31967.27"), 1, 1) == [] and acc.mark(ETH, D("1335.18"), 2, 2) == []
    # ETH's maintenance margin in the FAQ: 4,918,775.081 × 10% − 135,365 = 356,512.508
    assert acc.position(ETH).maintenance_margin.quantize(D("0.001")) == D("356512.508")
    # BTC's: 3,500,032.458 × 2.5% − 16,300 = 71,200.811
    assert acc.position(BTC).maintenance_margin.quantize(D("0.001")) == D("71200.811")
    btc, eth = acc.liquidation_price(BTC), acc.liquidation_price(ETH)
    assert btc is not None and eth is not None
    assert btc.quantize(D("0.01")) == D("26316.89") and eth.quantize(D("0.01")) == D("1153.26")


def test_binances_isolated_example_by_the_formula() -> None:
    wb = D("1535443.01")
    btc = liquidation_price(D("109.488"), D("32481.98"), wb, OLD_BTC)
    eth = liquidation_price(D("3683.979"), D("1456.84"), wb, OLD_ETH)
    assert btc is not None and eth is not None
    assert btc.quantize(D("0.01")) == D("18778.73") and eth.quantize(D("0.01")) == D("1114.78")
    # the notional at each price sits in the tier whose ratio was used (2.5%: 1M-10M; 10%: 2M-5M)
    assert OLD_BTC.at(btc * D("109.488")).bracket == 4 and OLD_ETH.at(eth * D("3683.979")).bracket == 6


# --- hand-worked accounts --------------------------------------------------------------------------


def test_isolated_long_liquidates_exactly_at_its_liquidation_price() -> None:
    # 1 BTC long @ 50,000 at 10x isolated: 5,000 moves into the position's wallet; add 180 by hand.
    # Bracket 1 (ratio 0.4%, cum 0): LP = (5,180 + 0 − 50,000) / (1 × 0.004 − 1) = −44,820 / −0.996 = 45,000
    acc = account("10000", "isolated")
    acc.apply(fill(BTC, "buy", "1", "50000"))
    assert (
        acc.cross_wallet == 5000
        and acc.position(BTC).isolated_wallet == 5000
        and acc.wallet_balance == 10_000
    )
    acc.add_margin(BTC, D(180))
    assert acc.liquidation_price(BTC) == 45_000
    # mark 45,000.01: margin balance 5,180 − 4,999.99 = 180.01 > maintenance 45,000.01 × 0.004 = 180.00004
    assert acc.mark(BTC, D("45000.01"), 1, 1) == []
    assert acc.margin_ratio(BTC) == MONEY.divide(D("180.00004"), D("180.01"))
    # mark 45,000: margin balance 180 = maintenance 180: liquidated at the mark. The fee, 1.25% of
    # 45,000 = 562.5, is capped at the 180 left; the cross wallet keeps its 4,820.
    [liq] = acc.mark(BTC, D(45_000), 2, 2)
    assert (liq.side, liq.qty, liq.price, liq.margin_mode) == ("sell", 1, 45_000, "isolated")
    assert (liq.realized_pnl, liq.fee, liq.insurance) == (-5000, 180, 0)
    assert (liq.margin_balance, liq.maintenance_margin) == (180, 180)
    assert not acc.positions and acc.wallet_balance == acc.cross_wallet == 4820
    assert dict(acc.ledger) == {
        **dict.fromkeys(LEDGER_KINDS, D(0)),
        "realized_pnl": -5000,
        "liquidation_fees": -180,
    }


def test_cross_short_in_the_second_bracket_liquidates_exactly_at_its_price() -> None:
    # XRP short 20,000 @ 0.6, cross, wallet 4,089. At the price P the notional is 20,000·P; for P near
    # 0.8 that is 16,000, XRP's bracket 2 (10k-20k: ratio 0.65%, cum 15).
    # LP = (4,089 + 15 − (−1) × 20,000 × 0.6) / (20,000 × 0.0065 + 20,000) = 16,104 / 20,130 = 0.8
    acc = account("4089", "cross")
    acc.apply(fill(XRP, "sell", "20000", "0.6"))
    assert acc.liquidation_price(XRP) == D("0.8")
    assert acc.position(XRP).brackets.at(D(16_000)).bracket == 2
    # mark 0.7999: balance 4,089 − 3,998 = 91 > 15,998 × 0.0065 − 15 = 88.987
    assert acc.on_mark(mark(XRP, 0.7999)) == []
    # mark 0.8: balance 4,089 − 4,000 = 89 = 16,000 × 0.0065 − 15 = 89
    [liq] = acc.on_mark(mark(XRP, 0.8))
    assert (liq.side, liq.qty, liq.realized_pnl, liq.fee, liq.margin_balance) == (
        "buy",
        20_000,
        -4000,
        89,
        89,
    )
    assert acc.wallet_balance == 0 and acc.margin_ratio() == 0


def test_the_liquidation_price_uses_the_bracket_of_its_own_notional() -> None:
    # XRP long 30,000 @ 0.7 (21,000: bracket 3) at 10x isolated: wallet 2,100. With bracket 3 (1%, 85):
    # (2,100 + 85 − 21,000) / (300 − 30,000) = 0.63350..., a notional of 19,005: bracket 2, not 3. With
    # bracket 2 (0.65%, 15): (2,100 + 15 − 21,000) / (195 − 30,000) = 18,885 / 29,805 = 0.633618...,
    # notional 19,008.5, in bracket 2: the answer.
    acc = account("5000", "isolated")
    acc.apply(fill(XRP, "buy", "30000", "0.7"))
    lp = acc.liquidation_price(XRP)
    assert lp == MONEY.divide(D(18_885), D(29_805))
    assert acc.position(XRP).brackets.at(30_000 * lp).bracket == 2
    assert acc.mark(XRP, lp + D("0.0001"), 1, 1) == [] and len(acc.mark(XRP, lp - D("0.0001"), 2, 2)) == 1


def test_isolated_fills_move_margin_and_book_pnl_and_fees_in_the_positions_wallet() -> None:
    acc = account("1000", "isolated", leverage=5)
    # buy 0.1 ETH @ 2,000, fee 0.08: 40 moves to the isolated wallet, the fee comes out of it: 39.92
    acc.apply(fill(ETH, "buy", "0.1", "2000", fee="0.08"))
    assert (acc.cross_wallet, acc.position(ETH).isolated_wallet) == (960, D("39.92"))
    # sell 0.04 @ 2,100: realized 0.04 × 100 = 4, fee 0.0336; wallet 39.92 + 4 − 0.0336 = 43.8864, of which
    # the closed share 0.04 / 0.1 = 40% (17.55456) goes back to the cross wallet
    booked = acc.apply(fill(ETH, "sell", "0.04", "2100", fee="0.0336"))
    assert booked.realized_pnl == 4
    assert acc.position(ETH).isolated_wallet == D("26.33184") and acc.cross_wallet == D("977.55456")
    assert acc.wallet_balance == 1000 - D("0.08") + 4 - D("0.0336")
    # sell 0.1: closes 0.06 (realized 0.06 × 100 = 6), all the wallet returns, then opens 0.04 short
    # whose 0.04 × 2,100 / 5 = 16.8 moves back in
    booked = acc.apply(fill(ETH, "sell", "0.1", "2100"))
    assert booked.realized_pnl == 6 and acc.position(ETH).qty == D("-0.04")
    assert acc.position(ETH).isolated_wallet == D("16.8")
    assert acc.wallet_balance == 1000 - D("0.08") + 4 - D("0.0336") + 6
    assert acc.position(ETH).entry_price == 2100


def test_cross_balances_margin_ratio_and_available_balance() -> None:
    acc = account("1000", "cross", leverage=20)
    acc.apply(fill(BTC, "buy", "0.1", "40000", fee="1.6"))  # notional 4,000
    acc.mark(BTC, D(39_000), 1, 1)
    # wallet 998.4; unrealized 0.1 × (39,000 − 40,000) = −100; margin balance 898.4
    assert (
        acc.wallet_balance == D("998.4") and acc.unrealized_pnl == -100 and acc.margin_balance == D("898.4")
    )
    # maintenance 3,900 × 0.4% = 15.6; initial 3,900 / 20 = 195; available 898.4 − 195 = 703.4
    assert acc.maintenance_margin == D("15.6") and acc.available_balance == D("703.4")
    assert acc.margin_ratio() == MONEY.divide(D("15.6"), D("898.4"))
    # LP = (998.4 + 0 − 4,000) / (0.1 × 0.004 − 0.1) = −3,001.6 / −0.0996 = 30,136.546...
    assert acc.liquidation_price(BTC) == MONEY.divide(D("3001.6"), D("0.0996"))


@pytest.mark.parametrize(
    ("side", "rate", "change"),
    [
        # 2 BTC at mark 40,000 = 80,000 notional; × 0.0001 = 8 USDT
        ("buy", "0.0001", "-8"),  # long, positive rate: pays
        ("sell", "0.0001", "8"),  # short, positive rate: receives
        ("buy", "-0.0003", "24"),  # long, negative rate: receives 80,000 × 0.0003
        ("sell", "-0.0003", "-24"),  # short, negative rate: pays
    ],
)
@pytest.mark.parametrize("mode", ["cross", "isolated"])
def test_funding_signs(side: OrderSide, rate: str, change: str, mode: MarginMode) -> None:
    acc = account("100000", mode)
    acc.apply(fill(BTC, side, "2", "39000"))
    isolated_before, cross_before = acc.position(BTC).isolated_wallet, acc.cross_wallet
    payment, liquidations = acc.on_funding(funding(BTC, float(rate), mark_price=40_000.0))
    assert payment is not None and not liquidations
    assert payment.amount == D(change) and payment.mark_price == 40_000 and payment.rate == D(rate)
    assert payment.qty == (2 if side == "buy" else -2) and payment.margin_mode == mode
    # the position's wallet pays or receives it
    wallet_change = (
        acc.position(BTC).isolated_wallet - isolated_before
        if mode == "isolated"
        else acc.cross_wallet - cross_before
    )
    assert (
        wallet_change == D(change)
        and acc.ledger["funding"] == D(change)
        and acc.position(BTC).funding == D(change)
    )


def test_no_funding_when_flat_and_funding_can_liquidate() -> None:
    acc = account("1000", "isolated", leverage=10)
    assert acc.fund(BTC, D("0.01"), 1, 1, mark_price=D(50_000)) == (None, [])
    acc.apply(fill(BTC, "buy", "0.1", "50000"))  # isolated wallet 500, maintenance at 49,000: 19.6
    acc.mark(BTC, D(45_200), 2, 2)  # balance 500 − 480 = 20 > 18.08
    payment, [liq] = acc.fund(BTC, D("0.001"), 3, 3)  # pays 0.1 × 45,200 × 0.001 = 4.52: 15.48 <= 18.08
    assert payment is not None and payment.amount == D("-4.52") and liq.margin_balance == D("15.48")


def test_a_gap_past_bankruptcy_is_covered_by_the_insurance_fund() -> None:
    # isolated long 1 BTC @ 50,000 at 10x (wallet 5,000); the mark gaps to 40,000: balance −5,000.
    # Closing realizes −10,000; nothing is left for a fee; the insurance fund covers the 5,000 deficit.
    acc = account("10000", "isolated")
    acc.apply(fill(BTC, "buy", "1", "50000"))
    [liq] = acc.mark(BTC, D(40_000), 1, 1)
    assert (liq.realized_pnl, liq.fee, liq.insurance) == (-10_000, 0, 5000)
    assert acc.wallet_balance == acc.cross_wallet == 5000  # the isolated loss stops at its margin


def test_a_cross_liquidation_closes_every_cross_position_and_spares_isolated_ones() -> None:
    acc = account("2000", "cross", leverage=20)
    acc.set_margin_mode(XRP, "isolated")
    acc.apply(fill(BTC, "buy", "0.5", "40000"))  # 20,000 notional
    acc.apply(fill(ETH, "sell", "5", "2000"))  # 10,000 notional
    acc.apply(fill(XRP, "buy", "1000", "0.5"))  # isolated: 25 moves out of the cross wallet
    assert acc.cross_wallet == 1975
    # BTC falls to 36,000 (−2,000) and ETH holds: cross balance 1,975 − 2,000 = −25 <= maintenance
    liqs = acc.mark(BTC, D(36_000), 1, 1)
    assert {(lq.symbol, lq.side) for lq in liqs} == {("BTC/USDT:USDT", "sell"), ("ETH/USDT:USDT", "buy")}
    assert set(acc.positions) == {XRP}
    assert sum(lq.insurance for lq in liqs) == 25 and acc.cross_wallet == 0 and acc.wallet_balance == 25


def test_margin_check() -> None:
    acc = account("1000", "cross", leverage=20)
    # 0.4 × 50,000 / 20 = 1,000 margin + 10 fee > 1,000 available
    assert "exceed the available balance" in (
        acc.margin_check(BTC, "buy", D("0.4"), D(50_000), D("0.0005")) or ""
    )
    assert acc.margin_check(BTC, "buy", D("0.39"), D(50_000), D("0.0005")) is None
    acc.apply(fill(BTC, "buy", "0.39", "50000"))
    assert acc.margin_check(BTC, "sell", D("0.39"), D(50_000)) is None  # reducing needs no margin
    big = account("100000000", "cross", leverage=100)
    # 100x holds up to bracket 2 (600,000); 13 BTC at 50,000 = 650,000 is bracket 3 (75x at most)
    assert "leverage 100 exceeds 75" in (big.margin_check(BTC, "buy", D(13), D(50_000)) or "")
    assert "largest bracket" in (big.margin_check(BTC, "buy", D(40_000), D(50_000)) or "")


def test_settings_are_checked() -> None:
    acc = account("1000", "cross")
    with pytest.raises(ValueError, match=r"\[1, 125\]"):
        acc.set_leverage(BTC, 126)
    with pytest.raises(ValueError, match="no leverage brackets"):
        acc.position("binanceusdm:DOGE/USDT:USDT")
    acc.apply(fill(BTC, "buy", "0.01", "50000"))
    with pytest.raises(ValueError, match="open position"):
        acc.set_margin_mode(BTC, "isolated")
    with pytest.raises(ValueError, match="open isolated"):
        acc.add_margin(BTC, D(1))
    with pytest.raises(ValueError, match="futures fee"):
        acc.apply(fill(BTC, "buy", "0.01", "50000", fee="0.1").model_copy(update={"fee_currency": "BNB"}))


def mark(key: str, price: float, ts: int = 1) -> MarkPrice:
    exchange, symbol = split_key(key)
    return MarkPrice(
        event_id=f"m{ts}", ts_event=ts, ts_init=ts, exchange=exchange, symbol=symbol, mark_price=price
    )


def funding(key: str, rate: float, mark_price: float | None = None, ts: int = 1) -> FundingRate:
    exchange, symbol = split_key(key)
    return FundingRate(
        event_id=f"r{ts}",
        ts_event=ts,
        ts_init=ts,
        exchange=exchange,
        symbol=symbol,
        rate=rate,
        mark_price=mark_price,
    )


# --- properties -----------------------------------------------------------------------------------

#: per market: a start price, its tick, its qty step and a qty range that spans several brackets
MARKETS = {
    BTC: (D(40_000), D("0.1"), D("0.001"), (1, 20_000)),  # up to 20 BTC ≈ 800k: brackets 1-3
    ETH: (D(2_000), D("0.01"), D("0.001"), (1, 200_000)),  # up to 200 ETH ≈ 400k: brackets 1-2
    XRP: (D("0.5"), D("0.0001"), D(1), (1, 400_000)),  # up to 400k XRP ≈ 200k: brackets 1-4
}

op = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from(list(MARKETS)), st.sampled_from(["buy", "sell"]),
              st.integers(1, 1000), st.integers(-300, 300), st.integers(0, 10)),
    st.tuples(st.just("mark"), st.sampled_from(list(MARKETS)), st.integers(-2500, 2500)),
    st.tuples(st.just("fund"), st.sampled_from(list(MARKETS)), st.integers(-3000, 3000)),
)  # fmt: skip


def _explained(events: list[Fill | FundingPayment | Liquidation]) -> Decimal:
    """The wallet change the events of a step account for."""
    total = D(0)
    for e in events:
        if isinstance(e, Fill):
            total += e.realized_pnl - e.fee
        elif isinstance(e, Liquidation):
            total += e.realized_pnl - e.fee + e.insurance
        else:
            total += e.amount
    return total


def _assert_not_due(acc: MarginAccount, key: str) -> None:
    pos = acc.position(key)
    if pos.qty and pos.margin_mode == "isolated":
        assert pos.isolated_wallet + pos.unrealized_pnl > pos.maintenance_margin
    if any(p.margin_mode == "cross" for p in acc.positions.values()):
        assert acc.cross_margin_balance > sum((p.maintenance_margin for p in acc.positions.values()
                                               if p.margin_mode == "cross"), D(0))  # fmt: skip


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    balance=st.integers(1_000, 2_000_000),
    modes=st.tuples(*[st.sampled_from(["cross", "isolated"])] * 3),
    leverages=st.tuples(*[st.integers(1, 20)] * 3),
    ops=st.lists(op, min_size=5, max_size=60),
)
def test_identities_hold_at_every_step(
    balance: int, modes: tuple[MarginMode, ...], leverages: tuple[int, ...], ops: list[tuple]
) -> None:
    acc = MarginAccount(D(balance), BRACKETS)
    marks = {}
    held = dict.fromkeys(MARKETS, D(0))
    for (key, (start, _, _, _)), mode, lev in zip(MARKETS.items(), modes, leverages, strict=True):
        acc.set_margin_mode(key, mode)
        acc.set_leverage(key, lev)
        acc.mark(key, start, 0, 0)
        marks[key] = start
    for ts, (kind, key, *args) in enumerate(ops, 1):
        _, tick, step, _ = MARKETS[key]
        before = acc.wallet_balance
        events: list[Fill | FundingPayment | Liquidation] = []
        if kind == "fill":
            side, units, bps, fee_bps = args
            qty = max(step, (step * MARKETS[key][3][1] * units / 1000).quantize(step))
            price = max(tick, (marks[key] * (1 + D(bps) / 10_000)).quantize(tick))
            fee = MONEY.multiply(qty * price, D(fee_bps) / 10_000)
            if acc.margin_check(key, side, qty, price, D(fee_bps) / 10_000) is not None:
                continue
            events.append(acc.apply(fill(key, side, qty, price, fee)))
            held[key] += qty if side == "buy" else -qty
        elif kind == "mark":
            marks[key] = max(tick, (marks[key] * (1 + D(args[0]) / 10_000)).quantize(tick))
            events.extend(acc.mark(key, marks[key], ts, ts))
            _assert_not_due(acc, key)
        else:
            payment, liqs = acc.fund(key, D(args[0]) / 1_000_000, ts, ts)
            events.extend([*([payment] if payment else []), *liqs])
            if payment is not None:
                pos_qty = payment.qty
                assert payment.amount == -(pos_qty * marks[key] * D(args[0]) / 1_000_000)
            _assert_not_due(acc, key)
        for e in events:
            event(type(e).__name__)
            if isinstance(e, Liquidation):
                assert e.fee >= 0 and e.insurance >= 0
                held[e.key] = D(0)
        # the identities, exactly
        assert acc.wallet_balance + acc.unrealized_pnl == acc.margin_balance
        assert acc.wallet_balance == acc.initial_balance + sum(acc.ledger.values(), D(0))
        assert acc.wallet_balance - before == _explained(events)
        assert all(acc.position(k).qty == q for k, q in held.items())
        for p in acc.positions.values():
            event(f"{p.symbol} bracket {p.brackets.at(p.notional).bracket}")
        for p in acc.positions.values():
            if p.margin_mode == "cross":
                assert p.isolated_wallet == 0
    clone = pickle.loads(pickle.dumps(acc))
    assert clone == acc and clone.margin_balance == acc.margin_balance


def _due(acc: MarginAccount, key: str) -> bool:
    """Whether the account, as it stands, is at or past liquidation for ``key`` (by the definitions)."""
    pos = acc.position(key)
    if pos.margin_mode == "isolated":
        return pos.isolated_wallet + pos.unrealized_pnl <= pos.maintenance_margin
    cross = [p for p in acc.positions.values() if p.margin_mode == "cross"]
    return acc.cross_margin_balance <= sum((p.maintenance_margin for p in cross), D(0))


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(list(MARKETS)),
    mode=st.sampled_from(["cross", "isolated"]),
    side=st.sampled_from(["buy", "sell"]),
    leverage=st.integers(1, 20),
    size=st.integers(1, 400),
    extra=st.integers(0, 300),
    other=st.integers(0, 100),
    bps=st.integers(-500, 500),
)
def test_the_liquidation_price_is_where_the_margin_balance_meets_the_maintenance_margin(
    key: str, mode: MarginMode, side: OrderSide, leverage: int, size: int, extra: int, other: int, bps: int
) -> None:
    """Checked against the definitions, not the formula: at the price the account says, a copy of it
    marked there has margin balance = maintenance margin (to 1e-30), is liquidated a hair beyond and not a
    hair before; with a second cross position (ETH) held at its mark."""
    start, _, step, (_, most) = MARKETS[key]
    qty = max(step, (step * most * size / 400).quantize(step))
    # a wallet of the initial margin and up to 3 times more: liquidation prices near and far
    balance = (qty * start / leverage * (1 + D(extra) / 100)).quantize(D("0.01")) + 500
    acc = MarginAccount(balance, BRACKETS, default_margin_mode=mode, default_leverage=leverage)
    acc.apply(fill(key, side, qty, start))
    if other and key != ETH:
        acc.apply(fill(ETH, "sell", D(other) / 10, "2000"))
        acc.mark(ETH, D(2000) * (1 + D(bps) / 10_000), 1, 1)
    if not acc.positions:
        return
    lp = acc.liquidation_price(key)
    long = side == "buy"
    tier = "none" if lp is None else acc.position(key).brackets.at(abs(qty) * lp).bracket
    event(f"liquidation price bracket {tier}")
    if lp is None:  # no positive price liquidates it: a long whose margin outlasts any fall
        assert long
        probe = copy.deepcopy(acc)
        probe.position(key).mark_price = D("1e-12")
        assert not _due(probe, key)
        return
    probe = copy.deepcopy(acc)
    probe.position(key).mark_price = lp
    pos = probe.position(key)
    balance = (
        MONEY.add(pos.isolated_wallet, pos.unrealized_pnl)
        if mode == "isolated"
        else probe.cross_margin_balance
    )
    cross = [p for p in probe.positions.values() if p.margin_mode == "cross"]
    with localcontext(MONEY):
        maintenance = (
            pos.maintenance_margin if mode == "isolated" else sum((p.maintenance_margin for p in cross), D(0))
        )
        assert abs(balance - maintenance) < D("1e-40")
    hair = lp * D("1e-9")
    for price, due in ((lp - hair, long), (lp + hair, not long)):
        probe = copy.deepcopy(acc)
        liqs = probe.mark(key, price, 2, 2)
        assert bool(liqs) == due
