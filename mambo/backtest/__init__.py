"""Backtests: candle history through the live pipeline's operators, at vectorized speed.

Start with :func:`~mambo.backtest.engine.run_backtest` (and its module docstring: the event path, the
vectorized path, and why they agree), :func:`~mambo.backtest.data.load_candles` for the input, and
:func:`~mambo.backtest.metrics.compute_metrics` for what a run is judged by.
"""
