"""Sequential images: sMNIST, psMNIST, sCIFAR (3-channel or grayscale) and LRA-Image.

Pixels are read row-major as a sequence: MNIST L=784 with 1 feature, CIFAR L=1024 with 3 features (or 1 in
grayscale; LRA-Image is grayscale CIFAR-10). Files are the ones torchvision downloads, in the same places
under ``$SSMKIT_DATA``: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` and
``cifar-10-batches-py/{data_batch_1..5,test_batch}``. We read them ourselves (idx arrays; CIFAR pickles
through an unpickler that only admits numpy arrays, so a data file never runs code). ``ssmkit data download mnist``
/ ``cifar10`` fetches them (``tasks/download.py``), as do ``ssmkit train --download`` and the task option
``download: true``.
Validation is a fixed 10% (``val_fraction``) of the official training set, split with seed 42. ``val_fraction: 0``
means no validation split (never the test set in its place): the loop then keeps the last step as ``best``.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from ssmkit.errors import DataError
from ssmkit.tasks._shared import ClassificationTask, check_fraction, check_split, require_files, split_indices
from ssmkit.tasks.base import TASKS, data_root
from ssmkit.tasks.download import download, fetch_hint

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL/torchvision Grayscale
LRA_GRAY_MEAN, LRA_GRAY_STD = 122.6 / 255.0, 61.0 / 255.0  # the S4 LRA-Image normalisation


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An MNIST idx file: big-endian magic, dimensions, then uint8 data."""
    try:
        raw = path.read_bytes()
        got, *dims = struct.unpack(f">{1 + ndim}i", raw[: 4 * (1 + ndim)])
        if got != magic:
            raise ValueError(f"magic number {got}, expected {magic}")
        data = np.frombuffer(raw, np.uint8, offset=4 * (1 + ndim))
        return data.reshape(dims)
    except (ValueError, struct.error) as e:
        raise DataError(f"{path}: not a valid MNIST idx file ({e}); fetch it again: `ssmkit data download mnist --force`") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 python batch -> images (N, 32, 32, 3) uint8, labels (N,)."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(d["labels"], dtype=np.int64)
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} images but {len(labels)} labels")
    except Exception as e:  # unpickling raises many types for broken files
        raise DataError(f"{path}: not a valid CIFAR-10 batch ({type(e).__name__}: {e}); fetch it again: "
                        "`ssmkit data download cifar10 --force`") from None
    return data, labels


class _ImageDataset(torch.utils.data.Dataset):
    """Images (N, H, W, C) uint8 -> ((H W, C) normalised float sequence, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, task, train: bool, seed: int):
        self.images, self.labels, self.task, self.train = images, labels, task, train
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)  # (H, W, C)
        if self.train and self.task.augment:
            img = self.task.augment_image(img, self.gen)
        x = self.task.to_sequence(img)
        return x, torch.tensor(int(self.labels[i]))


class _SequentialImage(ClassificationTask):
    encoder = "linear"
    augment = False
    pad_crop = 4
    flip = False

    def _setup(self, download: bool, augment: bool, val_fraction: float, data_dir: str | None):
        for name, v in (("download", download), ("augment", augment)):
            if not isinstance(v, bool):
                raise ValueError(f"task option {name}={v!r} must be true or false")
        check_fraction("val_fraction", val_fraction)
        self.download, self.augment, self.val_fraction = download, augment, val_fraction
        self.root = Path(data_dir) if data_dir else data_root()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def augment_image(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop with zero padding (``pad_crop`` pixels) and, for CIFAR, a random horizontal flip."""
        h, w, _ = img.shape
        p = self.pad_crop
        padded = torch.nn.functional.pad(img, (0, 0, p, p, p, p))  # (H+2p, W+2p, C)
        r, c = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=gen))
        img = padded[r:r + h, c:c + w]
        if self.flip and torch.rand((), generator=gen) < 0.5:
            img = img.flip(1)
        return img

    def validation_missing(self) -> str | None:
        return "task.val_fraction is 0: no training images are held out" if self.val_fraction == 0 else None

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        if split == "val" and self.val_fraction == 0:
            raise self.no_validation_error()
        if self.download:
            self.fetch()
        self.check_data()
        source = "test" if split == "test" else "train"
        if source not in self._arrays:
            self._arrays[source] = self.load(source)
        images, labels = self._arrays[source]
        if split != "test" and self.val_fraction > 0:
            train_idx, val_idx = split_indices(len(labels), (1 - self.val_fraction, self.val_fraction), seed=42)
            idx = np.array(sorted(train_idx if split == "train" else val_idx))
            images, labels = images[idx], labels[idx]
        return _ImageDataset(images, labels, self, train=split == "train", seed=seed)


