"""The ``timeseries`` task on a user's own CSV/Parquet (any name, length, columns, frequency): windows and scaling
against float64 NumPy, calendar features by frequency, per-window normalisation, one-line errors, and a CLI run."""
from datetime import date, datetime, timedelta

import numpy as np
import pytest
import torch
import yaml
from test_bad_inputs import assert_one_line_exit_2
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import DataError
from ssmkit.tasks import TASKS
from ssmkit.tasks.instance_norm import WindowNorm
from ssmkit.tasks.timeseries import Forecaster, calendar_features, infer_freq


def write_series(path, n=300, start=datetime(2020, 1, 1), step=timedelta(days=1), seed=0, bad=None, extra=True):
    """A user's CSV: ``day`` (dates), ``sales`` (trend + weekly cycle), ``price`` and a text column ``shop``;
    ``bad`` = (row, column name, text) puts a raw field in. Returns the values (n, 2) float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    sales = 50 + 0.2 * t + 5 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 1, n)
    price = 3 + rng.normal(0, 0.1, n)
    lines = ["day,sales,price" + (",shop" if extra else "")]
    for i in range(n):
        cells = {"day": (start + i * step).strftime("%Y-%m-%d"), "sales": f"{sales[i]:.6f}", "price": f"{price[i]:.6f}",
                 "shop": "north"}
        if bad and bad[0] == i:
            cells[bad[1]] = bad[2]
        lines.append(",".join(cells[c] for c in ["day", "sales", "price"] + (["shop"] if extra else [])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return np.stack([sales, price], 1)


def ts(path, **kw):
    return TASKS.get("timeseries")(csv=str(path), date="day", target="sales", **kw)


def test_windows_splits_and_scaling_by_hand(tmp_path):
    raw = write_series(tmp_path / "shop_sales_2020.csv", n=300)
    task = ts(tmp_path / "shop_sales_2020.csv", features="MS", columns=["price", "sales"], seq_len=20, pred_len=5,
              split=[0.6, 0.2, 0.2], normalize="global")
    n_train = int(300 * 0.6)  # 180 train rows, then val int(300 * 0.2) = 60 and test 60
    mean, std = raw[:n_train].mean(0), raw[:n_train].std(0)  # population std, training rows only
    norm = (raw - mean) / std
    # inputs: price, sales (target last), mask, calendar (daily: weekday, day of month, day of year)
    assert (task.d_input, task.d_output) == (2 + 1 + 3, 1)
    for split, start, rows in (("train", 0, 180), ("val", 180 - 20, 60 + 20), ("test", 240 - 20, 60 + 20)):
        ds = task.dataset(split)
        assert len(ds) == rows - 20 - 5 + 1
        i = len(ds) - 1
        x, y = ds[i]
        s = start + i
        np.testing.assert_allclose(x[:20, :2].numpy(), norm[s:s + 20][:, [1, 0]], rtol=1e-5, atol=1e-5)
        assert (x[20:, :2] == 0).all() and (x[:20, 2] == 0).all() and (x[20:, 2] == 1).all()
        np.testing.assert_allclose(y[:, 0].numpy(), norm[s + 20:s + 25, 0], rtol=1e-5, atol=1e-5)
        d = date(2020, 1, 1) + timedelta(days=s + 24)  # the calendar of the last forecast position
        assert x[24, 3:].tolist() == pytest.approx([d.weekday() / 6 - 0.5, (d.day - 1) / 30 - 0.5,
                                                    (d.timetuple().tm_yday - 1) / 365 - 0.5], abs=1e-6)
    none = ts(tmp_path / "shop_sales_2020.csv", seq_len=20, pred_len=5, normalize="none", time_features=False)
    x, y = none.dataset("train")[3]
    np.testing.assert_allclose(x[:20, 0].numpy(), raw[3:23, 0], rtol=1e-6)  # raw units
    assert none.d_input == 2


def test_frequency_picks_the_calendar_features():
    start = datetime(2021, 1, 4)  # a Monday, ISO week 1
    cases = [(timedelta(minutes=15), "t"), (timedelta(hours=1), "h"), (timedelta(days=1), "d"), (timedelta(weeks=1), "w"),
             (timedelta(days=30.4), "m"), (timedelta(days=91), "m"), (timedelta(days=365), "y")]
    for step, freq in cases:
        assert infer_freq([start + i * step for i in range(10)]) == freq, step
    weekly = [start + timedelta(weeks=i) for i in range(52)]
    f = calendar_features(weekly, "w")  # day of month, week of year: no constant hour/weekday columns
    assert f.shape == (52, 2)
    assert f[0].tolist() == pytest.approx([3 / 30 - 0.5, 0 / 52 - 0.5])  # 4 January, week 1
    assert f[51].tolist() == pytest.approx([26 / 30 - 0.5, 51 / 52 - 0.5])  # 27 December 2021, week 52
    monthly = calendar_features([datetime(2000, m, 1) for m in range(1, 13)], "m")
    assert monthly[:, 0].tolist() == pytest.approx([(m - 1) / 11 - 0.5 for m in range(1, 13)])
    assert calendar_features(weekly, "y").shape == (52, 0)


def test_weekly_file_gets_week_of_year_and_no_dates_means_no_calendar(tmp_path):
    write_series(tmp_path / "w.csv", n=120, step=timedelta(weeks=1))
    task = ts(tmp_path / "w.csv", seq_len=12, pred_len=4)
    assert task.freq == "w" and task.d_input == 1 + 1 + 2
    assert "week of year" in task.describe()
    plain = TASKS.get("timeseries")(csv=str(tmp_path / "w.csv"), target="sales", seq_len=12, pred_len=4)
    assert plain.d_input == 2  # sales + mask: without task.date the rows are steps, no calendar
    with pytest.raises(DataError, match="time_features=true needs dates"):
        TASKS.get("timeseries")(csv=str(tmp_path / "w.csv"), time_features=True).d_input  # noqa: B018


def test_window_norm_against_numpy_and_its_level_and_scale_equivariance():
    torch.manual_seed(0)
    B, S, P, n = 3, 10, 4, 2
    x = torch.randn(B, S + P, n + 3, dtype=torch.float64)
    x[:, S:, :n] = 0  # forecast positions: zero values
    linear = torch.nn.Linear(n + 3, 1).double()
    head = Forecaster(lambda z, lengths=None: linear(z), P, WindowNorm(n, S, [1]))
    out = head(x)
    xn = x.numpy().copy()
    mean = xn[:, :S, :n].mean(1, keepdims=True)
    std = np.sqrt(xn[:, :S, :n].var(1, keepdims=True) + 1e-5)
    xn[:, :S, :n] = (xn[:, :S, :n] - mean) / std
    w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    expected = (xn @ w.T + b)[:, -P:] * std[..., [1]] + mean[..., [1]]
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    shifted = x.clone()
    shifted[:, :S, :n] = shifted[:, :S, :n] * 3 + 100  # a new level and scale in the observed window
    np.testing.assert_allclose(head(shifted).detach().numpy(), (out * 3 + 100).detach().numpy(), rtol=1e-6)  # eps/var


def test_window_normalisation_is_the_default_and_global_for_the_informer_presets(tmp_path):
    write_series(tmp_path / "s.csv")
    task = ts(tmp_path / "s.csv", seq_len=8, pred_len=2)
    assert task.normalize == "window" and isinstance(task.wrap_model(torch.nn.Identity()).norm, WindowNorm)
    assert TASKS.get("weather")(seq_len=8, pred_len=2).wrap_model(torch.nn.Identity()).norm is None


def test_parquet_reads_as_the_csv(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet files are read with pyarrow (pip install pyarrow)")
    import pyarrow.parquet as pq

    raw = write_series(tmp_path / "s.csv", n=80, extra=False)
    days = [datetime(2020, 1, 1) + timedelta(days=i) for i in range(80)]
    pq.write_table(pa.table({"day": days, "sales": raw[:, 0], "price": raw[:, 1]}), tmp_path / "s.parquet")
    a, b = ts(tmp_path / "s.csv", seq_len=8, pred_len=2), ts(tmp_path / "s.parquet", seq_len=8, pred_len=2)
    for split in ("train", "test"):
        xa, ya = a.dataset(split)[5]
        xb, yb = b.dataset(split)[5]
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-5)  # the CSV holds 6 decimals
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    table = pa.table({"day": days, "sales": pa.array([None] + list(raw[1:, 0]))})
    pq.write_table(table, tmp_path / "gap.parquet")
    with pytest.raises(DataError, match="row 1, column 'sales': missing"):
        ts(tmp_path / "gap.parquet", seq_len=8, pred_len=2).dataset("train")


@pytest.mark.parametrize("bad,match", [
    ((7, "sales", ""), r"line 9, column 'sales': missing, non-numeric or infinite value ''"),
    ((3, "sales", "n/a"), r"line 5, column 'sales': missing, non-numeric or infinite value 'n/a'"),
    ((2, "sales", "nan"), r"line 4, column 'sales': missing, non-numeric or infinite value 'nan'"),
    ((5, "sales", "inf"), r"line 7, column 'sales': missing, non-numeric or infinite value 'inf'"),
    ((8, "sales", "-inf"), r"line 10, column 'sales': missing, non-numeric or infinite value '-inf'"),
    ((9, "sales", "Infinity"), r"line 11, column 'sales': missing, non-numeric or infinite value 'Infinity'"),
    ((4, "day", "05/01/2020"), r"line 6, column 'day': date '05/01/2020' is not 'YYYY-MM-DD"),
    ((6, "day", "2020-01-06"), r"line 8, column 'day': date 2020-01-06 00:00:00 repeats the date of line 7"),
    ((6, "day", "2019-12-30"), r"line 8, column 'day': date 2019-12-30 00:00:00 does not come after line 7"),
])
def test_bad_cells_name_line_and_column(tmp_path, bad, match):
    write_series(tmp_path / "s.csv", bad=bad)
    with pytest.raises(DataError, match=match) as e:
        ts(tmp_path / "s.csv", seq_len=8, pred_len=2).dataset("train")
    assert "\n" not in str(e.value)  # one line


def test_spreadsheet_exports_semicolons_and_a_byte_order_mark(tmp_path):
    raw = write_series(tmp_path / "s.csv", n=60, extra=False)
    text = (tmp_path / "s.csv").read_text().replace(",", ";")
    (tmp_path / "excel.csv").write_text("\ufeff" + text, encoding="utf-8")
    a, b = ts(tmp_path / "s.csv", seq_len=8, pred_len=2), ts(tmp_path / "excel.csv", seq_len=8, pred_len=2)
    assert a.series()[0] == b.series()[0] == ["sales"]
    np.testing.assert_array_equal(a.series()[2], b.series()[2])
    np.testing.assert_allclose(b.series()[2][:, 0], raw[:, 0], atol=1e-6)


def test_unused_text_column_is_fine_and_used_one_is_named(tmp_path):
    write_series(tmp_path / "s.csv")
    assert len(ts(tmp_path / "s.csv", features="S", seq_len=8, pred_len=2).dataset("train")) > 0
    with pytest.raises(DataError, match=r"line 2, column 'shop': missing, non-numeric or infinite value 'north'.*task.columns"):
        ts(tmp_path / "s.csv", features="M", seq_len=8, pred_len=2).dataset("train")
    m = ts(tmp_path / "s.csv", features="M", columns=["price"], seq_len=8, pred_len=2)
    assert (m.d_input, m.d_output) == (2 + 1 + 3, 2)  # price and the target sales


def test_option_and_layout_errors(tmp_path):
    write_series(tmp_path / "s.csv", n=40)
    with pytest.raises(DataError, match="no date column 'date'; columns are day, sales, price, shop; set task.date"):
        TASKS.get("timeseries")(csv=str(tmp_path / "s.csv"), date="date").dataset("train")
    with pytest.raises(DataError, match="no target column 'OT'; columns are sales, price, shop"):
        TASKS.get("timeseries")(csv=str(tmp_path / "s.csv"), date="day", target="OT").dataset("train")
    with pytest.raises(DataError, match=r"the val split \(rows 2..32 of 40\) is too short for seq_len=26 \+ pred_len=5"):
        ts(tmp_path / "s.csv", seq_len=26, pred_len=5).dataset("val")
    with pytest.raises(ValueError, match="label_len=48: Informer's decoder start length has no use here"):
        ts(tmp_path / "s.csv", label_len=48)
    with pytest.raises(ValueError, match="split=.* must be three fractions"):
        ts(tmp_path / "s.csv", split=[0.8, 0.3, 0.1])
    with pytest.raises(ValueError, match="must name your CSV"):
        TASKS.get("timeseries")()
    with pytest.raises(DataError, match="does not exist; give task.csv"):
        TASKS.get("timeseries")(csv=str(tmp_path / "nope.csv")).check_data()


def test_informer_hints(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        TASKS.get("weather")().check_data()
    assert "WTH.csv" in str(e.value) and "ETT-small" not in str(e.value) and "task.name=timeseries" in str(e.value)
    write_series(tmp_path / "informer/etth/ETTh1.csv", n=500, extra=False)  # too short for the 12/4/4 months
    (tmp_path / "informer/etth/ETTh1.csv").write_text((tmp_path / "informer/etth/ETTh1.csv").read_text().replace("day,", "date,"))
    with pytest.raises(DataError, match=r"need 12\+4\+4 months .* use task.name=timeseries task.csv="):
        TASKS.get("etth1")(target="sales", seq_len=8, pred_len=2).dataset("train")


def _recipe(tmp_path, task: dict) -> str:
    recipe = {"name": "own-ts", "task": task, "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 4, "runs_dir": str(tmp_path / "runs"), "log_every": 1, "eval_every": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_trains_and_evaluates_from_a_users_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a path relative to the current directory
    monkeypatch.setenv("COLUMNS", "1000")  # the --dry-run lines unwrapped
    write_series(tmp_path / "my data" / "shop_sales_2020.csv", n=150)
    recipe = _recipe(tmp_path, {"name": "timeseries", "csv": "my data/shop_sales_2020.csv", "date": "day",
                                "target": "sales", "features": "MS", "columns": ["price"], "seq_len": 14, "pred_len": 7})
    result = CliRunner().invoke(app, ["train", recipe, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "data: timeseries shop_sales_2020.csv: 150 rows (every day, 2020-01-01 .. 2020-05-29)" in result.output
    result = CliRunner().invoke(app, ["train", recipe, "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "runs" / "own-ts"), "--split", "test"])
    assert result.exit_code == 0, result.output
    metrics = yaml.safe_load(result.output.strip().splitlines()[-1])
    assert metrics["samples"] == 30 - 7 + 1 and np.isfinite(metrics["mse"]) and metrics["mae"] > 0


def test_bad_csv_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_series(tmp_path / "s.csv", n=100, bad=(10, "sales", "?"))
    recipe = _recipe(tmp_path, {"name": "timeseries", "csv": "s.csv", "date": "day", "target": "sales", "seq_len": 8,
                                "pred_len": 2})
    line = assert_one_line_exit_2(CliRunner().invoke(app, ["train", recipe, "--max-steps", "1"]))
    assert "line 12, column 'sales': missing, non-numeric or infinite value '?'" in line
    result = CliRunner().invoke(app, ["data", "check", "timeseries", "-o", "csv=s.csv", "-o", "date=day", "-o", "target=sales"])
    assert_one_line_exit_2(result, "line 12, column 'sales'")
