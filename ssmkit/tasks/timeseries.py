"""Forecasting on any CSV or Parquet file (task ``timeseries``); the Informer tasks (``tasks/forecast.py``) are presets.

A file has a header row, then one row per time step in time order: an optional date column (``date:``),
the ``target`` column (default: the last column that is not the date) and, for multivariate forecasting,
the other numeric columns (``columns:`` picks them; default all but the date). Paths are absolute, or
relative to the current directory, else to ``$SSMKIT_DATA``. A ``.parquet`` file is read with pyarrow
(optional: ``pip install pyarrow``); anything else as CSV. Dates are ISO 8601 (``YYYY-MM-DD[ HH:MM[:SS]]``,
also ``YYYY-MM`` and ``YYYY``), strictly increasing. A missing, non-numeric or infinite value, a bad date, a date
out of order or repeated: one error naming the line (row) and column, and what to do.

Splits are by time: ``split: [train, val, test]`` fractions of the rows (default 0.7/0.1/0.2, as the
Informer loaders for Weather/ECL: train int(0.7 T), test int(0.2 T), val the rest). Validation and test
windows start ``seq_len`` rows before their split, so the first forecast is the split's first row.

``features``: ``S`` (the target alone, in and out), ``M`` (every column in and out), ``MS`` (every column
in, the target out); the target is the last column. A sample is ``seq_len`` observed steps followed by
``pred_len`` forecast positions whose values are zero (S4's masked forecast tokens); the input also has a
channel that is 1 at the forecast positions (``mask_token``) and the calendar features of every position,
known in advance for the forecast positions too (``time_features``, default on when there is a date).

Calendar features follow the data's frequency (``freq: auto`` takes it from the median spacing of the
dates): the Informer ``timeenc=1`` table, each feature in [-0.5, 0.5]: seconds ``s`` (second, minute, hour,
weekday, day of month, day of year), minutes ``t`` (minute, hour, weekday, day of month, day of year),
hours ``h`` (hour, weekday, day of month, day of year), days ``d`` (weekday, day of month, day of year),
weeks ``w`` (day of month, week of year), months and quarters ``m`` (month), years ``y`` (none).

``normalize``: ``global`` standardises every column with the mean and (population) standard deviation of
the training rows only (the Informer scaling; MSE and MAE are reported on that scale, as the papers do);
``window`` (the default here) adds per-window normalisation (``tasks/instance_norm.py``, RevIN-style): each
sample's observed values are normalised by their own mean and deviation and the forecast mapped back, so a
series that trends beyond its training range can still be followed; metrics stay on the global scale.
``none``: raw values, metrics in the data's own units.

The model predicts at every position (pool None); ``wrap_model`` keeps the last ``pred_len`` outputs
(``Forecaster``); the loss is the MSE over them; metrics ``mse`` and ``mae``.
"""
from __future__ import annotations

import csv
import io
import math
import re
from datetime import date as _date
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.errors import DataError, first_line
from ssmkit.tasks._shared import check_choice, check_split, read_text, user_path
from ssmkit.tasks.base import TASKS, Task
from ssmkit.tasks.instance_norm import WindowNorm

FEATURES = ("S", "M", "MS")
NORMALIZE = ("window", "global", "none")
FREQS = ("auto", "s", "t", "h", "d", "w", "m", "y")
SPLITS = {"train": 0, "val": 1, "test": 2}
FREQ_NAMES = {"s": "second", "t": "minute", "h": "hour", "d": "day", "w": "week", "m": "month", "y": "year"}

#: Informer's ``timeenc=1`` calendar features (utils/timefeatures.py), each in [-0.5, 0.5].
_FEATURE = {
    "second": lambda d: d.second / 59 - 0.5,
    "minute": lambda d: d.minute / 59 - 0.5,
    "hour": lambda d: d.hour / 23 - 0.5,
    "weekday": lambda d: d.weekday() / 6 - 0.5,
    "day of month": lambda d: (d.day - 1) / 30 - 0.5,
    "day of year": lambda d: (d.timetuple().tm_yday - 1) / 365 - 0.5,
    "week of year": lambda d: (d.isocalendar()[1] - 1) / 52 - 0.5,
    "month": lambda d: (d.month - 1) / 11 - 0.5,
}
#: The features of each frequency, as Informer's ``time_features_from_frequency_str`` (quarters as months).
CALENDAR = {
    "s": ("second", "minute", "hour", "weekday", "day of month", "day of year"),
    "t": ("minute", "hour", "weekday", "day of month", "day of year"),
    "h": ("hour", "weekday", "day of month", "day of year"),
    "d": ("weekday", "day of month", "day of year"),
    "w": ("day of month", "week of year"),
    "m": ("month",),
    "y": (),
}
_YEAR, _MONTH = re.compile(r"^\d{4}$"), re.compile(r"^(\d{4})-(\d{1,2})$")


