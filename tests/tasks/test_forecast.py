"""Informer forecasting tasks on tiny CSVs in the real layout: splits, scaling, windows, calendar, errors, metrics."""
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import DataError
from ssmkit.tasks import TASKS
from ssmkit.tasks.forecast import write_synthetic_ett

WTH_COLUMNS = ["Visibility", "DryBulbFarenheit", "WetBulbCelsius", "StationPressure"]


def write_csv(path, columns, values, start=datetime(2016, 2, 27), step=timedelta(hours=1), bad=None):
    """An Informer CSV (date + columns); ``bad`` = (row, col, text) puts a raw field in."""
    lines = ["date," + ",".join(columns)]
    for i, row in enumerate(values):
        fields = [f"{v:.6f}" for v in row]
        if bad and bad[0] == i:
            fields[bad[1]] = bad[2]
        lines.append((start + i * step).strftime("%Y-%m-%d %H:%M:%S") + "," + ",".join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_informer(root, rows=300):
    """weather (WTH.csv) and ecl (ECL.csv) at ``rows`` hourly rows from 2016-02-27 (crosses 2016-02-29), and ETTh1/
    ETTh2/ETTm1 at their full split sizes (synthetic ETT-format values)."""
    rng = np.random.default_rng(0)
    wth = rng.normal(size=(rows, len(WTH_COLUMNS))) * [1, 10, 5, 0.1] + [5, 50, 10, 29]
    write_csv(root / "informer/weather/WTH.csv", WTH_COLUMNS, wth)
    write_csv(root / "informer/ecl/ECL.csv", ["MT_318", "MT_319", "MT_320", "MT_321"], rng.normal(size=(rows, 4)) * 100 + 500)
    write_synthetic_ett(root / "informer/etth/ETTh1.csv", 20 * 720)
    write_synthetic_ett(root / "informer/etth/ETTh2.csv", 20 * 720, seed=1)
    write_synthetic_ett(root / "informer/ettm/ETTm1.csv", 20 * 2880, freq="t")
    return wth


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    rng = np.random.default_rng(0)
    wth = rng.normal(size=(300, 4)) * [1, 10, 5, 0.1] + [5, 50, 10, 29]
    write_csv(tmp_path / "informer/weather/WTH.csv", WTH_COLUMNS, wth)
    return tmp_path, wth


def test_ratio_splits_scaling_and_windows_by_hand(data):
    _, raw = data
    task = TASKS.get("weather")(features="MS", seq_len=24, pred_len=12)
    # target last: Visibility, DryBulbFarenheit, StationPressure, WetBulbCelsius
    raw = raw[:, [0, 1, 3, 2]]
    n_train, n_test = int(300 * 0.7), int(300 * 0.2)  # 210, 60; val 30
    mean, std = raw[:n_train].mean(0), raw[:n_train].std(0)
    norm = (raw - mean) / std
    assert (task.d_input, task.d_output) == (4 + 1 + 4, 1)
    for split, start, rows in (("train", 0, 210), ("val", 210 - 24, 30 + 24), ("test", 240 - 24, n_test + 24)):
        ds = task.dataset(split)
        assert len(ds) == rows - 24 - 12 + 1
        i = len(ds) - 1
        x, y = ds[i]
        s = start + i
        assert x.shape == (36, 9) and y.shape == (12, 1)
        np.testing.assert_allclose(x[:24, :4].numpy(), norm[s : s + 24], rtol=1e-5, atol=1e-5)
        assert (x[24:, :4] == 0).all() and (x[:24, 4] == 0).all() and (x[24:, 4] == 1).all()
        np.testing.assert_allclose(y[:, 0].numpy(), norm[s + 24 : s + 36, 3], rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_scaler_is_fitted_on_the_training_rows_only(data, tmp_path):
    root, raw = data
    changed = raw.copy()
    changed[250:] *= 1000  # test rows only
    write_csv(root / "informer/weather/WTH.csv", WTH_COLUMNS, changed)
    a = TASKS.get("weather")(seq_len=24, pred_len=12).dataset("train")[5]
    write_csv(root / "informer/weather/WTH.csv", WTH_COLUMNS, raw)
    b = TASKS.get("weather")(seq_len=24, pred_len=12).dataset("train")[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_features_s_and_m(data):
    _, raw = data
    s = TASKS.get("weather")(features="S", seq_len=8, pred_len=4, time_features=False, mask_token=False)
    assert (s.d_input, s.d_output) == (1, 1)
    x, y = s.dataset("train")[0]
    target = raw[:210, 2]
    np.testing.assert_allclose(x[:8, 0].numpy(), (raw[:8, 2] - target.mean()) / target.std(), rtol=1e-5, atol=1e-5)
    m = TASKS.get("weather")(features="M", seq_len=8, pred_len=4)
    assert (m.d_input, m.d_output) == (4 + 1 + 4, 4)
    assert m.dataset("val")[0][1].shape == (4, 4)


def test_calendar_features_across_the_leap_day(data):
    task = TASKS.get("weather")(seq_len=70, pred_len=12)
    x, _ = task.dataset("train")[0]  # rows 0..81 from 2016-02-27 00:00
    i = 2 * 24 + 13  # 2016-02-29 13:00, a Monday, day of year 60
    hour, weekday, day, yday = x[i, 2:6].tolist()
    assert hour == pytest.approx(13 / 23 - 0.5) and weekday == pytest.approx(-0.5)
    assert day == pytest.approx(28 / 30 - 0.5) and yday == pytest.approx(59 / 365 - 0.5)
    assert x[i + 11, 5].item() == pytest.approx(60 / 365 - 0.5)  # 2016-03-01: day 61 in a leap year


def test_ett_month_borders(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    path = write_synthetic_ett(tmp_path / "informer/etth/ETTh1.csv", 20 * 720 + 50)
    raw = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, 8))
    task = TASKS.get("etth1")(seq_len=48, pred_len=24, features="M")
    assert (task.d_input, task.d_output) == (7 + 1 + 4, 7)
    mean, std = raw[:8640].mean(0), raw[:8640].std(0)
    test = task.dataset("test")
    assert len(test) == 2880 + 48 - 48 - 24 + 1  # rows 11472..14400: the 50 rows after month 20 are unused
    x, y = test[0]
    np.testing.assert_allclose(x[:48, :7].numpy(), ((raw[16 * 720 - 48 : 16 * 720] - mean) / std), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y.numpy(), (raw[16 * 720 : 16 * 720 + 24] - mean) / std, rtol=1e-4, atol=1e-4)
    write_synthetic_ett(path, 20 * 720 - 1)
    with pytest.raises(DataError, match="need 12\\+4\\+4 months"):
        TASKS.get("etth1")(seq_len=48, pred_len=24).dataset("train")


@pytest.mark.parametrize("bad,match", [((7, 1, ""), "line 9, column 'DryBulbFarenheit': missing"),
                                       ((3, 0, "nan"), "line 5, column 'Visibility': missing"),
                                       ((4, 2, "12,5"), "line 6 has 6 fields")])
def test_bad_values_name_their_line_and_column(data, bad, match):
    root, raw = data
    write_csv(root / "informer/weather/WTH.csv", WTH_COLUMNS, raw, bad=bad)
    with pytest.raises(DataError, match=match):
        TASKS.get("weather")(seq_len=8, pred_len=4).dataset("train")


def test_bad_dates_target_and_missing_file(data):
    root, raw = data
    path = root / "informer/weather/WTH.csv"
    write_csv(path, WTH_COLUMNS, raw, step=timedelta(hours=-1))
    with pytest.raises(DataError, match="does not come after"):
        TASKS.get("weather")(seq_len=8, pred_len=4).dataset("train")
    path.write_text(path.read_text().replace("2016-02-26", "26/02/2016"))
    with pytest.raises(DataError, match="is not 'YYYY-MM-DD"):
        TASKS.get("weather")(seq_len=8, pred_len=4).dataset("train")
    write_csv(path, WTH_COLUMNS, raw)
    with pytest.raises(DataError, match="no target column 'OT'; columns are Visibility"):
        TASKS.get("weather")(target="OT").dataset("train")
    with pytest.raises(DataError, match="too short for seq_len=250"):
        TASKS.get("weather")(seq_len=250, pred_len=4).dataset("val")
    with pytest.raises(ValueError, match="features='X' is not allowed"):
        TASKS.get("weather")(features="X")
    result = CliRunner().invoke(app, ["data", "check", "ecl"])
    assert result.exit_code == 2 and "ECL.csv" in result.output and len(result.output.strip().splitlines()) == 1


def test_metrics_and_head():
    task = TASKS.get("weather")(seq_len=8, pred_len=4)  # no data needed for features S
    out, tgt = torch.randn(3, 4, 1), torch.randn(3, 4, 1)
    stats = task.metric_stats(out, tgt)
    m = task.compute_metrics({k: v.sum(0) for k, v in stats.items()})
    assert m["mse"] == pytest.approx(((out - tgt) ** 2).mean().item(), rel=1e-6)
    assert m["mae"] == pytest.approx((out - tgt).abs().mean().item(), rel=1e-6)
    assert task.loss(out, tgt).item() == pytest.approx(m["mse"], rel=1e-6)
    backbone = torch.nn.Linear(task.d_input, 1)
    head = task.wrap_model(lambda x, lengths=None: backbone(x))
    x = torch.randn(2, 12, task.d_input)
    assert torch.equal(head(x), backbone(x)[:, -4:])


def test_generate_ett_then_train_quick_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    result = CliRunner().invoke(app, ["data", "generate", "ett", "--n", "2000"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "informer/synthetic/ETTh1.csv"
    header, first = path.read_text().splitlines()[:2]
    assert header == "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT" and first.startswith("2016-07-01 00:00:00,")


def test_ettm1_quarter_hours_have_minute_features(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    write_synthetic_ett(tmp_path / "informer/ettm/ETTm1.csv", 20 * 2880, freq="t")
    task = TASKS.get("ettm1")(seq_len=16, pred_len=8)
    assert task.d_input == 1 + 1 + 5
    val = task.dataset("val")
    assert len(val) == 4 * 2880 + 16 - 16 - 8 + 1  # months 13-16 of 15-minute rows
    x, _ = val[0]  # starts 16 rows before row 12 * 2880, i.e. at 2017-06-26 20:00
    minutes = x[:4, 2].tolist()
    assert minutes == pytest.approx([m / 59 - 0.5 for m in (0, 15, 30, 45)])
