"""Long-horizon time-series forecasting: the Informer benchmarks (ETTh1, ETTh2, ETTm1, Weather, ECL), as in S4.

Files: the Informer CSVs (a ``date`` column, then the feature columns), where the S4 code keeps them:
``<data>/informer/etth/ETTh1.csv``, ``etth/ETTh2.csv``, ``ettm/ETTm1.csv``, ``weather/WTH.csv``,
``ecl/ECL.csv`` (``file:`` names another CSV relative to ``$SSMKIT_DATA``). Dates are ISO
``YYYY-MM-DD HH:MM[:SS]``, strictly increasing (leap days are ordinary rows). A missing or non-numeric value
is an error naming its row and column: the published files have none, so fill such gaps before training.

Splits, by time, as the Informer/S4 loaders: ETT takes 12/4/4 months of 30 days (hour rows: 8640/2880/2880,
15-minute rows: x4) from the start of the file; Weather and ECL take 70/10/20 % of the rows. Validation and
test windows start ``seq_len`` rows before their split, so the first forecast is the split's first row.
Every column is standardised with the mean and (population) standard deviation of the training rows only;
MSE and MAE are reported on that normalised scale, as the papers do.

``features``: ``S`` (the ``target`` column alone, in and out), ``M`` (all columns in and out), ``MS`` (all in,
``target`` out); the target is moved to the last column. A sample is ``seq_len`` observed steps followed by
``pred_len`` forecast positions whose values are zero (S4's masked forecast tokens); the input also has a
channel that is 1 at the forecast positions (``mask_token``, the reference's ``eval_mask``) and the calendar
features of every position (``time_features``: the Informer ``timeenc=1`` values in [-0.5, 0.5], known in
advance for the forecast positions too, the reference's ``eval_stamp``). The model predicts at every
position (pool None) and ``wrap_model`` keeps the last ``pred_len``; the loss is the MSE over those.
"""
from __future__ import annotations

import csv
import io
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.errors import DataError
from ssmkit.tasks._shared import check_choice, check_split, read_text, require_files
from ssmkit.tasks.base import TASKS, Task, data_root
from ssmkit.tasks.download import fetch_hint

FEATURES = ("S", "M", "MS")
HORIZONS = (24, 48, 168, 336, 720)  # the Informer/S4 horizons (ETTm1 also uses 96, 288, 672)
SPLITS = {"train": 0, "val": 1, "test": 2}
ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")


def read_series(path: Path) -> tuple[list[str], list[datetime], np.ndarray]:
    """An Informer CSV -> (feature column names, dates, values (T, F) float64); every problem a DataError."""
    rows = list(csv.reader(io.StringIO(read_text(path))))
    if not rows or not rows[0] or rows[0][0].strip() != "date":
        raise DataError(f"{path}: the first column must be 'date' (the Informer CSV layout), got header {rows[:1]}")
    header = [c.strip() for c in rows[0]]
    dates, values = [], np.empty((len(rows) - 1, len(header) - 1))
    for r, row in enumerate(rows[1:]):
        line = r + 2  # 1-based, header on line 1
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        try:
            dates.append(datetime.fromisoformat(row[0].strip()))
        except ValueError:
            raise DataError(f"{path}: line {line}: date {row[0]!r} is not 'YYYY-MM-DD HH:MM[:SS]'") from None
        for c, field in enumerate(row[1:]):
            try:
                v = float(field)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise DataError(f"{path}: line {line}, column {header[c + 1]!r}: missing or non-numeric value {field!r}; "
                                "the published files have none: fill the gap (e.g. with the previous value) or drop the row")
            values[r, c] = v
        if r and dates[r] <= dates[r - 1]:
            raise DataError(f"{path}: line {line}: date {row[0].strip()} does not come after {dates[r - 1]}; "
                            "rows must be in time order without duplicates")
    return header[1:], dates, values


