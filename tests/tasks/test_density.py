"""Image density tasks read torchvision's MNIST/CIFAR files written here; bits/dim against a hand computation."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_images import write_cifar, write_mnist

from ssmkit.errors import DataError
from ssmkit.tasks.density import CifarDensity, MnistDensity


def test_cifar_pixels_row_major_rgb_shifted_behind_start(tmp_path):
    data = write_cifar(tmp_path)
    task = CifarDensity(data_dir=str(tmp_path), val_fraction=0.0)
    assert task.seq_len == 3072 and task.vocab_size == task.d_input == task.d_output == 256
    assert task.generative and task.pool is None and task.encoder == "embedding" and task.main_metric == "bits_per_dim"
    x, y = task.dataset("test")[2]
    img = data[2].reshape(3, 32, 32).transpose(1, 2, 0)  # CIFAR rows are channel planes; we read pixel by pixel
    assert y.tolist() == img.reshape(-1).tolist()
    assert x[0] == 0 and torch.equal(x[1:], y[:-1])
    assert y[:3].tolist() == img[0, 0].tolist()  # r, g, b of the first pixel
    # the same train/val split as the classification task
    split = CifarDensity(data_dir=str(tmp_path), val_fraction=0.25)
    assert [len(split.dataset(s)) for s in ("train", "val")] == [15, 5]


def test_mnist_density(tmp_path):
    imgs = write_mnist(tmp_path)
    task = MnistDensity(data_dir=str(tmp_path), val_fraction=0.0)
    x, y = task.dataset("test")[4]
    assert task.seq_len == 784 and y.tolist() == imgs[4].reshape(-1).tolist() and torch.equal(x[1:], y[:-1])


def test_bits_per_dim_by_hand(tmp_path):
    task = MnistDensity(data_dir=str(tmp_path))
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 256, generator=g) * 3
    y = torch.randint(0, 256, (3, 5), generator=g)
    total = 0.0
    for b in range(3):
        for t in range(5):
            row = [float(v) for v in out[b, t]]
            m = max(row)
            total += -(row[int(y[b, t])] - m - math.log(sum(math.exp(v - m) for v in row)))
    stats = task.metric_stats(out, y)
    metrics = task.compute_metrics({k: v.sum(0) for k, v in stats.items()})
    assert abs(metrics["bits_per_dim"] - total / 15 / math.log(2)) < 1e-5
    assert abs(metrics["loss"] - total / 15) < 1e-5 and abs(float(task.loss(out, y)) - total / 15) < 1e-5
    # a uniform model scores exactly 8 bits per dimension
    uniform = task.compute_metrics(task.metric_stats(torch.zeros(3, 5, 256), y))
    assert abs(uniform["bits_per_dim"] - 8.0) < 1e-6


def test_prompts_and_png_grid(tmp_path):
    data = write_cifar(tmp_path)
    task = CifarDensity(data_dir=str(tmp_path))
    p = task.prompts(2, seed=0)
    assert p.shape == (2, 1 + 16 * 32 * 3) and (p[:, 0] == 0).all()
    tests = [data[i].reshape(3, 32, 32).transpose(1, 2, 0) for i in range(4)]
    for row in p:  # the top half of a test image
        assert any(row[1:].tolist() == t[:16].reshape(-1).tolist() for t in tests)
    samples = torch.cat([p, torch.randint(0, 256, (2, 1536))], 1)  # start + 3072 pixels
    (path,) = task.save_samples(samples, tmp_path / "out", prompt_len=p.shape[1])
    grid = np.asarray(Image.open(path))
    assert grid.shape == (66, 66, 3)
    sample1 = samples[1, 1:].numpy().reshape(32, 32, 3)
    assert np.array_equal(grid[34:, 34:], sample1)  # second row: the full samples
    assert np.array_equal(grid[:16, 34:], sample1[:16]) and (grid[16:32, 34:] == 0).all()  # first row: prompts only


def test_check_data_names_download(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_1.*--download"):
        CifarDensity(data_dir=str(tmp_path)).check_data()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*--download"):
        MnistDensity(data_dir=str(tmp_path)).check_data()


def test_generate_completes_images_into_a_png(tmp_path, monkeypatch):
    from test_lm import train_and_generate

    write_cifar(tmp_path / "data")
    result = train_and_generate(tmp_path, monkeypatch, {"name": "cifar-density"}, "--num-samples", "2",
                                "--max-new-tokens", "12", "--out", str(tmp_path / "png"))
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(tmp_path / "png" / "samples.png"))
    assert grid.shape == (66, 66, 3)
    assert (grid[16, :32] == 0).all() and (grid[16 + 34, :4] != 0).any()  # row 16: only generated pixels (12 subpixels)
