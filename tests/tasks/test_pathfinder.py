"""Pathfinder generator (connectivity checked by an independent flood fill), loaders and segmentation metrics."""
from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

from ssmkit.errors import DataError
from ssmkit.tasks.pathfinder import (
    PARAMS,
    Pathfinder,
    PathfinderSegmentation,
    confusion_metrics,
    generate,
    make_image,
)


def linked(mask, markers, reach, jump):
    """True if pixels of ``mask`` link the two markers, allowing jumps of ``jump`` pixels (Chebyshev)
    over the dashes' gaps; a pixel touches a marker if it lies within ``reach`` of its centre."""
    pts = np.argwhere(mask)
    if len(pts) == 0:
        return False
    near = [np.hypot(*(pts - m).T) <= reach for m in markers]
    seen = np.zeros(len(pts), bool)
    queue = deque(np.flatnonzero(near[0]))
    seen[list(queue)] = True
    while queue:
        i = queue.popleft()
        if near[1][i]:
            return True
        nxt = np.flatnonzero(~seen & (np.abs(pts - pts[i]).max(1) <= jump))
        seen[nxt] = True
        queue.extend(nxt)
    return False


@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_connectivity(size):
    p = PARAMS[size]
    rng = np.random.default_rng(size)
    for label in (1, 0, 1, 0):
        img, seg, markers = make_image(rng, size, label)
        jump, reach = max(p.margin) + 2, p.marker_radius + max(p.margin) + 2
        assert img.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2}
        assert (img[seg > 0] > 0).all()  # labelled pixels are drawn
        if label == 1:
            assert linked(seg == 2, markers, reach, jump)
            assert (seg == 1).any()  # the other long snake
        else:
            assert not (seg == 2).any()
            assert not linked(seg >= 1, markers, reach, jump)
        assert np.linalg.norm(markers[0] - markers[1]) >= p.seed_distance


def test_generate_is_deterministic_and_loads(tmp_path):
    a = generate(6, resolution=32, out=tmp_path / "a", seed=5, segmentation=True, batch_size=4)
    b = generate(6, resolution=32, out=tmp_path / "b", seed=5, segmentation=True, batch_size=4)
    for f in ("imgs/0/sample_0.png", "imgs/1/sample_1.png", "labels/1/sample_1.png", "metadata/1.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    seg = PathfinderSegmentation(resolution=32, data_dir=str(a), val_fraction=0.2, test_fraction=0.2)
    parts = [seg.dataset(s) for s in ("train", "val", "test")]
    assert sum(len(d) for d in parts) == 6
    x, y = parts[0][0]
    assert x.shape == (1024, 1) and y.shape == (1024,) and x.min() >= -1 and x.max() <= 1
    cls = Pathfinder(resolution=32, data_dir=str(a))
    xs, label = cls.dataset("train")[0]
    assert xs.shape == (1024, 1) and int(label) in (0, 1)


def write_official(root, labels, size=32):
    """The LRA layout: imgs/<batch>/sample_<i>.png and metadata/<batch>.npy text lines."""
    (root / "imgs" / "0").mkdir(parents=True)
    (root / "metadata").mkdir()
    lines = []
    for i, label in enumerate(labels):
        Image.fromarray(np.full((size, size), 25 * i, np.uint8)).save(root / "imgs" / "0" / f"sample_{i}.png")
        lines.append(f"imgs/0 sample_{i}.png {i} {label} 14 1.5 1.5")
    (root / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")


def test_official_layout_and_split(tmp_path):
    labels = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    write_official(tmp_path, labels)
    task = Pathfinder(resolution=32, data_dir=str(tmp_path))
    seen = {}
    for s in ("train", "val", "test"):
        ds = task.dataset(s)
        for i in range(len(ds)):
            x, y = ds[i]
            level = round(float((x[0, 0] * 0.5 + 0.5) * 255 / 25))
            seen[level] = int(y)
    assert seen == dict(enumerate(labels))  # every sample exactly once, with its own label


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"no metadata/\*\.npy under .*ssmkit data generate pathfinder --resolution 32"):
        Pathfinder(data_dir=str(tmp_path)).dataset("train")
    write_official(tmp_path, [0, 1])
    bad = tmp_path / "imgs" / "0" / "sample_1.png"
    bad.write_bytes(b"not a png")
    task = Pathfinder(data_dir=str(tmp_path), val_fraction=0.4, test_fraction=0.4)
    samples = [s for split in ("train", "val", "test") for s in task._split(split)]
    with pytest.raises(DataError, match=r"sample_1.png: cannot read this image"):
        for path, *_ in samples:
            task._pixels(path)
    with pytest.raises(ValueError, match="resolution"):
        Pathfinder(resolution=100)


def test_segmentation_loss_and_metrics():
    task = PathfinderSegmentation(resolution=32)
    target = torch.tensor([[0, 0, 0, 0, 1, 2], [0, 0, 0, 1, 1, 0]])
    out = torch.zeros(2, 6, 3)
    pred = torch.tensor([[0, 0, 1, 0, 1, 2], [0, 0, 0, 2, 1, 0]])
    out.scatter_(2, pred[..., None], 1.0)
    # class weights 1/count: counts 8, 3, 1 -> weighted mean over pixels of -log softmax
    logp = torch.log_softmax(out, -1).reshape(-1, 3)
    t = target.flatten()
    w = torch.tensor([1 / 8, 1 / 3, 1.0])[t]
    expected = -(w * logp[torch.arange(12), t]).sum() / w.sum()
    assert torch.allclose(task.loss(out, target), expected)
    stats = task.metric_stats(out, target)
    assert stats["confusion"].shape == (2, 9)
    m = task.compute_metrics({k: v for k, v in stats.items()})
    assert task.compute_metrics({k: v.sum(0) for k, v in stats.items()}) == m  # as the loop sums them
    # by hand: class 0: tp 7 of 8 true, 7 predicted -> f1 14/15; class 1: tp 2, true 3, pred 3 -> 2/3; class 2: tp 1, true 1, pred 2 -> 2/3
    assert m["f1_macro"] == pytest.approx((14 / 15 + 2 / 3 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx((7 / 8 + 2 / 3 + 1) / 3)
    assert confusion_metrics(torch.eye(3))["f1_macro"] == 1.0