def time_features(dates: list[datetime], freq: str) -> np.ndarray:
    """Informer's ``timeenc=1`` calendar features in [-0.5, 0.5] (T, 4) hourly, (T, 5) with minutes ('t')."""
    cols = []
    if freq == "t":
        cols.append([d.minute / 59 - 0.5 for d in dates])
    cols += [[d.hour / 23 - 0.5 for d in dates], [d.weekday() / 6 - 0.5 for d in dates],
             [(d.day - 1) / 30 - 0.5 for d in dates], [(d.timetuple().tm_yday - 1) / 365 - 0.5 for d in dates]]
    return np.asarray(cols, dtype=np.float64).T


class _Windows(torch.utils.data.Dataset):
    """(x (seq_len + pred_len, d_input), y (pred_len, d_output)) windows of one split."""

    def __init__(self, task, data: np.ndarray, stamps: np.ndarray | None):
        self.task, self.data, self.stamps = task, torch.from_numpy(data).float(), stamps
        self.n = len(data) - task.seq_len - task.pred_len + 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        t = self.task
        s, e = i, i + t.seq_len
        window = self.data[s : e + t.pred_len]
        x = torch.cat([window[: t.seq_len, t.in_cols], torch.zeros(t.pred_len, len(t.in_cols))])
        parts = [x]
        if t.mask_token:
            parts.append(torch.cat([torch.zeros(t.seq_len, 1), torch.ones(t.pred_len, 1)]))
        if self.stamps is not None:
            parts.append(torch.from_numpy(self.stamps[s : e + t.pred_len]).float())
        return torch.cat(parts, dim=-1), window[t.seq_len :, t.out_cols]


class Forecaster(nn.Module):
    """The backbone's per-position outputs (B, seq_len + pred_len, d_output) -> the last pred_len positions."""

    def __init__(self, backbone: nn.Module, pred_len: int):
        super().__init__()
        self.backbone, self.pred_len = backbone, pred_len

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(x, lengths=lengths)[:, -self.pred_len :]


