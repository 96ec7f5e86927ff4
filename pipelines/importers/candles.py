"""Candles and funding from files: CryptoDataDownload CSV and freqtrade parquet/feather."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError
from pipelines.importers._common import (
    ImportResult,
    finish,
    parse_epoch,
    parse_time,
    quarantine_frame,
)
from pipelines.importers._symbols import contracts_frame, parse_unified, split_pair

__all__ = ["FREQTRADE_NAME_RE", "read_cryptodatadownload", "read_freqtrade"]

logger = logging.getLogger(__name__)

#: freqtrade data file names: ``<PAIR>-<timeframe>[-<candle type>].<ext>`` with the pair's
#: ``/`` and ``:`` written as ``_`` (``BTC_USDT_USDT-1h-futures.parquet``).
FREQTRADE_NAME_RE = re.compile(
    r"^(?P<pair>[A-Za-z0-9]+_[A-Za-z0-9]+(?:_[A-Za-z0-9]+)?)-(?P<tf>[1-9][0-9]*[smhdwMy])"
    r"(?:-(?P<kind>futures|spot|mark|index|premiumIndex|funding_rate))?"
    r"\.(?P<ext>parquet|feather|json|jsongz)$"
)
_CDD_TF = {"d": "1d", "1h": "1h", "h": "1h", "minute": "1m", "1m": "1m", "m": "1m", "1d": "1d"}
_SPACING_TF = {60: "1m", 300: "5m", 900: "15m", 3600: "1h", 14400: "4h", 86400: "1d"}


def read_cryptodatadownload(
    path: str | Path,
    *,
    venue: str = "binance",
    timeframe: str | None = None,
    strict: bool = False,
) -> ImportResult:
    """Read a CryptoDataDownload candle CSV into ``ohlcv`` (spot).

    Handles the optional URL banner line, ``Unix``/``unix`` in seconds or milliseconds (detected
    per row: the older rows of the hourly exports are in seconds with a ``date`` like
    ``2017-08-17 04-AM``, which is ignored in favour of the epoch), newest-first order (sorted),
    ``Volume <BASE>`` as the base volume and ``Symbol`` as ``BTCUSDT`` or ``BTC/USDT``. Where a
    bar is given twice, once in the newer millisecond format and once in the older seconds
    format (the 2020-08 to 2020-11 overlap of the hourly BTC and ETH files), the newer row is
    kept and the older one goes to the quarantine with the reason; other repeated bars with
    different values are quarantined as duplicates.

    Parameters
    ----------
    path : str or Path
        The CSV file (``Binance_BTCUSDT_d.csv``, ``Binance_BTCUSDT_1h.csv``...).
    venue : str
        ccxt exchange id (the exports read here are Binance spot).
    timeframe : str, optional
        Bar size; default from the file name suffix (``_d`` 1d, ``_1h`` 1h, ``_minute`` 1m),
        else from the most common spacing of the timestamps.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_cryptodatadownload"
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    skip = 1 if first.lower().startswith("http") else 0
    df = pd.read_csv(path, skiprows=skip, na_values=["NULL"], dtype={"date": "str", "Date": "str"})
    cols = {c.lower(): c for c in df.columns}
    need = ["unix", "symbol", "open", "high", "low", "close"]
    vol_cols = [c for c in df.columns if c.lower().startswith("volume ")]
    missing = [n for n in need if n not in cols]
    if missing or not vol_cols:
        raise FairmarginInputError(
            f"{who}: {path}: header must have columns {need} and 'Volume <BASE>' (row 0, "
            f"fields {missing or ['Volume <BASE>']}), got {list(df.columns)}"
        )
    df["_row"] = np.arange(len(df))
    raw_sym = df[cols["symbol"]].astype(str)
    uniq = raw_sym.unique()
    if len(uniq) != 1:
        raise FairmarginInputError(
            f"{who}: {path}: Symbol must be one pair per file, got {list(uniq)[:5]}"
        )
    pair = split_pair(str(uniq[0]))
    if pair is None:
        raise FairmarginInputError(f"{who}: {path}: Symbol must be like BTCUSDT, got {uniq[0]!r}")
    base, quote = pair
    vol = next((c for c in vol_cols if c.split(" ", 1)[1].upper() == base), None)
    if vol is None:
        raise FairmarginInputError(
            f"{who}: {path}: header must have 'Volume {base}' (base volume), got {vol_cols}"
        )
    unix = pd.to_numeric(df[cols["unix"]], errors="coerce")
    ts = parse_epoch(unix)
    old_format = unix.abs() < 1e11  # seconds: the older export format
    if timeframe is None:
        timeframe = _timeframe_from_name(path.stem) or _timeframe_from_spacing(ts)
    symbol = parse_unified(f"{base}/{quote}").symbol
    bars = pd.DataFrame(
        {
            "venue": venue,
            "symbol": symbol,
            "timeframe": timeframe,
            "timestamp": ts,
            "open": pd.to_numeric(df[cols["open"]], errors="coerce"),
            "high": pd.to_numeric(df[cols["high"]], errors="coerce"),
            "low": pd.to_numeric(df[cols["low"]], errors="coerce"),
            "close": pd.to_numeric(df[cols["close"]], errors="coerce"),
            "volume": pd.to_numeric(df[vol], errors="coerce"),
            "_row": df["_row"],
        }
    )
    newer = ts[~old_format].dropna()
    superseded = old_format & ts.isin(set(newer))
    q = quarantine_frame(
        str(path),
        bars.loc[superseded, "_row"],
        [
            f"ohlcv ({venue}, {symbol}, {timeframe}, {t}): duplicate bar; the older "
            f"seconds-format row is superseded by the millisecond-format row of the same bar"
            for t in bars.loc[superseded, "timestamp"]
        ],
    )
    contracts = contracts_frame(venue, [parse_unified(symbol)], rows=[0])
    return finish(
        {"ohlcv": bars.loc[~superseded], "contracts": contracts},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q],
    )


