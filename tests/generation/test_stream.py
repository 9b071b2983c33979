"""Stream: an input fed chunk by chunk (random sizes, including 1) gives the outputs of one full forward."""
import pytest
import torch
from generation_models import BACKBONES, STEP_KERNELS, V, make_model

from ssmkit import SequenceModel, Stream
from ssmkit.errors import UserError

CASES = [(k, b) for b in BACKBONES for k in STEP_KERNELS]
L = 41


def random_chunks(total: int, seed: int) -> list[int]:
    """Chunk sizes summing to ``total``: ones, small and large ones, in a random order."""
    g = torch.Generator().manual_seed(seed)
    sizes = [1, 1, 2, 1, 13]
    while sum(sizes) < total:
        sizes.append(int(torch.randint(1, 9, (1,), generator=g)))
    sizes[-1] -= sum(sizes) - total
    return [sizes[i] for i in torch.randperm(len(sizes), generator=g).tolist() if sizes[i] > 0]


def feed(stream, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    outs, i = [], 0
    for n in sizes:
        outs.append(stream(x[:, i:i + n]))
        i += n
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("kernel,backbone", CASES, ids=[f"{b}-{k}" for k, b in CASES])
def test_chunks_of_random_sizes_equal_the_full_forward(kernel, backbone):
    model = make_model(kernel, backbone)
    x = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(2))
    full = model(x)
    sizes = random_chunks(L, seed=len(kernel))
    assert 1 in sizes and max(sizes) > 8
    torch.testing.assert_close(feed(Stream(model), x, sizes), full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(feed(Stream(model), x, [1] * L), full, rtol=1e-9, atol=1e-9)  # all steps


def test_features_stream_too_and_reset_starts_over():
    torch.manual_seed(0)
    model = SequenceModel(3, 2, d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8), pool=None).double().eval()
    x = torch.randn(4, 30, 3, dtype=torch.float64)
    stream = Stream(model)
    torch.testing.assert_close(feed(stream, x, [7, 1, 22]), model(x), rtol=1e-9, atol=1e-9)
    assert stream.position == 30
    assert stream(x[:, :0]).shape == (4, 0, 2) and stream.position == 30  # an empty chunk changes nothing
    with pytest.raises(UserError, match="carries 4 sequences, got a chunk of 1"):
        stream(x[:1, :3])
    stream.reset()
    torch.testing.assert_close(feed(stream, x[:1], [5, 25]), model(x[:1]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mixer,match", [
    (dict(name="sgconv", l_max=32, kernel_dim=4), "mixer 'sgconv'"),
    (dict(name="s4d", bidirectional=True), "bidirectional mixer sees the future"),
])
def test_mixers_without_a_recurrence_cannot_stream(mixer, match):
    model = SequenceModel(V, V, d_model=8, n_layers=1, mixer=mixer, pool=None, encoder="embedding")
    with pytest.raises(UserError, match=match) as e:
        Stream(model)
    assert str(e.value).startswith("streaming needs a recurrent step") and "\n" not in str(e.value)


def test_a_pooling_model_cannot_stream():
    with pytest.raises(UserError, match="classification model"):
        Stream(SequenceModel(V, 3, d_model=8, n_layers=1, pool="last", encoder="embedding"))
