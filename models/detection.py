"""Scoring flags against a known truth (a simulated bundle's ``truth`` table)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features._checks import require_columns

__all__ = ["detection_scores"]

_KEY = ["venue", "symbol", "as_of", "tier"]


def detection_scores(flags: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Recall, precision and false flags of the flags against planted deviations.

    A planted tier is found when its status has the planted direction (``under_margined`` for a
    negative planted deviation, ``over_margined`` for a positive one). Precision counts flags whose
    tier is planted in that direction. Only tiers present in both tables count.

    Returns
    -------
    recall, precision, inline_false_flag_rate (share of in-line tiers flagged either way),
    median_abs_rel_error (median |fair / true fair - 1|), interval_coverage (share of true fair
    inside [fair_lower, fair_upper]), n_tiers, n_planted, n_flagged, n_insufficient.
    """
    require_columns(
        flags,
        [*_KEY, "status", "fair_initial_margin_rate", "fair_lower", "fair_upper"],
        who="detection_scores flags",
    )
    require_columns(
        truth,
        [*_KEY, "planted", "planted_deviation", "fair_initial_margin_rate"],
        who="detection_scores truth",
    )
    m = flags.merge(truth, on=_KEY, suffixes=("", "_true"))
    planted = m["planted"].astype(bool).to_numpy()
    want = np.where(m["planted_deviation"] < 0, "under_margined", "over_margined")
    status = m["status"].to_numpy(dtype=object)
    flagged = np.isin(status, ["under_margined", "over_margined"])
    hit = planted & (status == want)
    correct_flag = flagged & planted & (status == want)
    inline = ~planted
    fair = m["fair_initial_margin_rate"].to_numpy(dtype=float)
    true = m["fair_initial_margin_rate_true"].to_numpy(dtype=float)
    ok = np.isfinite(fair)
    inside = (m["fair_lower"] <= m["fair_initial_margin_rate_true"]) & (
        m["fair_initial_margin_rate_true"] <= m["fair_upper"]
    )
    return {
        "recall": float(hit.sum() / planted.sum()) if planted.any() else float("nan"),
        "precision": float(correct_flag.sum() / flagged.sum()) if flagged.any() else float("nan"),
        "inline_false_flag_rate": float((flagged & inline).sum() / inline.sum())
        if inline.any()
        else float("nan"),
        "median_abs_rel_error": float(np.median(np.abs(fair[ok] / true[ok] - 1.0)))
        if ok.any()
        else float("nan"),
        "interval_coverage": float(inside[ok].mean()) if ok.any() else float("nan"),
        "n_tiers": float(len(m)),
        "n_planted": float(planted.sum()),
        "n_flagged": float(flagged.sum()),
        "n_insufficient": float((status == "insufficient_data").sum()),
    }
