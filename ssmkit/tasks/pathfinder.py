"""Pathfinder (LRA), Path-X and PathfinderSegmentation (DLR paper): a paddle-snake generator, files and tasks.

An image holds two long dashed contours ("snakes" of ``contour_length`` paddles), short distractor snakes
(``contour_length // 3`` paddles) and two round markers at snake tips. Label 1: both markers sit on the
two tips of the same long snake; label 0: one marker on each long snake. The model sees the image as a
row-major pixel sequence (L = resolution^2) and says whether the markers are connected (Pathfinder), or
labels every pixel (PathfinderSegmentation): 0 background/distractor/marker, 1 a long snake that does not
connect the markers, 2 the snake that connects them.

Our generator (not a port of drewlinsley/pathfinder): a snake starts at a random point with a random
heading; each paddle is a straight segment of ``paddle_length`` pixels drawn ``thickness`` wide, turned by
U(-pi/(2 continuity), pi/(2 continuity)) from the previous one and separated from it by a gap of
``margin`` pixels. Paddles may not touch pixels of other snakes within ``max(margin) + 2`` pixels (Chebyshev),
so dashed gaps (<= margin + 1) are always shorter than the distance between snakes, and no other snake
comes within ``marker_radius + max(margin) + 2`` of a marker. Hence, with a jump allowance of ``max(margin) + 2``,
the class-2 pixels link the two markers exactly when the label is 1. Images are deterministic in
(seed, batch index) whatever the number of worker processes.

Files (the LRA release layout, so official data reads the same way):
``<data>/pathfinder{R}/curv_contour_length_{C}/imgs/{batch}/sample_{i}.png``, ``metadata/{batch}.npy``
(text lines ``imgs/{batch} sample_{i}.png {i} {label} ...``), and for segmentation
``labels/{batch}/sample_{i}.png`` (pixel values 0, 1, 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssmkit.errors import DataError
from ssmkit.tasks._shared import (
    ClassificationTask,
    check_choice,
    check_positive,
    check_split,
    parallel_map,
    read_text,
    split_indices,
)
from ssmkit.tasks.base import TASKS, Task, data_root
from ssmkit.tasks.download import LRA_PATHFINDER_RESOLUTIONS, fetch_hint

RESOLUTIONS = (32, 64, 128, 256, 512)
DIFFICULTIES = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}


@dataclass(frozen=True)
class SnakeParams:
    """Generator parameters per resolution.

    128/256/512 follow the DLR paper's PathfinderSegmentation settings (contour length, paddle length,
    margin, thickness, continuity, marker radius, distractors, seed distance); 32 and 64 are our scaled-down
    choices, as the reference publishes none.
    """

    contour_length: int
    paddle_length: float
    margin: tuple[int, ...]
    thickness: float
    continuity: float
    marker_radius: float
    n_distractors: int
    seed_distance: float
    contrast: float = 0.9


PARAMS = {
    32: SnakeParams(14, 1.5, (0,), 1.0, 1.8, 1.0, 2, 6.0),
    64: SnakeParams(14, 3.0, (1, 2), 1.0, 1.8, 1.5, 6, 12.0),
    128: SnakeParams(14, 5.0, (2, 3), 1.5, 1.8, 2.1, 64 // (14 // 3), 22.0),
    256: SnakeParams(16, 8.0, (4,), 2.0, 2.2, 4.2, 16, 30.0),
    512: SnakeParams(12, 22.0, (7,), 6.0, 2.5, 9.0, 18, 40.0),
}


def _segment_pixels(p: np.ndarray, q: np.ndarray, radius: float, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels (rows, cols) whose centres lie within ``radius`` of segment p-q (points as (row, col)); None if outside."""
    lo = np.floor(np.minimum(p, q) - radius).astype(int)
    hi = np.ceil(np.maximum(p, q) + radius).astype(int)
    if lo.min() < 0 or hi.max() >= size:
        return None
    rr, cc = np.mgrid[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1]
    d = q - p
    t = np.clip(((rr - p[0]) * d[0] + (cc - p[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
    dist2 = (rr - p[0] - t * d[0]) ** 2 + (cc - p[1] - t * d[1]) ** 2
    keep = dist2 <= radius * radius
    return rr[keep], cc[keep]


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation by a (2k+1)^2 square (Chebyshev distance <= k), separable."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for s in range(1, k + 1):
            if axis == 0:
                out[s:] |= src[:-s]
                out[:-s] |= src[s:]
            else:
                out[:, s:] |= src[:, :-s]
                out[:, :-s] |= src[:, s:]
    return out


@dataclass
class _Snake:
    mask: np.ndarray  # (R, R) bool
    tips: tuple[np.ndarray, np.ndarray]


def _grow_snake(rng: np.random.Generator, n: int, p: SnakeParams, size: int, blocked: np.ndarray,
                margin: int, border: float) -> _Snake | None:
    radius = max(p.thickness / 2, 0.71)  # 0.71: a line always covers the pixels it crosses (8-connected)
    max_turn = math.pi / (2 * p.continuity)
    for _ in range(30):
        pos = rng.uniform(border, size - 1 - border, size=2)
        start = pos.copy()
        heading = rng.uniform(0, 2 * math.pi)
        own_old = np.zeros((size, size), bool)  # own pixels before the previous paddle, dilated by 1
        prev: tuple[np.ndarray, np.ndarray] | None = None
        mask = np.zeros((size, size), bool)
        end = pos
        for i in range(n):
            placed = None
            for _ in range(20):
                h = heading + (rng.uniform(-max_turn, max_turn) if i > 0 else 0.0)
                step = np.array([math.sin(h), math.cos(h)])
                q = pos + p.paddle_length * step
                if q.min() < border or q.max() > size - 1 - border:
                    continue
                pix = _segment_pixels(pos, q, radius, size)
                if pix is None or blocked[pix].any() or own_old[pix].any():
                    continue
                placed = (h, q, pix, step)
                break
            if placed is None:
                break
            heading, end, pix, step = placed
            if prev is not None:
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        own_old[np.clip(prev[0] + dr, 0, size - 1), np.clip(prev[1] + dc, 0, size - 1)] = True
            prev = pix
            mask[pix] = True
            pos = end + (margin + 1) * step
        else:
            return _Snake(mask, (start, end))
    return None


def _disc(center: np.ndarray, radius: float, size: int) -> np.ndarray:
    rr, cc = np.mgrid[0:size, 0:size]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius * radius


def make_image(rng: np.random.Generator, size: int, label: int, params: SnakeParams | None = None):
    """One sample: image (R, R) uint8, segmentation (R, R) uint8 in {0, 1, 2}, markers (2, 2) as (row, col)."""
    p = params or PARAMS[size]
    border = p.marker_radius + 1
    for _ in range(200):
        margin = int(rng.choice(p.margin))
        clearance = max(p.margin) + 2
        blocked = np.zeros((size, size), bool)
        snakes = []
        for n in (p.contour_length, p.contour_length):
            s = _grow_snake(rng, n, p, size, blocked, margin, border)
            if s is None:
                break
            snakes.append(s)
            blocked |= _dilate(s.mask, clearance)
        if len(snakes) < 2:
            continue
        a, b = snakes
        distractors = []
        for _ in range(p.n_distractors):
            s = _grow_snake(rng, max(p.contour_length // 3, 1), p, size, blocked, margin, border)
            if s is not None:
                distractors.append(s)
                blocked |= _dilate(s.mask, clearance)
        first = a.tips[int(rng.integers(2))]
        if label == 1:
            second = a.tips[1] if first is a.tips[0] else a.tips[0]
        else:
            second = b.tips[int(rng.integers(2))]
        markers = np.stack([first, second])
        if np.linalg.norm(first - second) < p.seed_distance:
            continue
        # No snake other than the marked one(s) may come near a marker.
        reach = p.marker_radius + clearance
        near = [_disc(m, reach, size) for m in markers]
        others_a = b.mask | np.any([d.mask for d in distractors] or [np.zeros_like(a.mask)], axis=0)
        others_b = a.mask | np.any([d.mask for d in distractors] or [np.zeros_like(a.mask)], axis=0)
        if label == 1 and ((near[0] & others_a).any() or (near[1] & others_a).any()):
            continue
        if label == 0 and ((near[0] & others_a).any() or (near[1] & others_b).any()):
            continue
        img = np.zeros((size, size), np.float32)
        for s in [a, b, *distractors]:
            img[s.mask] = p.contrast
        seg = np.zeros((size, size), np.uint8)
        if label == 1:
            seg[b.mask], seg[a.mask] = 1, 2
        else:
            seg[a.mask | b.mask] = 1
        for m in markers:
            disc = _disc(m, p.marker_radius, size)
            img[disc] = p.contrast
            seg[disc] = 0
        return (img * 255).round().astype(np.uint8), seg, markers
    raise RuntimeError(f"could not place the snakes in a {size}x{size} image after 200 tries; parameters {p}")


def _batch_job(args) -> int:
    """Writes one batch folder; returns the number of images (runs in a worker process)."""
    from PIL import Image

    root, size, batch, count, seed, segmentation = args
    rng = np.random.default_rng([seed, batch])
    root = Path(root)
    (root / "imgs" / str(batch)).mkdir(parents=True, exist_ok=True)
    if segmentation:
        (root / "labels" / str(batch)).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        label = int(rng.integers(2))
        img, seg, markers = make_image(rng, size, label)
        name = f"sample_{i}.png"
        Image.fromarray(img, mode="L").save(root / "imgs" / str(batch) / name)
        if segmentation:
            Image.fromarray(seg, mode="L").save(root / "labels" / str(batch) / name)
        m = markers.round(2)
        lines.append(f"imgs/{batch} {name} {i} {label} {m[0, 0]} {m[0, 1]} {m[1, 0]} {m[1, 1]}")
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / f"{batch}.npy").write_text("\n".join(lines) + "\n")
    return count


def dataset_dir(resolution: int, difficulty: str = "hard", root: Path | None = None) -> Path:
    return (root or data_root()) / f"pathfinder{resolution}" / DIFFICULTIES[difficulty]


def generate(n: int, resolution: int = 32, out: Path | None = None, seed: int = 0, segmentation: bool = False,
             workers: int = 1, batch_size: int = 1000) -> Path:
    """Writes ``n`` images (and labels if ``segmentation``) under ``out`` (default: the data root's
    ``pathfinder{R}/curv_contour_length_14``); returns that folder."""
    check_choice("resolution", resolution, RESOLUTIONS)
    check_positive("n", n)
    root = Path(out) if out else dataset_dir(resolution)
    jobs = []
    for batch, start in enumerate(range(0, n, batch_size)):
        jobs.append((str(root), resolution, batch, min(batch_size, n - start), seed, segmentation))
    parallel_map(_batch_job, jobs, workers, f"pathfinder{resolution} images")
    return root


def read_metadata(root: Path) -> list[tuple[Path, int, list[str]]]:
    """(image path, label, all fields) per line of ``root/metadata/*.npy`` (text lines, LRA layout)."""
    files = sorted((root / "metadata").glob("*.npy"), key=lambda f: (len(f.stem), f.stem))
    samples = []
    for f in files:
        for n, line in enumerate(read_text(f).splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                label = int(fields[3])
                assert label in (0, 1)
            except (IndexError, ValueError, AssertionError):
                raise DataError(f"{f}:{n}: expected 'imgs/<batch> sample_<i>.png <i> <label 0|1> ...', got {line!r}") from None
            samples.append((root / fields[0] / fields[1], label, fields))
    return samples


def load_png(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except Exception as e:  # PIL raises many types for broken files
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {e}); delete it or regenerate the data") from None
    if arr.shape != (size, size):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} (task.resolution={size})")
    return arr


class _PathfinderBase:
    def _setup(self, resolution: int, difficulty: str, data_dir: str | None, val_fraction: float, test_fraction: float):
        check_choice("resolution", resolution, RESOLUTIONS)
        check_choice("difficulty", difficulty, tuple(DIFFICULTIES))
        for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < v < 0.5:
                raise ValueError(f"task option {name}={v!r} must be in (0, 0.5)")
        self.resolution, self.difficulty = resolution, difficulty
        self.fractions = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
        self.root = Path(data_dir) if data_dir else dataset_dir(resolution, difficulty)
        self.d_input = 1
        self._samples = None

    def _how(self) -> str:
        seg = "-segmentation" if self.pool is None else ""
        official = (self.root.parent.name == f"pathfinder{self.resolution}"  # the release's layout under a data root
                    and self.resolution in LRA_PATHFINDER_RESOLUTIONS)
        return (f"run `ssmkit data generate pathfinder{seg} --resolution {self.resolution} --out {self.root}`"
                + ("" if seg or not official else ", or fetch the LRA release's images: "
                   + fetch_hint(f"lra-pathfinder{self.resolution}", self.root.parent.parent)))

    def check_data(self) -> None:
        if not any((self.root / "metadata").glob("*.npy")):
            raise DataError(f"Pathfinder data: no metadata/*.npy under {self.root}; {self._how()}")

    def _split(self, split: str) -> list[tuple[Path, int, list[str]]]:
        check_split(split)
        self.check_data()
        if self._samples is None:
            self._samples = read_metadata(self.root)
        parts = split_indices(len(self._samples), self.fractions, seed=42)
        return [self._samples[i] for i in parts[("train", "val", "test").index(split)]]

    def _pixels(self, path: Path) -> torch.Tensor:
        arr = load_png(path, self.resolution)
        x = torch.from_numpy(arr.astype(np.float32) / 255.0)
        return ((x - 0.5) / 0.5).reshape(-1, 1)  # (L, 1), row-major


class _PathfinderDataset(torch.utils.data.Dataset):
    def __init__(self, task, samples, segmentation: bool):
        self.task, self.samples, self.segmentation = task, samples, segmentation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label, _ = self.samples[i]
        x = self.task._pixels(path)
        if not self.segmentation:
            return x, torch.tensor(label)
        lab_path = path.parent.parent.parent / "labels" / path.parent.name / path.name
        if not lab_path.exists():
            raise DataError(f"{lab_path}: segmentation labels missing for {path}; {self.task._how()}")
        seg = load_png(lab_path, self.task.resolution)
        if seg.max() > 2:
            raise DataError(f"{lab_path}: label pixels must be 0, 1 or 2, found {int(seg.max())}")
        return x, torch.from_numpy(seg.astype(np.int64)).reshape(-1)  # (L,)


@TASKS.register("pathfinder", description="LRA Pathfinder: are the two markers connected? resolution 32 (L=1024) .. 256")
class Pathfinder(_PathfinderBase, ClassificationTask):
    """Binary classification of pixel sequences, 80/10/10 split (seed 42) of the metadata lines."""

    name = "pathfinder"

    def __init__(self, resolution: int = 32, difficulty: str = "hard", data_dir: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1):
        self._setup(resolution, difficulty, data_dir, val_fraction, test_fraction)
        self.d_output = 2

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        return _PathfinderDataset(self, self._split(split), segmentation=False)


@TASKS.register("pathx", description="LRA Path-X: Pathfinder at 128x128 (L=16384)")
class PathX(Pathfinder):
    name = "pathx"

    def __init__(self, resolution: int = 128, difficulty: str = "hard", data_dir: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1):
        super().__init__(resolution, difficulty, data_dir, val_fraction, test_fraction)


N_SEG_CLASSES = 3


@TASKS.register("pathfinder-segmentation", description="DLR PathfinderSegmentation: label every pixel 0/1/2, L = 16K/65K/262K")
class PathfinderSegmentation(_PathfinderBase, Task):
    """Per-pixel 3-class output (B, L, 3); class-weighted cross-entropy, macro-F1 and balanced accuracy."""

    name = "pathfinder-segmentation"
    pool = None
    main_metric = "f1_macro"
    main_mode = "max"

    def __init__(self, resolution: int = 128, difficulty: str = "hard", data_dir: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1):
        self._setup(resolution, difficulty, data_dir, val_fraction, test_fraction)
        self.d_output = N_SEG_CLASSES

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        return _PathfinderDataset(self, self._split(split), segmentation=True)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with class weights 1 / (pixels of that class in the batch) (DLR paper)."""
        target = target.flatten()  # (B L,)
        counts = torch.bincount(target, minlength=N_SEG_CLASSES).float()
        weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
        return F.cross_entropy(output.reshape(-1, N_SEG_CLASSES).float(), target, weight=weight)

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = output.argmax(-1)  # (B, L)
        idx = target * N_SEG_CLASSES + pred  # (B, L): true class, predicted class
        conf = F.one_hot(idx, N_SEG_CLASSES**2).sum(1).float()  # (B, 9) per-sample confusion counts
        loss = F.cross_entropy(output.float().transpose(1, 2), target, reduction="none").sum(1)  # (B,)
        return {"confusion": conf, "loss": loss.detach(), "count": torch.full_like(loss, target.shape[1])}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        conf = totals["confusion"]
        conf = conf.sum(0) if conf.dim() == 2 else conf  # (9,): summed over samples (the loop may have done it)
        return {"loss": float(totals["loss"].sum() / totals["count"].sum()),
                **confusion_metrics(conf.reshape(N_SEG_CLASSES, N_SEG_CLASSES))}


def confusion_metrics(conf: torch.Tensor) -> dict[str, float]:
    """Macro-F1 (over classes that occur in truth or prediction, as sklearn) and balanced accuracy
    (mean recall over classes present in the truth) from a (true, predicted) confusion matrix."""
    conf = conf.double()
    tp, true, pred = conf.diag(), conf.sum(1), conf.sum(0)
    seen = (true + pred) > 0
    f1 = 2 * tp / (true + pred).clamp(min=1)
    present = true > 0
    recall = tp / true.clamp(min=1)
    return {"f1_macro": float(f1[seen].mean()) if seen.any() else 0.0,
            "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "accuracy": float(tp.sum() / conf.sum().clamp(min=1))}
