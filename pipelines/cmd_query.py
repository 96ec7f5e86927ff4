"""``fairmargin query``: the fair margin of one position (JSON) or of a CSV of positions (CSV).

Features come from a bundle (the state at ``--as-of``, default the bundle's last bar close) or
live from the venue through ccxt (``--live``); the model defaults to the registry's champion.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginError, FairmarginInputError

__all__ = ["live_tables", "register", "to_json"]

_LIVE_TIMEFRAME = "1h"
_LIVE_BARS = (
    1000  # about 41 days of hourly bars: enough for the 7-day volume and 14 days of history
)


def register(sub: Any) -> None:
    p = sub.add_parser("query", help="fair margin of a position (or a CSV of positions)")
    p.add_argument("--venue", help="ccxt exchange id, e.g. binanceusdm")
    p.add_argument("--symbol", help="ccxt unified symbol, e.g. BTC/USDT:USDT")
    p.add_argument("--notional", type=float, help="position size in the quote currency")
    p.add_argument("--side", default="both", help="long, short or both (default)")
    p.add_argument("--positions", help="CSV with venue, symbol, notional[, side, as_of]")
    p.add_argument("--as-of", help="UTC decision time (default: the bundle's last bar close)")
    p.add_argument("--bundle", help="bundle folder the features come from")
    p.add_argument("--live", action="store_true", help="features live from the venue (ccxt)")
    p.add_argument(
        "--model", default=None, help="model URI (default models:/fair-margin@champion)"
    )
    p.add_argument("--out", help="with --positions: write the answers here instead of stdout")
    from pipelines.cliutil import add_model_options

    add_model_options(p, experiment=False)
    p.set_defaults(func=cmd_query)


def to_json(answer: Mapping[str, Any]) -> str:
    """One answer as a JSON object: NaN becomes null, an unbounded notional the string
    ``"inf"``, times ISO-8601 UTC."""

    def clean(v: Any) -> Any:
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return v

    return json.dumps({k: clean(v) for k, v in answer.items()})


def live_tables(venue: str, symbol: str) -> dict[str, pd.DataFrame | None]:
    """The tables one query needs, fetched now from the venue through ccxt (fails fast with one
    line when the venue cannot be reached)."""
    from pipelines.importers import ccxt_live
    from pipelines.importers.ccxt_json import read_ccxt_json

    ex = ccxt_live.connect(venue)
    since = int((pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=_LIVE_BARS)).value // 1_000_000)
    bars = ccxt_live.fetch_ohlcv(
        ex, symbol, _LIVE_TIMEFRAME, since=since, limit=_LIVE_BARS, retries=1
    )
    tables: dict[str, pd.DataFrame | None] = {
        "contracts": read_ccxt_json([ex.markets[symbol]], kind="markets", venue=venue).tables[
            "contracts"
        ],
        "ohlcv": bars.tables["ohlcv"],
    }
    book = ccxt_live.fetch_order_book(ex, symbol, limit=100, retries=1)
    tables["order_books"] = book.tables["order_books"]
    try:
        tiers = ccxt_live.fetch_leverage_tiers(ex, [symbol], retries=1)
        tables["margin_tiers"] = tiers.tables["margin_tiers"]
    except FairmarginError as exc:  # e.g. a signed endpoint: fair is still answered
        print(f"fairmargin query: no published tiers: {exc}", file=sys.stderr)
        tables["margin_tiers"] = None
    try:
        funding = ccxt_live.fetch_funding_rate_history(ex, symbol, retries=1)
        tables["funding_rates"] = funding.tables["funding_rates"]
    except FairmarginError:
        tables["funding_rates"] = None
    return tables


def cmd_query(args: argparse.Namespace) -> int:
    from pipelines.api import DEFAULT_MODEL, QUERY_COLUMNS, FairMargin
    from pipelines.cliutil import parse_as_of

    single = args.positions is None
    if single:
        for flag, value in (("--venue", args.venue), ("--symbol", args.symbol),
                            ("--notional", args.notional)):  # fmt: skip
            if value is None:
                raise FairmarginInputError(f"{flag} is required (or give --positions)")
        if not (math.isfinite(args.notional) and args.notional > 0):
            raise FairmarginInputError(
                f"--notional must be a positive number, got {args.notional!r}"
            )
        if args.side not in ("both", "long", "short"):
            raise FairmarginInputError(f"--side must be long, short or both, got {args.side!r}")
    if (args.bundle is None) == (not args.live):
        raise FairmarginInputError("give exactly one of --bundle B or --live")
    if args.live and not single:
        raise FairmarginInputError("--live answers one position; drop --positions")
    as_of = None
    if args.as_of is not None:
        parsed = parse_as_of(args.as_of)
        if not isinstance(parsed, pd.Timestamp):
            raise FairmarginInputError(f"--as-of must be a UTC time, got {args.as_of!r}")
        as_of = parsed
    positions = None
    if not single:
        path = Path(args.positions)
        if not path.is_file():
            raise FairmarginInputError(f"--positions {path} must be a CSV file")
        positions = pd.read_csv(path)
        if as_of is not None and "as_of" not in positions:
            positions["as_of"] = as_of
    overrides = {
        k: v
        for k, v in (
            ("base_latency_minutes", args.base_latency),
            ("participation", args.participation),
            ("materiality", args.materiality),
        )
        if v is not None
    }
    uri = args.model or DEFAULT_MODEL
    if args.live:
        tables = live_tables(args.venue, args.symbol)
        fm = FairMargin.load(uri, tables=tables, coverage=args.coverage, overrides=overrides)
    else:
        if not Path(args.bundle).is_dir():
            raise FairmarginInputError(f"--bundle {args.bundle} must be a bundle folder")
        fm = FairMargin.load(uri, bundle=args.bundle, coverage=args.coverage, overrides=overrides)
    if positions is None:
        answer = fm.estimate(
            venue=args.venue, symbol=args.symbol, notional=args.notional, side=args.side,
            as_of=as_of,
        )  # fmt: skip
        print(to_json(answer))
        return 0
    answers = fm.estimate_many(positions)[QUERY_COLUMNS]
    if args.out:
        answers.to_csv(args.out, index=False)
    else:
        answers.to_csv(sys.stdout, index=False)
    return 0
