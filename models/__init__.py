"""Labels, estimators (scikit-learn API), calibration and backtest statistics."""
