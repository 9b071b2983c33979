"""Image density estimation: pixels as 256-way categorical sequences (``cifar-density``, ``mnist-density``).

An image is read row-major with its channels interleaved, as the S4 paper's CIFAR density model: CIFAR-10
is 1024 positions x 3 subpixels (r, g, b) = a sequence of 3072 tokens, MNIST 784. Each token is a pixel
value 0..255 (V = 256); the input is the sequence shifted right by one behind the start token 0 (the
reference pads with 0). The metric is bits per dimension: the mean negative log-likelihood per subpixel
in bits.

The files and splits are those of the classification tasks (``tasks/images.py``: torchvision's MNIST idx
files and CIFAR-10 python batches under ``$SSMKIT_DATA``, validation a fixed ``val_fraction`` of the training
set); ``download: true`` fetches them (``ssmkit data download mnist`` / ``cifar10``, ``tasks/download.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssmkit.tasks._shared import check_split
from ssmkit.tasks.base import TASKS
from ssmkit.tasks.generative import GenerativeTask, shift_right
from ssmkit.tasks.images import SCifar, SMnist


class _PixelDataset(torch.utils.data.Dataset):
    """uint8 images (N, H, W, C) -> (x, y): the H W C pixel values, shifted behind the start token."""

    def __init__(self, images: np.ndarray, start: int):
        self.images, self.start = images, start

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return shift_right(torch.from_numpy(self.images[i].reshape(-1).astype(np.int64)), self.start)


class _Density(GenerativeTask):
    vocab_size = d_input = d_output = 256
    start_token = 0
    bits_name = "bits_per_dim"
    source_cls: type = SMnist
    shape: tuple[int, int, int] = (28, 28, 1)

    def __init__(self, download: bool = False, val_fraction: float = 0.1, data_dir: str | None = None):
        self.source = self.source_cls(download=download, val_fraction=val_fraction, data_dir=data_dir)
        self.seq_len = int(np.prod(self.shape))

    def check_data(self) -> None:
        self.source.check_data()

    def validation_missing(self) -> str | None:
        return self.source.validation_missing()

    def images(self, split: str) -> np.ndarray:
        """The split's uint8 images (N, H, W, C), split exactly as the classification task splits them."""
        check_split(split)
        if split == "val" and not self.has_validation:
            raise self.no_validation_error()
        return self.source.dataset(split).images

    def dataset(self, split: str, seed: int = 0) -> _PixelDataset:
        return _PixelDataset(self.images(split), self.start_token)

    # --- generation hooks ---
    @property
    def prompt_length(self) -> int:
        """The start token and the top half of the image."""
        h, w, c = self.shape
        return 1 + (h // 2) * w * c

    def prompts(self, n: int, seed: int = 0) -> torch.Tensor:
        images = self.images("test")
        rows = [self.dataset("test")[i][0][: self.prompt_length] for i in self._pick(len(images), n, seed)]
        return torch.stack(rows)

    def to_images(self, samples: torch.Tensor) -> np.ndarray:
        """(n, L') tokens that begin with the start token -> (n, H, W, C) uint8; missing pixels are 0."""
        n, L = samples.shape[0], self.seq_len
        flat = np.zeros((n, L), dtype=np.uint8)
        body = samples[:, 1: L + 1].clamp(0, 255).to(torch.uint8).cpu().numpy()
        flat[:, : body.shape[1]] = body
        return flat.reshape(n, *self.shape)

    def save_samples(self, samples: torch.Tensor, out: Path, prompt_len: int) -> list[Path]:
        """One PNG, ``samples.png``: a row of the prompts (the pixels after them left black) above a row of
        the samples, one column per sample, 2-pixel gaps."""
        from PIL import Image

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        prompts = samples.clone()
        prompts[:, prompt_len:] = 0
        grid_rows = [self.to_images(prompts), self.to_images(samples)]
        h, w, c = self.shape
        n, gap = samples.shape[0], 2
        grid = np.full((2 * h + gap, n * (w + gap) - gap, c), 255, dtype=np.uint8)
        for r, imgs in enumerate(grid_rows):
            for i, img in enumerate(imgs):
                grid[r * (h + gap): r * (h + gap) + h, i * (w + gap): i * (w + gap) + w] = img
        path = out / "samples.png"
        Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
        return [path]


@TASKS.register("mnist-density", description="MNIST density estimation: 784 pixels as 256-way tokens, bits/dim")
class MnistDensity(_Density):
    name = "mnist-density"
    source_cls = SMnist
    shape = (28, 28, 1)


@TASKS.register("cifar-density", description="CIFAR-10 density estimation: 3072 subpixels (1024 x RGB) as 256-way tokens, bits/dim")
class CifarDensity(_Density):
    name = "cifar-density"
    source_cls = SCifar
    shape = (32, 32, 3)
