"""Time columns as traders' files hold them: datetimes, ISO 8601 text, or epoch numbers in seconds,
milliseconds, microseconds or nanoseconds, told apart by their size (a time between 1973 and 5138
has 9-11 digits in seconds, 12-14 in ms, 15-17 in us, 18-19 in ns). A column that mixes units is
refused, as a file that mixes them was joined from two sources and cannot be trusted as one."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["TIME_COLUMNS", "TimeColumnError", "rows", "to_ns"]

#: Names of a time column, in the order they are looked for (case does not matter).
TIME_COLUMNS = ("timestamp", "date", "datetime", "open_time", "time")

# (upper bound of |value|, unit name, ns per unit)
_UNITS = ((1e11, "seconds", 1_000_000_000), (1e14, "milliseconds", 1_000_000),
          (1e17, "microseconds", 1_000), (np.inf, "nanoseconds", 1))  # fmt: skip


class TimeColumnError(ValueError):
    """A time column cannot be read as one clock; the message names the rows."""


def rows(idx: npt.ArrayLike) -> str:
    """Data rows named as in the file (1 = the first row of data)."""
    idx = np.asarray(idx)
    shown = ", ".join(str(int(i) + 1) for i in idx[:5])
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"


def to_ns(col: pd.Series, name: str = "time") -> tuple[npt.NDArray[np.int64], str]:
    """The column (called ``name`` in messages) as int64 ns since the epoch (UTC), and how it was read
    (said in the output)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = pd.to_datetime(col, utc=True)
        zone = "UTC" if getattr(col.dtype, "tz", None) is not None else "no zone, taken as UTC"
        return _ns(ts), f"datetimes ({zone})"
    if pd.api.types.is_bool_dtype(col):
        raise TimeColumnError(f"{name} holds true/false, not times")
    if not pd.api.types.is_numeric_dtype(col):
        text = col.astype("string").str.strip()
        numeric = pd.to_numeric(text, errors="coerce")
        if numeric.notna().all():
            return _epoch(numeric, name)
        ts = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        bad = np.flatnonzero(ts.isna().to_numpy())
        if len(bad):
            raise TimeColumnError(
                f"{rows(bad)}: {name} {text.iloc[bad[0]]!r} is neither ISO 8601 nor an epoch number"
            )
        return _ns(ts), "ISO 8601 text"
    return _epoch(col, name)


def _ns(ts: pd.Series) -> npt.NDArray[np.int64]:
    return np.asarray(ts.dt.as_unit("ns").astype("int64").to_numpy(), dtype=np.int64)


def _epoch(col: pd.Series, name: str) -> tuple[npt.NDArray[np.int64], str]:
    values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
    if len(bad):
        raise TimeColumnError(f"{rows(bad)}: {name}, an epoch time, must be a number > 0")
    unit = np.searchsorted([u[0] for u in _UNITS], np.abs(values), side="right")
    found = np.unique(unit)
    if len(found) > 1:
        where = "; ".join(f"{_UNITS[u][1]} in {rows(np.flatnonzero(unit == u))}" for u in found)
        raise TimeColumnError(f"mixed timestamp units in {name}: {where}")
    _, unit_name, scale = _UNITS[int(found[0])]
    if pd.api.types.is_integer_dtype(col.dtype):
        out = col.to_numpy(dtype=np.int64) * scale
    else:
        out = np.round(values * scale).astype(np.int64)
    return out, f"epoch {unit_name}"