# --- reading ---
def parse_date(value) -> datetime | None:
    """A date cell (ISO text, YYYY-MM, YYYY, a datetime/date, an integer year) -> naive datetime (UTC if
    it had a zone), or None if it is not a date."""
    if isinstance(value, datetime):
        d = value
    elif isinstance(value, _date):
        d = datetime(value.year, value.month, value.day)
    elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 9999:
        d = datetime(value, 1, 1)
    elif isinstance(value, str):
        text = value.strip()
        try:
            d = datetime.fromisoformat(text)
        except ValueError:
            if _YEAR.match(text):
                d = datetime(int(text), 1, 1)
            elif (m := _MONTH.match(text)) and 1 <= int(m.group(2)) <= 12:
                d = datetime(int(m.group(1)), int(m.group(2)), 1)
            else:
                return None
    else:
        return None
    if d.tzinfo is not None:
        d = d.astimezone(timezone.utc).replace(tzinfo=None)
    return d


class Table:
    """The columns of a CSV or Parquet file as cells, with where each row came from (for error messages)."""

    def __init__(self, path: Path, header: list[str], cells: dict[str, list], where):
        self.path, self.header, self.cells, self.where = path, header, cells, where
        self.n = len(next(iter(cells.values()))) if cells else 0

    def numbers(self, name: str) -> np.ndarray:
        """The column as float64; a missing, non-numeric or infinite cell is a DataError naming it."""
        cells = self.cells[name]
        try:
            values = np.array(cells, dtype=np.float64)
        except (ValueError, TypeError):
            values = None
        if values is not None and values.ndim == 1 and np.isfinite(values).all():
            return values
        for i, cell in enumerate(cells):
            try:
                v = float(cell)
            except (ValueError, TypeError):
                v = math.nan
            if not math.isfinite(v):
                raise DataError(f"{self.path}: {self.where(i)}, column {name!r}: missing, non-numeric or infinite value {cell!r}; "
                                "fill the gap (e.g. with the previous value) or drop the row"
                                + ("" if len(self.header) < 3 else ", or leave the column out with task.columns"))
        raise DataError(f"{self.path}: column {name!r} is not a column of numbers")

    def dates(self, name: str) -> list[datetime]:
        """The column as datetimes, strictly increasing; a bad, unordered or repeated date names its row."""
        out = []
        for i, cell in enumerate(self.cells[name]):
            d = parse_date(cell)
            if d is None:
                raise DataError(f"{self.path}: {self.where(i)}, column {name!r}: date {cell!r} is not 'YYYY-MM-DD "
                                "HH:MM[:SS]' (ISO 8601; YYYY-MM and YYYY also work); convert the column, or set "
                                "task.date=null to use row order alone")
            if out and d <= out[-1]:
                what = "repeats the date of" if d == out[-1] else "does not come after"
                raise DataError(f"{self.path}: {self.where(i)}, column {name!r}: date {d} {what} {self.where(i - 1)} "
                                f"({out[-1]}); rows must be in time order without duplicates: sort the file and "
                                "merge repeated dates")
            out.append(d)
        return out


