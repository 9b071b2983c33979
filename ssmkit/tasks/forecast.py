"""Long-horizon time-series forecasting: the Informer benchmarks (ETTh1, ETTh2, ETTm1, Weather, ECL), as in S4.

These are presets of the ``timeseries`` task (``tasks/timeseries.py``: the same reading, windows, scaling,
calendar features, head, loss and metrics) with each benchmark's file, target, frequency and published
borders. Your own CSV of any length goes through ``task.name=timeseries`` (README, "Train on your own data").

Files: the Informer CSVs (a ``date`` column, then the feature columns), where the S4 code keeps them:
``<data>/informer/etth/ETTh1.csv``, ``etth/ETTh2.csv``, ``ettm/ETTm1.csv``, ``weather/WTH.csv``,
``ecl/ECL.csv`` (``file:`` names another CSV relative to ``$SSMKIT_DATA``). Dates are ISO
``YYYY-MM-DD HH:MM[:SS]``, strictly increasing (leap days are ordinary rows). A missing, non-numeric or infinite value
is an error naming its row and column: the published files have none, so fill such gaps before training.

Splits, by time, as the Informer/S4 loaders: ETT takes 12/4/4 months of 30 days (hour rows: 8640/2880/2880,
15-minute rows: x4) from the start of the file; Weather and ECL take 70/10/20 % of the rows. Validation and
test windows start ``seq_len`` rows before their split, so the first forecast is the split's first row.
Every column is standardised with the mean and (population) standard deviation of the training rows only
(``normalize: global``, the published protocol; ``window`` adds per-window normalisation); MSE and MAE are
reported on that normalised scale, as the papers do.

``features``: ``S`` (the ``target`` column alone, in and out), ``M`` (all columns in and out), ``MS`` (all in,
``target`` out); the target is moved to the last column. A sample is ``seq_len`` observed steps followed by
``pred_len`` forecast positions whose values are zero (S4's masked forecast tokens); the input also has a
channel that is 1 at the forecast positions (``mask_token``, the reference's ``eval_mask``) and the calendar
features of every position (``time_features``: the Informer ``timeenc=1`` values in [-0.5, 0.5] at the
benchmark's frequency, hourly or 15-minute, known in advance for the forecast positions too, the reference's
``eval_stamp``). The model predicts at every position (pool None) and ``wrap_model`` keeps the last
``pred_len``; the loss is the MSE over those.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ssmkit.errors import DataError
from ssmkit.tasks.base import TASKS, data_root
from ssmkit.tasks.download import fetch_hint
from ssmkit.tasks.timeseries import Forecaster, TimeSeries  # noqa: F401  (Forecaster: the head, re-exported)

HORIZONS = (24, 48, 168, 336, 720)  # the Informer/S4 horizons (ETTm1 also uses 96, 288, 672)
ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")


class _Informer(TimeSeries):
    """A ``timeseries`` preset: the benchmark's file under ``$SSMKIT_DATA``, date column ``date``, fixed
    frequency and borders."""

    file = ""
    default_target = "OT"
    fixed_freq = "h"  # 'h' hourly, 't' 15-minute
    month_rows: int | None = None  # rows per 30-day month for the ETT splits; None: 70/10/20
    where_to_get = ""
    check_all_columns = True

    def __init__(self, features: str = "S", target: str | None = None, seq_len: int = 384, pred_len: int = 96,
                 time_features: bool = True, mask_token: bool = True, file: str | None = None,
                 normalize: str = "global"):
        self._setup(features, seq_len, pred_len, None, normalize, self.fixed_freq, time_features, mask_token)
        if file is not None and (not isinstance(file, str) or not file):
            raise ValueError(f"task option file={file!r} must be a CSV path relative to $SSMKIT_DATA")
        self.target, self.columns, self.split_fractions = target or self.default_target, None, (0.7, 0.1, 0.2)
        self.path = data_root() / (file or self.file)

    @property
    def date_column(self) -> str:
        return "date"

    def date_hint(self) -> str:
        return "the Informer CSVs start with a 'date' column"

    def data_hint(self) -> str:
        fetch = f"{fetch_hint('ett')}, or " if self.name.startswith("ett") and self.path == data_root() / self.file else ""
        return (f"{fetch}put {self.where_to_get} there, or 'ssmkit data generate ett' for a synthetic ETTh1-format file; "
                "for a CSV of your own (any name, length or columns) use task.name=timeseries task.csv=PATH")

    def check_data(self) -> None:
        if not self.path.is_file():
            raise DataError(f"{self.name} data: missing {self.path}; {self.data_hint()}")

    def borders(self, T: int) -> tuple[list[int], list[int]]:
        """Row ranges [start, end) of train/val/test (val/test start seq_len rows early), as the Informer loaders."""
        if self.month_rows is not None:
            m = self.month_rows
            if T < 20 * m:
                raise DataError(f"{self.path}: {T} rows; the {self.name} splits need 12+4+4 months of {m} rows "
                                f"({20 * m}); for a shorter series use task.name=timeseries task.csv={self.path} "
                                "(70/10/20 % splits, or task.split=[...])")
            return [0, 12 * m - self.seq_len, 16 * m - self.seq_len], [12 * m, 16 * m, 20 * m]
        return super().borders(T)

    def _too_short_hint(self) -> str:
        return "" if self.month_rows is None else f" (or task.name=timeseries task.csv={self.path} for other splits)"


def _register(name: str, file: str, freq: str, month_rows: int | None, target: str, where: str, description: str):
    cls = type(name.upper(), (_Informer,), dict(name=name, file=file, fixed_freq=freq, month_rows=month_rows,
                                                 default_target=target, where_to_get=where, __doc__=description))
    cls.__module__ = __name__
    TASKS.register(name, description=description)(cls)
    return cls


_ETT = "ETDataset's ETT-small/{} (github.com/zhouhaoyi/ETDataset)"
_INFORMER = "the Informer data's {} (github.com/zhouhaoyi/Informer2020, its data download)"
ETTh1 = _register("etth1", "informer/etth/ETTh1.csv", "h", 30 * 24, "OT", _ETT.format("ETTh1.csv"),
                  "ETTh1 forecasting (Informer): hourly, 12/4/4 months")
ETTh2 = _register("etth2", "informer/etth/ETTh2.csv", "h", 30 * 24, "OT", _ETT.format("ETTh2.csv"),
                  "ETTh2 forecasting (Informer): hourly, 12/4/4 months")
ETTm1 = _register("ettm1", "informer/ettm/ETTm1.csv", "t", 30 * 24 * 4, "OT", _ETT.format("ETTm1.csv"),
                  "ETTm1 forecasting (Informer): 15-minute, 12/4/4 months")
Weather = _register("weather", "informer/weather/WTH.csv", "h", None, "WetBulbCelsius", _INFORMER.format("WTH.csv"),
                    "Weather forecasting (Informer WTH): hourly, 70/10/20")
ECL = _register("ecl", "informer/ecl/ECL.csv", "h", None, "MT_320", _INFORMER.format("ECL.csv"),
                "ECL electricity forecasting (Informer): hourly, 70/10/20")


def write_synthetic_ett(path: Path, n: int = 17420, seed: int = 0, freq: str = "h") -> Path:
    """A synthetic ETT-format CSV (date, six loads, oil temperature OT) with daily/weekly cycles, a slow trend and
    noise; OT follows the loads with a lag. Starts 2016-07-01 00:00 like ETT (``n`` rows; 17420 hourly rows as
    ETTh1). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    step = timedelta(hours=1) if freq == "h" else timedelta(minutes=15)
    per_day = 24 if freq == "h" else 96
    t = np.arange(n) / per_day  # days
    trend = np.cumsum(rng.normal(0, 0.02, n))
    daily, weekly = np.sin(2 * np.pi * t), np.sin(2 * np.pi * t / 7)
    loads = np.stack([a * daily + b * weekly + trend + rng.normal(0, 0.2, n) + c
                      for a, b, c in rng.uniform([1, 0.2, 2], [4, 1, 10], (6, 3))], 1)
    lagged = np.roll(loads[:, :2].mean(1), per_day // 4)
    ot = 15 + 8 * np.sin(2 * np.pi * t / 365) + 0.8 * lagged + rng.normal(0, 0.1, n)
    start = datetime(2016, 7, 1)
    lines = ["date," + ",".join(ETT_COLUMNS)]
    for i in range(n):
        row = np.append(loads[i], ot[i])
        lines.append((start + i * step).strftime("%Y-%m-%d %H:%M:%S") + "," + ",".join(f"{v:.3f}" for v in row))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
