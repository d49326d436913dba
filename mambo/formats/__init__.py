"""Market data in the formats traders already hold, read by content and name.

Where to start: :func:`read_market_file` reads one file into :class:`MarketData` (candles or trades in
Mambo's columns, with the market and timeframe the file's name gives); :func:`find_data_files` lists
the files of folders. Recognised:

* freqtrade's data directory: feather, JSON (plain and ``.json.gz``) and parquet candles and trades,
  the pair and timeframe from the file name (:mod:`.names`);
* ccxt's OHLCV arrays and trade structures as JSON;
* Binance's public bulk data: kline, aggTrades and trades CSVs, zipped or not, with or without their
  header row;
* CSV and Parquet with common column names (``timestamp``, ``date``, ``datetime``, ``open_time``,
  ``time``), times as datetimes, ISO 8601 or epoch s/ms/us/ns, detected and said (:mod:`.times`).

Anything else gets a :class:`DataFormatError` naming the file, the format tried and what is wrong.
"""

from mambo.formats.names import FileName, binance_symbol, parse_name
from mambo.formats.readers import DataFormatError, MarketData, find_data_files, read_market_file

__all__ = [
    "DataFormatError",
    "FileName",
    "MarketData",
    "binance_symbol",
    "find_data_files",
    "parse_name",
    "read_market_file",
]
