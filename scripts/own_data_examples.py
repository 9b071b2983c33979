"""Real data that Python packages ship, written as the files a user would have, and the simple baselines
that the "Train on your own data" runs in docs/results.md are compared with.

    python scripts/own_data_examples.py export [--out DIR]     # default $SSMKIT_DATA/own (./data/own)
    python scripts/own_data_examples.py baselines [--out DIR]

``export`` writes (needs ``pip install scikit-learn statsmodels``):
- ``digits/train.npz``, ``digits/test.npz``: scikit-learn's handwritten digits (1,797 8x8 images, UCI), each
  image a sequence of 64 pixel intensities 0..16 as integer tokens (``x`` (N, 64) int64, ``y`` (N,) the
  digit); the last 297 images are the test set (sklearn's order), the rest train.
- ``co2-weekly.csv``: statsmodels' weekly Mauna Loa CO2 (ppm, 1958-03-29 .. 2001-12-29, 2,284 weeks; columns
  ``date,co2``); its 59 missing weeks are filled by linear interpolation (the loader refuses gaps).
- ``python-help/*.txt``: the 79 topics of Python's own ``help()`` text (the standard library's
  ``pydoc_data.topics``, English prose with code), one file per topic, for the ``lm`` task.

``baselines`` prints, on the same splits the tasks use: the majority class (digits); the naive last value
and the seasonal naive (52 weeks before) forecast for CO2, in the task's normalised units; and the bits per
byte of gzip, bz2 and lzma on the text's test split (compressed alone, and given the training text first).
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import os
import sys
from pathlib import Path

import numpy as np


def default_out() -> Path:
    return Path(os.environ.get("SSMKIT_DATA", "data")) / "own"


def export(out: Path) -> None:
    try:
        import statsmodels.api as sm
        from sklearn.datasets import load_digits
    except ImportError as e:
        sys.exit(f"export needs scikit-learn and statsmodels: pip install scikit-learn statsmodels ({e})")
    out.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    x, y = digits.data.astype(np.int64), digits.target.astype(np.int64)
    (out / "digits").mkdir(exist_ok=True)
    np.savez(out / "digits" / "train.npz", x=x[:1500], y=y[:1500])
    np.savez(out / "digits" / "test.npz", x=x[1500:], y=y[1500:])

    co2 = sm.datasets.co2.load_pandas().data["co2"]
    filled = co2.interpolate(method="linear")
    lines = ["date,co2"] + [f"{d:%Y-%m-%d},{v:.2f}" for d, v in zip(filled.index, filled.to_numpy())]
    (out / "co2-weekly.csv").write_text("\n".join(lines) + "\n")

    from pydoc_data.topics import topics

    folder = out / "python-help"
    folder.mkdir(exist_ok=True)
    for name, text in sorted(topics.items()):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    print(f"wrote {out}/digits/{{train,test}}.npz ({len(x[:1500])}/{len(x[1500:])} images), {out}/co2-weekly.csv "
          f"({len(filled)} weeks, {int(co2.isna().sum())} gaps interpolated), {folder}/ ({len(topics)} topics)")


def baselines(out: Path) -> None:
    import torch

    from ssmkit.tasks.lm import LanguageModel
    from ssmkit.tasks.sequences import Sequences
    from ssmkit.tasks.timeseries import TimeSeries

    # digits: the majority class of the training split, scored on val and test
    task = Sequences(train=str(out / "digits" / "train.npz"), test=str(out / "digits" / "test.npz"), val=0.1)
    train_y = torch.stack([task.dataset("train")[i][1] for i in range(len(task.dataset("train")))])
    majority = int(torch.bincount(train_y).argmax())
    for split in ("val", "test"):
        ys = torch.stack([item[1] for item in task.dataset(split)])
        print(f"digits {split}: majority class {majority} accuracy {(ys == majority).double().mean():.4f} ({len(ys)} samples)")

    # co2: naive last value and seasonal naive, on the task's windows (global scaling), per horizon position
    for pred_len in (26, 52):
        task = TimeSeries(csv=str(out / "co2-weekly.csv"), date="date", seq_len=104, pred_len=pred_len, normalize="global")
        _, _, values = task.series()
        b1, b2 = task.borders(len(values))
        mean, std = task.scaling()
        z = (values[:, 0] - mean[0]) / std[0]
        for split, k in (("val", 1), ("test", 2)):
            lo, hi = b1[k], b2[k]
            se_last = se_season = n = 0.0
            ae_last = ae_season = 0.0
            for s in range(lo, hi - 104 - pred_len + 1):
                future = z[s + 104 : s + 104 + pred_len]
                last = z[s + 103]
                season = z[s + 104 - 52 : s + 104 - 52 + pred_len]  # the same weeks one year earlier
                se_last += ((future - last) ** 2).sum()
                ae_last += np.abs(future - last).sum()
                se_season += ((future - season) ** 2).sum()
                ae_season += np.abs(future - season).sum()
                n += pred_len
            print(f"co2 pred_len {pred_len} {split}: naive last value mse {se_last / n:.4f} mae {ae_last / n:.4f}; "
                  f"seasonal naive (52 weeks) mse {se_season / n:.4f} mae {ae_season / n:.4f}; "
                  f"test max {z[b1[2] + 104:].max():+.2f} train sd")

    # text: a compressor's bits per byte on the test split, alone and after the training text
    task = LanguageModel(files=str(out / "python-help"), level="byte")
    train, test = bytes(task.stream("train")), bytes(task.stream("test"))
    for name, compress in (("gzip -9", lambda b: gzip.compress(b, 9)), ("bz2 -9", lambda b: bz2.compress(b, 9)),
                           ("xz -9e", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))):
        alone = 8 * len(compress(test)) / len(test)
        given = 8 * (len(compress(train + test)) - len(compress(train))) / len(test)
        print(f"python-help test ({len(test)} bytes): {name} {alone:.3f} bits/byte alone, {given:.3f} given the "
              f"training text ({len(train)} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("export", "baselines"))
    parser.add_argument("--out", type=Path, default=None, help="folder of the files (default $SSMKIT_DATA/own)")
    args = parser.parse_args()
    out = args.out or default_out()
    (export if args.what == "export" else baselines)(out)


if __name__ == "__main__":
    main()
