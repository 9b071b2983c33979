"""Sequential image tasks read MNIST idx and CIFAR-10 python batches written here as torchvision lays them out."""
import pickle
import struct

import numpy as np
import pytest
import torch

from ssmkit.errors import DataError
from ssmkit.tasks.images import LraImage, PSMnist, SCifar, SMnist


def write_mnist(root, n=10):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 2051, n, 28, 28) + imgs.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 2049, n) + labels.tobytes())
    return imgs


def write_cifar(root, n=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(range(n)), "batch_label": name}, f)
    return data


def test_mnist_and_permutation(tmp_path):
    imgs = write_mnist(tmp_path)
    task = SMnist(data_dir=str(tmp_path), val_fraction=0.0)
    x, y = task.dataset("test")[3]
    assert x.shape == (784, 1) and int(y) == 3
    assert torch.allclose(x[:, 0], (torch.tensor(imgs[3].reshape(-1) / 255.0, dtype=torch.float32) - 0.1307) / 0.3081)
    p = PSMnist(permutation_seed=7, data_dir=str(tmp_path), val_fraction=0.0)
    xp, _ = p.dataset("test")[3]
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(7))
    assert torch.equal(xp, x[perm]) and not torch.equal(xp, x)
    assert torch.equal(PSMnist(permutation_seed=7).permutation, perm)
    parts = [len(SMnist(data_dir=str(tmp_path), val_fraction=0.2).dataset(s)) for s in ("train", "val")]
    assert parts == [8, 2]


def test_cifar_color_gray_and_augment(tmp_path):
    data = write_cifar(tmp_path)
    img = data[2].reshape(3, 32, 32).transpose(1, 2, 0) / 255.0  # (32, 32, 3)
    x, y = SCifar(data_dir=str(tmp_path)).dataset("test")[2]
    assert x.shape == (1024, 3) and int(y) == 2
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    assert np.allclose(x.numpy(), ((img - mean) / std).reshape(1024, 3), atol=1e-5)
    g, _ = LraImage(data_dir=str(tmp_path)).dataset("test")[2]
    gray = img @ np.array([0.299, 0.587, 0.114])
    assert g.shape == (1024, 1) and np.allclose(g[:, 0].numpy(), ((gray - 122.6 / 255) / (61.0 / 255)).reshape(-1), atol=1e-4)
    aug = SCifar(data_dir=str(tmp_path), augment=True, val_fraction=0.0).dataset("train", seed=3)
    xa, _ = aug[0]
    assert xa.shape == (1024, 3)
    assert len(SCifar(data_dir=str(tmp_path)).dataset("train")) == 18  # 20 minus 10% validation


def test_missing_corrupt_and_unsafe(tmp_path):
    with pytest.raises(DataError, match=r"MNIST/raw/train-images-idx3-ubyte.*--download"):
        SMnist(data_dir=str(tmp_path)).dataset("train")
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x99junk")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: not a valid MNIST idx file"):
        SMnist(data_dir=str(tmp_path)).dataset("test")
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(DataError, match=r"test_batch: not a valid CIFAR-10 batch .*refusing to load builtins.print"):
        SCifar(data_dir=str(tmp_path)).dataset("test")
    with pytest.raises(ValueError, match="grayscale"):
        SCifar(grayscale="yes")