def read_table(path: Path) -> Table:
    """A CSV (header row first; comma, semicolon, tab or bar separated) or, for a ``.parquet`` name, a Parquet
    file -> :class:`Table`."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    text = read_text(path).removeprefix("\ufeff")  # a byte-order mark, as spreadsheet programs write
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t|", key=first.count)  # comma, or the semicolon / tab / bar of other exports
    reader = csv.reader(io.StringIO(text), delimiter=delimiter if first.count(delimiter) else ",")
    rows, lines = [], []
    try:
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    while rows and not any(field.strip() for field in rows[-1]):
        rows.pop()  # blank lines at the end
    if not rows:
        raise DataError(f"{path}: empty; a time series file has a header row, then one row per time step")
    header = [c.strip() for c in rows[0]]
    _check_header(path, header)
    for r, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise DataError(f"{path}: line {lines[r]} has {len(row)} fields, the header has {len(header)}")
    cells = {name: [row[j].strip() for row in rows[1:]] for j, name in enumerate(header)}
    return Table(path, header, cells, lambda i: f"line {lines[i + 1]}")


def _check_header(path: Path, header: list[str]) -> None:
    seen = set()
    for j, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: column {j + 1} of the header has no name; name every column")
        if name in seen:
            raise DataError(f"{path}: two columns are named {name!r}; rename one")
        seen.add(name)


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow (or save the table as CSV)") from None
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    header = [str(n) for n in table.column_names]
    _check_header(path, header)
    cells = {name: table.column(j).to_pylist() for j, name in enumerate(header)}
    return Table(path, header, cells, lambda i: f"row {i + 1}")


def infer_freq(dates: list[datetime]) -> str:
    """The calendar frequency of evenly (or nearly evenly) spaced dates, from the median spacing."""
    if len(dates) < 2:
        return "d"
    gaps = np.diff(np.array([d.timestamp() for d in dates]))
    median = float(np.median(gaps))
    day = 86400.0
    for limit, freq in ((60, "s"), (3600, "t"), (day, "h"), (7 * day, "d"), (28 * day, "w"), (365 * day, "m")):
        if median < limit:
            return freq
    return "y"


def calendar_features(dates: list[datetime], freq: str) -> np.ndarray:
    """(T, k) calendar features of ``dates`` at frequency ``freq`` (``CALENDAR[freq]``), float64."""
    names = CALENDAR[freq]
    return np.array([[_FEATURE[n](d) for n in names] for d in dates], dtype=np.float64).reshape(len(dates), len(names))


# --- samples and the model head ---
class Windows(torch.utils.data.Dataset):
    """(x (seq_len + pred_len, d_input), y (pred_len, d_output)) windows of one split."""

    def __init__(self, task, data: np.ndarray, stamps: np.ndarray | None):
        self.task, self.data, self.stamps = task, torch.from_numpy(np.ascontiguousarray(data)).float(), stamps
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
    """The backbone's per-position outputs (B, seq_len + pred_len, d_output) -> the last pred_len positions;
    with ``norm`` (a :class:`~ssmkit.tasks.instance_norm.WindowNorm`), inputs normalised per window and the
    forecast mapped back."""

    def __init__(self, backbone: nn.Module, pred_len: int, norm: WindowNorm | None = None):
        super().__init__()
        self.backbone, self.pred_len, self.norm = backbone, pred_len, norm

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm is None:
            return self.backbone(x, lengths=lengths)[:, -self.pred_len :]
        x, stats = self.norm.normalize(x)
        return self.norm.denormalize(self.backbone(x, lengths=lengths)[:, -self.pred_len :], stats)


# --- the task ---
def _check_int(key: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"task option {key}={value!r} must be an integer >= {low}")


@TASKS.register("timeseries", description="Forecasting on your own CSV/Parquet file: any length, columns and frequency")
class TimeSeries(Task):
    name = "timeseries"
    encoder = "linear"
    pool = None
    main_metric = "mse"
    main_mode = "min"
    split_fractions: tuple[float, float, float] | None = (0.7, 0.1, 0.2)
    check_all_columns = False  # the presets check every column, not only those read

    def __init__(self, csv: str | None = None, target: str | None = None, date: str | None = None,
                 columns: list | None = None, features: str = "S", seq_len: int = 96, pred_len: int = 24,
                 label_len: int | None = None, split: list | None = None, normalize: str = "window",
                 freq: str = "auto", time_features: bool | None = None, mask_token: bool = True):
        if csv is None or not isinstance(csv, str) or not csv.strip():
            raise ValueError(f"task option csv={csv!r} must name your CSV or Parquet file, e.g. task.csv=data/sales.csv")
        for key, value in (("target", target), ("date", date)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"task option {key}={value!r} must be a column name")
        if columns is not None and (not isinstance(columns, list) or not columns
                                    or not all(isinstance(c, str) and c for c in columns)):
            raise ValueError(f"task option columns={columns!r} must be a list of column names, e.g. [load, temperature]")
        self._setup(features, seq_len, pred_len, label_len, normalize, freq, time_features, mask_token)
        if split is None:
            split = [0.7, 0.1, 0.2]
        if (not isinstance(split, list | tuple) or len(split) != 3
                or not all(isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < 1 for f in split)
                or abs(sum(split) - 1) > 1e-6):
            raise ValueError(f"task option split={split!r} must be three fractions in (0, 1) for train, val and test "
                             "that add up to 1, e.g. [0.7, 0.1, 0.2]")
        self.split_fractions = tuple(float(f) for f in split)
        self.csv, self.target, self.date, self.columns = csv, target, date, columns
        self.path = user_path(csv)

    def _setup(self, features, seq_len, pred_len, label_len, normalize, freq, time_features, mask_token) -> None:
        """The options every forecasting task shares (the presets call it too)."""
        check_choice("features", features, FEATURES)
        check_choice("normalize", normalize, NORMALIZE)
        check_choice("freq", freq, FREQS)
        _check_int("seq_len", seq_len)
        _check_int("pred_len", pred_len)
        if label_len not in (None, 0):
            raise ValueError(f"task option label_len={label_len!r}: Informer's decoder start length has no use here: the "
                             "model reads seq_len observed steps and predicts pred_len masked ones (as S4's forecasting); "
                             "drop label_len (lengthen seq_len for more context)")
        for key, value in (("time_features", time_features), ("mask_token", mask_token)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"task option {key}={value!r} must be true or false")
        if mask_token is None:
            raise ValueError("task option mask_token=null must be true or false")
        self.features, self.seq_len, self.pred_len = features, seq_len, pred_len
        self.normalize, self.freq_option, self.time_features_option = normalize, freq, time_features
        self.mask_token = mask_token
        self._series = None

    # --- data ---
    def data_hint(self) -> str:
        return ("give task.csv the path of your CSV/Parquet file (absolute, or relative to the current directory "
                "or to $SSMKIT_DATA)")

    def check_data(self) -> None:
        if not self.path.is_file():
            what = "is a folder, not a file" if self.path.is_dir() else "does not exist"
            raise DataError(f"{self.name} data: {self.path} {what}; {self.data_hint()}")

    @property
    def date_column(self) -> str | None:
        return self.date

    def date_hint(self) -> str:
        return "set task.date to one of them, or task.date=null for rows without dates"

    def _select(self, table: Table) -> list[str]:
        """The columns to read, the target last."""
        path, header, date = table.path, table.header, self.date_column
        if date is not None and date not in header:
            raise DataError(f"{path}: no date column {date!r}; columns are {', '.join(header)}; {self.date_hint()}")
        names = [h for h in header if h != date]
        if not names:
            raise DataError(f"{path}: no column besides the date; a time series needs at least one column of values")
        target = self.target or names[-1]
        if target not in names:
            raise DataError(f"{path}: no target column {target!r}; columns are {', '.join(names)}; set task.target")
        if self.features == "S":
            return [target]
        if self.columns is not None:
            for c in self.columns:
                if c not in names:
                    raise DataError(f"{path}: task.columns names {c!r}, which is not a column; columns are {', '.join(names)}")
            names = list(dict.fromkeys(self.columns))
        return [c for c in names if c != target] + [target]

    def series(self) -> tuple[list[str], list[datetime] | None, np.ndarray]:
        """(column names with the target last, dates or None, values (T, F) float64), read once."""
        if self._series is None:
            self.check_data()
            table = read_table(self.path)
            names = self._select(table)
            if self.check_all_columns:  # a benchmark file is numbers throughout: a bad cell anywhere is an error
                for c in table.header:
                    if c != self.date_column:
                        table.numbers(c)
            values = np.stack([table.numbers(c) for c in names], 1) if table.n else np.zeros((0, len(names)))
            dates = table.dates(self.date_column) if self.date_column is not None else None
            self._series = (names, dates, values)
        return self._series

    @property
    def freq(self) -> str | None:
        """The calendar frequency (``freq`` option, or inferred from the dates); None without dates."""
        if self.freq_option != "auto":
            return self.freq_option
        dates = self.series()[1]
        return None if dates is None else infer_freq(dates)

    @property
    def time_features(self) -> bool:
        if self.time_features_option is None:
            return self.date_column is not None
        if self.time_features_option and self.date_column is None:
            raise DataError(f"{self.name}: task.time_features=true needs dates: set task.date to the date column, or "
                            "task.time_features=false")
        return self.time_features_option

    def _n_time(self) -> int:
        return len(CALENDAR[self.freq]) if self.time_features else 0

    @property
    def in_cols(self) -> list[int]:
        """Input value columns (indices into ``series()``'s columns); S needs no reading."""
        return [0] if self.features == "S" else list(range(len(self.series()[0])))

    @property
    def out_cols(self) -> list[int]:
        if self.features == "S":
            return [0]
        n = len(self.series()[0])
        return list(range(n)) if self.features == "M" else [n - 1]

    @property
    def d_input(self) -> int:
        return len(self.in_cols) + int(self.mask_token) + self._n_time()

    @property
    def d_output(self) -> int:
        return len(self.out_cols)

    def borders(self, T: int) -> tuple[list[int], list[int]]:
        """Row ranges [start, end) of train/val/test (val/test start seq_len rows early)."""
        f_train, _, f_test = self.split_fractions
        n_train, n_test = int(T * f_train), int(T * f_test)
        return [0, n_train - self.seq_len, T - n_test - self.seq_len], [n_train, T - n_test, T]

    def scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of every column over the training rows (std 1 for a constant column, and for ``none``)."""
        names, _, values = self.series()
        b1, b2 = self.borders(len(values))
        if self.normalize == "none":
            return np.zeros(len(names)), np.ones(len(names))
        train = values[: b2[0]]
        if len(train) == 0:
            raise DataError(f"{self.path}: {len(values)} rows leave no training rows; the file needs more rows")
        std = train.std(0)
        return train.mean(0), np.where(std > 0, std, 1.0)

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        names, dates, values = self.series()
        b1, b2 = self.borders(len(values))
        mean, std = self.scaling()
        k = SPLITS[split]
        lo, hi = b1[k], b2[k]
        if lo < 0 or hi - lo < self.seq_len + self.pred_len:
            raise DataError(f"{self.path}: the {split} split (rows {max(lo, 0)}..{hi} of {len(values)}) is too short for "
                            f"seq_len={self.seq_len} + pred_len={self.pred_len}; use shorter windows or more rows"
                            + self._too_short_hint())
        stamps = calendar_features(dates[lo:hi], self.freq) if self.time_features else None
        return Windows(self, (values[lo:hi] - mean) / std, stamps)

    def _too_short_hint(self) -> str:
        return ""

    def describe(self) -> str:
        """One line: what was read and inferred (shown by ``ssmkit train --dry-run`` and ``ssmkit data check``)."""
        names, dates, values = self.series()
        b1, b2 = self.borders(len(values))
        rows = "/".join(str(b2[k] - max(b1[k], 0) - (self.seq_len if k else 0)) for k in range(3))
        show = (lambda d: str(d.date())) if self.freq in ("d", "w", "m", "y") else str
        when = f"every {FREQ_NAMES[self.freq]}, {show(dates[0])} .. {show(dates[-1])}" if dates else "no dates"
        cal = ", ".join(CALENDAR[self.freq]) if self.time_features and CALENDAR[self.freq] else "none"
        return (f"{self.name} {self.path.name}: {len(values)} rows ({when}), train/val/test {rows} rows; inputs "
                f"{', '.join(names)}{' + mask' if self.mask_token else ''}; forecasts {', '.join(names[i] for i in self.out_cols)} "
                f"{self.pred_len} steps from {self.seq_len}; calendar features: {cal}; normalize {self.normalize}; "
                f"loss mse (d_input {self.d_input}, d_output {self.d_output})")

    # --- model, loss, metrics ---
    def wrap_model(self, model: nn.Module) -> nn.Module:
        norm = None
        if self.normalize == "window":
            norm = WindowNorm(len(self.in_cols), self.seq_len, self.out_cols)
        return Forecaster(model, self.pred_len, norm)

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