class _Informer(Task):
    encoder = "linear"
    pool = None
    main_metric = "mse"
    main_mode = "min"
    file = ""
    default_target = "OT"
    freq = "h"  # 'h' hourly, 't' 15-minute
    month_rows: int | None = None  # rows per 30-day month for the ETT splits; None: 70/10/20

    def __init__(self, features: str = "S", target: str | None = None, seq_len: int = 384, pred_len: int = 96,
                 time_features: bool = True, mask_token: bool = True, file: str | None = None):
        check_choice("features", features, FEATURES)
        for key, value in (("seq_len", seq_len), ("pred_len", pred_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"task option {key}={value!r} must be a positive integer (horizons: "
                                 f"{', '.join(map(str, HORIZONS))})")
        for key, value in (("time_features", time_features), ("mask_token", mask_token)):
            if not isinstance(value, bool):
                raise ValueError(f"task option {key}={value!r} must be true or false")
        self.features, self.target = features, target or self.default_target
        self.seq_len, self.pred_len = seq_len, pred_len
        self.time_features, self.mask_token = time_features, mask_token
        self.path = data_root() / (file or self.file)
        self._table = None
        n_features = 1 if features == "S" else None  # M/MS: known once the header is read
        self.in_cols = self.out_cols = None
        if n_features is None:
            self._columns()
        else:
            self.in_cols, self.out_cols = [0], [0]
        n_time = (5 if self.freq == "t" else 4) if time_features else 0
        self.d_input = len(self.in_cols) + int(mask_token) + n_time
        self.d_output = len(self.out_cols)

    def _columns(self) -> None:
        """The multivariate column layout, from the CSV header (d_input depends on it)."""
        self.check_data()
        names = self._load()[0]
        self.in_cols = list(range(len(names)))
        self.out_cols = self.in_cols if self.features == "M" else [len(names) - 1]

    def check_data(self) -> None:
        fetch = f"{fetch_hint('ett')}, or " if self.name.startswith("ett") and self.path == data_root() / self.file else ""
        require_files([self.path], f"{self.name} data",
                      f"{fetch}put the Informer CSV there (ETDataset's ETT-small/{Path(self.file).name} for ETT, the Informer "
                      "repository's WTH.csv and ECL.csv), or 'ssmkit data generate ett' for a synthetic ETTh1-format file")

    def _load(self):
        """(column names with the target last, dates, values in that column order), read once."""
        if self._table is None:
            names, dates, values = read_series(self.path)
            if self.target not in names:
                raise DataError(f"{self.path}: no target column {self.target!r}; columns are {', '.join(names)}")
            j = names.index(self.target)
            order = [i for i in range(len(names)) if i != j] + [j]
            names, values = [names[i] for i in order], values[:, order]
            if self.features == "S":
                names, values = names[-1:], values[:, -1:]
            self._table = (names, dates, values)
        return self._table

    def borders(self, T: int) -> tuple[list[int], list[int]]:
        """Row ranges [start, end) of train/val/test (val/test start seq_len rows early), as the Informer loaders."""
        if self.month_rows is not None:
            m = self.month_rows
            if T < 20 * m:
                raise DataError(f"{self.path}: {T} rows; the ETT splits need 12+4+4 months of {m} rows ({20 * m})")
            return [0, 12 * m - self.seq_len, 16 * m - self.seq_len], [12 * m, 16 * m, 20 * m]
        n_train, n_test = int(T * 0.7), int(T * 0.2)
        return [0, n_train - self.seq_len, T - n_test - self.seq_len], [n_train, T - n_test, T]

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        self.check_data()
        names, dates, values = self._load()
        b1, b2 = self.borders(len(values))
        mean, std = values[: b2[0]].mean(0), values[: b2[0]].std(0)
        data = (values - mean) / np.where(std > 0, std, 1.0)  # a constant column is only centred
        k = SPLITS[split]
        lo, hi = b1[k], b2[k]
        if lo < 0 or hi - lo < self.seq_len + self.pred_len:
            raise DataError(f"{self.path}: the {split} split (rows {max(lo, 0)}..{hi}) is too short for seq_len="
                            f"{self.seq_len} + pred_len={self.pred_len}; use shorter windows or more rows")
        stamps = time_features(dates[lo:hi], self.freq) if self.time_features else None
        return _Windows(self, data[lo:hi], stamps)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return Forecaster(model, self.pred_len)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.float(), target.float())

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        err = output.float() - target.float()  # (B, pred_len, d_output)
        return {"se": err.square().flatten(1).sum(1).detach(), "ae": err.abs().flatten(1).sum(1).detach(),
                "count": torch.full_like(err[:, 0, 0], err[0].numel())}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(totals["count"].sum())
        mse = float(totals["se"].sum()) / n
        return {"loss": mse, "mse": mse, "mae": float(totals["ae"].sum()) / n}


def _register(name: str, file: str, freq: str, month_rows: int | None, target: str, description: str):
    cls = type(name.upper(), (_Informer,), dict(name=name, file=file, freq=freq, month_rows=month_rows,
                                                 default_target=target, __doc__=description))
    cls.__module__ = __name__
    TASKS.register(name, description=description)(cls)
    return cls


ETTh1 = _register("etth1", "informer/etth/ETTh1.csv", "h", 30 * 24, "OT", "ETTh1 forecasting (Informer): hourly, 12/4/4 months")
ETTh2 = _register("etth2", "informer/etth/ETTh2.csv", "h", 30 * 24, "OT", "ETTh2 forecasting (Informer): hourly, 12/4/4 months")
ETTm1 = _register("ettm1", "informer/ettm/ETTm1.csv", "t", 30 * 24 * 4, "OT", "ETTm1 forecasting (Informer): 15-minute, 12/4/4 months")
Weather = _register("weather", "informer/weather/WTH.csv", "h", None, "WetBulbCelsius", "Weather forecasting (Informer WTH): hourly, 70/10/20")
ECL = _register("ecl", "informer/ecl/ECL.csv", "h", None, "MT_320", "ECL electricity forecasting (Informer): hourly, 70/10/20")


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