def _timeframe_from_name(stem: str) -> str | None:
    tail = stem.rsplit("_", 1)[-1]
    return _CDD_TF.get(tail)


def _timeframe_from_spacing(ts: pd.Series) -> str:
    d = ts.dropna().sort_values().diff().dt.total_seconds().dropna()
    if d.empty:
        raise FairmarginInputError("timeframe must be given: too few bars to infer the spacing")
    secs = int(d.mode().iloc[0])
    if secs in _SPACING_TF:
        return _SPACING_TF[secs]
    raise FairmarginInputError(f"timeframe must be given: bar spacing {secs} s is not standard")


def read_freqtrade(
    path: str | Path,
    *,
    venue: str | None = None,
    mark: str = "skip",
    strict: bool = False,
) -> ImportResult:
    """Read a freqtrade data file (parquet or feather) into ``ohlcv`` or ``funding_rates``.

    The pair, timeframe and candle type come from the file name
    (:data:`FREQTRADE_NAME_RE`): ``BTC_USDT_USDT-1h-futures`` is ``BTC/USDT:USDT`` 1h trade
    candles, ``BTC_USDT-1d`` spot candles. ``-funding_rate`` files hold the funding rate in
    the ``open`` column (freqtrade's convention; the other columns are 0): one
    ``funding_rates`` row per ``date``. ``-mark`` (and ``-index``, ``-premiumIndex``) candles
    are not trade prices: by default they are skipped with a logged note; ``mark="ohlcv"``
    writes them to ``ohlcv`` as they are (volume 0), for users who want mark-price bars.

    Parameters
    ----------
    path : str or Path
        The data file.
    venue : str, optional
        ccxt exchange id; default ``binanceusdm`` for futures pairs and ``binance`` for spot
        pairs (the freqtrade data read here was downloaded from Binance).
    mark : {"skip", "ohlcv"}
        What to do with mark/index/premium-index candles.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_freqtrade"
    if mark not in ("skip", "ohlcv"):
        raise ValueError(f"{who}: mark must be 'skip' or 'ohlcv', got {mark!r}")
    path = Path(path)
    m = FREQTRADE_NAME_RE.match(path.name)
    if m is None:
        raise FairmarginInputError(
            f"{who}: {path.name}: file name must look like BTC_USDT_USDT-1h-futures.parquet "
            f"(<PAIR>-<timeframe>[-<candle type>])"
        )
    parts = m.group("pair").split("_")
    kind = m.group("kind") or ("futures" if len(parts) == 3 else "spot")
    tf = m.group("tf")
    symbol = f"{parts[0]}/{parts[1]}" + (f":{parts[2]}" if len(parts) == 3 else "")
    info = parse_unified(symbol)
    venue = venue or ("binance" if info.type == "spot" else "binanceusdm")
    if m.group("ext") == "feather":
        df = pd.read_feather(path)
    elif m.group("ext") == "parquet":
        df = pd.read_parquet(path)
    else:
        raise FairmarginInputError(
            f"{who}: {path.name}: json candles are not supported; "
            "convert with freqtrade convert-data"
        )
    need = ["date", "open", "high", "low", "close", "volume"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise FairmarginInputError(
            f"{who}: {path}: columns must include {need} (row 0, fields {missing}), "
            f"got {list(df.columns)}"
        )
    df = df.reset_index(drop=True)
    rows = np.arange(len(df))
    ts = parse_time(df["date"])
    contracts = contracts_frame(venue, [info], rows=[0])
    if kind == "funding_rate":
        rates = pd.DataFrame(
            {
                "venue": venue,
                "symbol": symbol,
                "timestamp": ts,
                "funding_rate": pd.to_numeric(df["open"], errors="coerce"),
                "_row": rows,
            }
        )
        return finish(
            {"funding_rates": rates, "contracts": contracts},
            rows_read=len(df),
            source=str(path),
            who=who,
            strict=strict,
        )
    if kind in ("mark", "index", "premiumIndex") and mark == "skip":
        logger.info(
            "%s: %s: %d %s candles skipped (not trade prices; mark='ohlcv' keeps them)",
            who,
            path,
            len(df),
            kind,
        )
        return finish(
            {"contracts": contracts}, rows_read=len(df), source=str(path), who=who, strict=strict
        )
    bars = pd.DataFrame(
        {
            "venue": venue,
            "symbol": symbol,
            "timeframe": tf,
            "timestamp": ts,
            "open": df["open"],
            "high": df["high"],
            "low": df["low"],
            "close": df["close"],
            "volume": df["volume"],
            "_row": rows,
        }
    )
    return finish(
        {"ohlcv": bars, "contracts": contracts},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
    )