class _Mnist(_SequentialImage):
    d_input, d_output = 1, 10

    def files(self) -> list[Path]:
        return [self.root / "MNIST" / "raw" / f for pair in MNIST_FILES.values() for f in pair]

    def check_data(self) -> None:
        require_files(self.files(), f"{self.name} data (MNIST)", fetch_hint("mnist", self.root))

    def fetch(self) -> None:
        if any(not p.exists() for p in self.files()):
            download("mnist", self.root)

    def load(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        img_file, lab_file = (self.root / "MNIST" / "raw" / f for f in MNIST_FILES[source])
        images = read_idx(img_file, 2051, 3)
        labels = read_idx(lab_file, 2049, 1).astype(np.int64)
        if len(images) != len(labels) or images.shape[1:] != (28, 28):
            raise DataError(f"{img_file}: {images.shape} images do not match {len(labels)} labels of 28x28 digits")
        return images[..., None], labels  # (N, 28, 28, 1)

    def to_sequence(self, img: torch.Tensor) -> torch.Tensor:
        x = ((img - MNIST_MEAN) / MNIST_STD).reshape(-1, 1)  # (784, 1)
        return x if self.permutation is None else x[self.permutation]


@TASKS.register("smnist", description="Sequential MNIST: 784 pixels one at a time, 10 classes")
class SMnist(_Mnist):
    name = "smnist"
    permutation = None

    def __init__(self, download: bool = False, augment: bool = False, val_fraction: float = 0.1,
                 data_dir: str | None = None):
        self._setup(download, augment, val_fraction, data_dir)


@TASKS.register("psmnist", description="Permuted sequential MNIST: a fixed pixel permutation drawn from permutation_seed")
class PSMnist(_Mnist):
    """The permutation is ``torch.randperm(784)`` from ``permutation_seed`` (kept in the recipe, so a run's
    saved recipe reproduces it exactly)."""

    name = "psmnist"

    def __init__(self, permutation_seed: int = 0, download: bool = False, augment: bool = False,
                 val_fraction: float = 0.1, data_dir: str | None = None):
        if not isinstance(permutation_seed, int) or isinstance(permutation_seed, bool):
            raise ValueError(f"task option permutation_seed={permutation_seed!r} must be an integer")
        self._setup(download, augment, val_fraction, data_dir)
        self.permutation_seed = permutation_seed
        self.permutation = torch.randperm(784, generator=torch.Generator().manual_seed(permutation_seed))


class _Cifar(_SequentialImage):
    d_output = 10
    flip = True

    def files(self) -> list[Path]:
        return [self.root / "cifar-10-batches-py" / f for fs in CIFAR_FILES.values() for f in fs]

    def check_data(self) -> None:
        require_files(self.files(), f"{self.name} data (CIFAR-10)", fetch_hint("cifar10", self.root))

    def fetch(self) -> None:
        if any(not p.exists() for p in self.files()):
            download("cifar10", self.root)

    def load(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_batch(self.root / "cifar-10-batches-py" / f) for f in CIFAR_FILES[source]]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def to_sequence(self, img: torch.Tensor) -> torch.Tensor:
        if self.grayscale:
            gray = img @ torch.tensor(GRAY_WEIGHTS)  # (32, 32)
            return ((gray - LRA_GRAY_MEAN) / LRA_GRAY_STD).reshape(-1, 1)  # (1024, 1)
        return ((img - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).reshape(-1, 3)  # (1024, 3)


@TASKS.register("scifar", description="Sequential CIFAR-10: 1024 pixels, 3 channels (grayscale=true for 1)")
class SCifar(_Cifar):
    name = "scifar"

    def __init__(self, grayscale: bool = False, download: bool = False, augment: bool = False,
                 val_fraction: float = 0.1, data_dir: str | None = None):
        if not isinstance(grayscale, bool):
            raise ValueError(f"task option grayscale={grayscale!r} must be true or false")
        self._setup(download, augment, val_fraction, data_dir)
        self.grayscale = grayscale
        self.d_input = 1 if grayscale else 3


@TASKS.register("lra-image", description="LRA Image: grayscale CIFAR-10 as 1024 pixels, 10 classes")
class LraImage(_Cifar):
    name = "lra-image"
    grayscale = True
    d_input = 1

    def __init__(self, download: bool = False, augment: bool = False, val_fraction: float = 0.1,
                 data_dir: str | None = None):
        self._setup(download, augment, val_fraction, data_dir)
