"""``fairmargin ingest``: files, folders or a live exchange into one bundle.

- ``fairmargin ingest SOURCE... --out BUNDLE [--format NAME] [--quarantine] [--overwrite]``
- ``fairmargin ingest ccxt --exchange ID --symbols S1 S2 ... --out BUNDLE [--timeframe 5m]
  [--days N]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from features._checks import FairmarginError, FairmarginInputError
from pipelines.cliutil import Clock

__all__ = ["fetch_live", "register"]

_LIVE = "ccxt"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="read real-data files (or a live exchange: 'ingest ccxt') into one bundle",
        description=(
            "Read files and folders (format detected or --format) into one bundle, or "
            "'ingest ccxt --exchange ID --symbols ...' to fetch live through ccxt."
        ),
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="files or folders, or 'ccxt'")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--format", help="importer for every file (default: detected per file)")
    p.add_argument(
        "--quarantine",
        action="store_true",
        help="set bad rows and unreadable files aside in BUNDLE/quarantine.parquet and go on",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    live = p.add_argument_group("live ('ingest ccxt')")
    live.add_argument("--exchange", help="ccxt exchange id, e.g. binanceusdm, bybit, deribit")
    live.add_argument("--symbols", nargs="+", help="ccxt unified symbols, e.g. BTC/USDT:USDT")
    live.add_argument("--timeframe", default="5m", help="bar size (default 5m)")
    live.add_argument("--days", type=float, default=30.0, help="days of bars (default 30)")
    live.add_argument(
        "--option-codes",
        nargs="*",
        help="underlyings whose option chains to fetch (default on deribit: the symbols' bases)",
    )
    live.add_argument("--retries", type=int, default=3, help="retries of a network error")
    live.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    live.add_argument("--https-proxy", help="proxy URL for the exchange's HTTPS requests")
    p.set_defaults(func=cmd_ingest)


def _is_live(args: argparse.Namespace) -> bool:
    return bool(args.sources[0] == _LIVE and not Path(_LIVE).exists())


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipelines.bundle import write_bundle, write_quarantine
    from pipelines.ingest import ingest, merge_results

    clock = Clock()
    if _is_live(args):
        if len(args.sources) > 1:
            raise FairmarginInputError(
                f"ingest ccxt: takes no file sources, got {args.sources[1:]}"
            )
        if not args.exchange or not args.symbols:
            raise FairmarginInputError(
                "ingest ccxt: --exchange and --symbols must be given, got "
                f"--exchange {args.exchange!r} --symbols {args.symbols!r}"
            )
        sources = fetch_live(
            args.exchange,
            args.symbols,
            timeframe=args.timeframe,
            days=args.days,
            option_codes=args.option_codes,
            retries=args.retries,
            timeout_s=args.timeout,
            https_proxy=args.https_proxy,
            progress=clock,
        )
        result = merge_results(sources, quarantine=args.quarantine)
    else:
        if args.exchange or args.symbols:
            raise FairmarginInputError(
                "ingest: --exchange and --symbols are for 'ingest ccxt', got file sources "
                f"{args.sources}"
            )
        result = ingest(args.sources, format=args.format, quarantine=args.quarantine)
    n_files = result.summary["source"].nunique()
    clock(f"read {n_files} source(s)")
    path = write_bundle(result.tables, args.out, overwrite=args.overwrite)
    qpath = write_quarantine(result.quarantine, path) if args.quarantine else None
    print(_summary_text(result.summary))
    totals = ", ".join(f"{k} {len(v):,}" for k, v in result.tables.items())
    print(f"bundle {path}: {totals}")
    if qpath is not None:
        print(f"{len(result.quarantine):,} row(s) set aside with their reason in {qpath}")
    clock("done")
    return 0


def _summary_text(summary: pd.DataFrame) -> str:
    from pipelines.ingest import format_summary

    view = summary.copy()
    paths = [Path(s) for s in view["source"] if not s.startswith("(")]
    if len(paths) > 1:
        import os

        root = os.path.commonpath([str(p.parent) for p in paths])
        view["source"] = [
            s if s.startswith("(") else os.path.relpath(s, root) for s in view["source"]
        ]
    return format_summary(view)


def fetch_live(
    exchange_id: str,
    symbols: Sequence[str],
    *,
    timeframe: str = "5m",
    days: float = 30.0,
    option_codes: Sequence[str] | None = None,
    retries: int = 3,
    timeout_s: float = 10.0,
    https_proxy: str | None = None,
    progress: Callable[[str], None] | None = None,
    now: pd.Timestamp | None = None,
) -> list[Any]:
    """Fetch leverage tiers, OHLCV (paged over ``days``), order books, funding history and
    (Deribit, or ``option_codes``) option chains through ccxt, as ingest sources.

    The exchange has ccxt's rate limiter on; each call retries network errors with backoff,
    and an unreachable exchange fails at once with one line
    (:mod:`pipelines.importers.ccxt_live`). A call the exchange does not offer or refuses
    (no credentials for a signed endpoint) is reported and skipped.
    """
    import ccxt

    from pipelines.importers import ccxt_live
    from pipelines.ingest import SourceResult

    say = progress or (lambda _m: None)
    if days <= 0:
        raise FairmarginInputError(f"ingest ccxt: --days must be > 0, got {days}")
    config: dict[str, Any] = {}
    if https_proxy:
        config["httpsProxy"] = https_proxy
    ex = ccxt_live.connect(exchange_id, timeout_ms=int(timeout_s * 1000), config=config)
    kw: dict[str, Any] = {"retries": retries, "backoff_s": 0.5}
    out: list[SourceResult] = []
    skippable = (ccxt.AuthenticationError, ccxt.PermissionDenied, ccxt.NotSupported)

    def call(label: str, fn: Callable[[], Any]) -> None:
        try:
            res = fn()
        except FairmarginError as exc:
            if isinstance(exc.__cause__, skippable):
                say(f"{label}: skipped ({' '.join(str(exc).split())[:200]})")
                return
            raise
        n = sum(len(t) for t in res.tables.values() if t is not None)
        say(f"{label}: {res.rows_read:,} record(s), {n:,} row(s)")
        out.append(SourceResult(Path(f"{exchange_id}:{label}"), "ccxt_live", res))

    say(f"{exchange_id}: loading markets (rate limit {ex.rateLimit} ms between calls)")
    if ex.has.get("fetchLeverageTiers"):
        call("leverage_tiers", lambda: ccxt_live.fetch_leverage_tiers(ex, symbols, **kw))
    else:
        say("leverage_tiers: not offered by this exchange in ccxt; skipped")
    end = now or pd.Timestamp.now(tz="UTC")
    start_ms = int((end - pd.Timedelta(days=days)).value // 1_000_000)
    end_ms = int(end.value // 1_000_000)
    step_ms = int(pd.Timedelta(ex.parse_timeframe(timeframe), unit="s").value // 1_000_000)
    for sym in symbols:
        since, page = start_ms, 0
        while since < end_ms:
            page += 1

            def bars(s: int = since, y: str = sym) -> Any:
                return ccxt_live.fetch_ohlcv(ex, y, timeframe, since=s, limit=1000, **kw)

            before = len(out)
            call(f"ohlcv {sym} {timeframe} page {page}", bars)
            if len(out) == before:
                break
            last_res = out[-1].result
            got = None if last_res is None else last_res.tables.get("ohlcv")
            if got is None or got.empty:
                break
            last = int(got["timestamp"].max().value // 1_000_000)
            if last + step_ms <= since:
                break
            since = last + step_ms

        def book(y: str = sym) -> Any:
            return ccxt_live.fetch_order_book(ex, y, **kw)

        def funding(y: str = sym) -> Any:
            return ccxt_live.fetch_funding_rate_history(ex, y, since=start_ms, limit=1000, **kw)

        call(f"order_book {sym}", book)
        if ex.has.get("fetchFundingRateHistory"):
            call(f"funding {sym}", funding)
    codes = list(option_codes) if option_codes is not None else []
    if option_codes is None and exchange_id == "deribit":
        codes = sorted({s.split("/")[0] for s in symbols})
    for code in codes:

        def chain(c: str = code) -> Any:
            return ccxt_live.fetch_option_chain(ex, c, **kw)

        call(f"option_chain {code}", chain)
    return out
