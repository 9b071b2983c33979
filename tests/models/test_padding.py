"""Padding masks: with ``lengths`` each sample's valid outputs are the ones it gets alone.

A bidirectional mixer's anticausal half (and bidirectional attention) would otherwise read the padding
after each sample's end, so a sample's output would depend on how much padding, and which, it got. The
residual block (``ssmkit/models/block.py``) zeroes its mixer's input after each length and the mixer's output
after it. Every registered mixer, both directions where it has them, in a block: random amounts and contents of
padding give the same valid outputs (float64) as the unpadded sample; a whole model on ListOps-like padded token
batches gives the logits of each sample run alone.
"""
import pytest
import torch
from helpers import SMALL_MIXER_OPTIONS as SMALL

from ssmkit.mixers import MIXERS, build_mixer, mixer_parameters
from ssmkit.models import SequenceModel
from ssmkit.models.block import Norm, ResidualBlock
from ssmkit.tasks._shared import token_lengths
from ssmkit.train.loop import forward

H = 4
# Every registered mixer with the contract test's options, and local attention (chunked masks) besides.
MIXER_CASES = [(k, SMALL.get(k, {})) for k in MIXERS.names()] + [("attn", dict(chunk_size=4))]
IDS = [k if not opts or k != "attn" else "attn-local" for k, opts in MIXER_CASES]
# Each with both directions where it has a bidirectional option (the causal-only mixers once).
CASES = [pytest.param(k, opts, b, id=f"{i}-{'bidirectional' if b else 'causal'}")
         for (k, opts), i in zip(MIXER_CASES, IDS) for b in (False, True)
         if not b or "bidirectional" in mixer_parameters(k)]


def make(name, opts, bidirectional, seed=0):
    """A residual block without norm around mixer ``name``: its output minus its input is the masked mixer."""
    torch.manual_seed(seed)
    spec = {"name": name, **opts, **({"bidirectional": True} if bidirectional else {})}
    return ResidualBlock(H, spec, prenorm=True, norm=None).double().eval()


def mixed(block: ResidualBlock, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The block's mixer branch on x (B, H, L) -> (B, H, L): the block's output minus its residual."""
    x = x.transpose(1, 2)
    return (block(x, lengths) - x).transpose(1, 2)


def padded(samples, L, gen):
    """Samples (H, n_i) right-padded with random content to (B, H, L)."""
    x = torch.randn(len(samples), H, L, dtype=torch.float64, generator=gen) * 3
    for i, s in enumerate(samples):
        x[i, :, : s.shape[-1]] = s
    return x


@pytest.mark.parametrize("name,opts,bidirectional", CASES)
def test_valid_outputs_ignore_padding_amount_and_content(name, opts, bidirectional):
    block = make(name, opts, bidirectional)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 13, 1, 20])
    samples = [torch.randn(H, int(n), dtype=torch.float64, generator=gen) for n in lengths]
    with torch.no_grad():
        alone = [mixed(block, s.unsqueeze(0))[0] for s in samples]
        for L in (20, 23, 31):  # different amounts of padding, each with new random content
            x = padded(samples, L, gen)
            y = mixed(block, x, lengths)
            for i, n in enumerate(lengths.tolist()):
                torch.testing.assert_close(y[i, :, :n], alone[i], rtol=1e-9, atol=1e-10)
                assert (y[i, :, n:] == 0).all(), "the output after a sample's length must be zero"
        if bidirectional:  # the test can fail: without the mask the padding leaks into the valid outputs
            leak = mixed(block, x)[0, :, : lengths[0]] - alone[0]
            assert leak.abs().max() > 1e-6


@pytest.mark.parametrize("name,opts", MIXER_CASES, ids=IDS)
def test_lengths_none_or_full_is_exactly_the_unmasked_path(name, opts):
    block = make(name, opts, bidirectional="bidirectional" in mixer_parameters(name))
    x = torch.randn(2, H, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(mixed(block, x, torch.tensor([12, 12])), mixed(block, x))


def test_state_with_lengths_is_refused():
    x = torch.randn(2, H, 8, dtype=torch.float64)
    for name in ("s4d", "attn"):
        with pytest.raises(ValueError, match="lengths cannot be combined with state"):
            build_mixer(H, {"name": name}).double()(x, lengths=torch.tensor([3, 8]), return_state=True)
    model = SequenceModel(3, 2, d_model=H, n_layers=1, mixer=dict(name="s4d"), pool=None)
    with pytest.raises(ValueError, match="lengths cannot be combined with state"):
        model(torch.randn(2, 8, 3), lengths=torch.tensor([3, 8]), return_state=True)


def test_batch_norm_statistics_come_from_valid_positions_only():
    torch.manual_seed(0)
    norm, ref = Norm("batch", H).double().train(), torch.nn.BatchNorm1d(H).double().train()
    x = torch.randn(3, 10, H, dtype=torch.float64)
    lengths = torch.tensor([10, 4, 7])
    mask = torch.arange(10) < lengths[:, None]
    x[~mask] = 1e3  # padding this large would dominate any statistic that read it
    y = norm(x, mask)
    valid = torch.cat([x[i, :n] for i, n in enumerate(lengths.tolist())])  # (N_valid, H)
    torch.testing.assert_close(y[mask], ref(valid))
    torch.testing.assert_close(norm.norm.running_mean, ref.running_mean)
    torch.testing.assert_close(norm.norm.running_var, ref.running_var)
    assert torch.equal(y[~mask], x[~mask])


def listops_like(gen, lengths, L, vocab=18):
    """Token ids 1..vocab-1 right-padded with 0 (the LRA text/ListOps layout)."""
    x = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(1, vocab, (n,), generator=gen)
    return x


class _PaddedTask:
    lengths = staticmethod(token_lengths)


@pytest.mark.parametrize(
    "name,norm,prenorm,pool",
    [("s4d", "layer", True, "mean"), ("s4", "batch", False, "mean"), ("attn", "layer", True, "last"),
     ("sgconv", "batch", True, "mean")],
)
def test_model_logits_on_padded_batches_equal_each_sample_alone(name, norm, prenorm, pool):
    torch.manual_seed(0)
    mixer = dict(name=name, bidirectional=True, **SMALL.get(name, {}))
    model = SequenceModel(18, 10, d_model=8, n_layers=2, mixer=mixer, norm=norm, prenorm=prenorm, pool=pool,
                          encoder="embedding", mlp_ratio=2).double().eval()
    gen = torch.Generator().manual_seed(2)
    lengths = [9, 24, 3, 16]
    x = listops_like(gen, lengths, 24)
    with torch.no_grad():
        logits = forward(model, _PaddedTask(), x)  # the loop's call: task.lengths -> every block
        for i, n in enumerate(lengths):
            torch.testing.assert_close(logits[i], model(x[i : i + 1, :n])[0], rtol=1e-9, atol=1e-10)
        x2 = x.clone()
        x2[x == 0] = torch.randint(1, 18, (int((x == 0).sum()),), generator=gen)  # other padding content
        torch.testing.assert_close(model(x2, lengths=torch.tensor(lengths)), logits, rtol=1e-9, atol=1e-10)
        assert (model(x2) - logits).abs().max() > 1e-6  # unmasked, the padding changes the logits


def test_checkpointed_blocks_pass_lengths():
    torch.manual_seed(0)
    model = SequenceModel(18, 3, d_model=8, n_layers=2, mixer=dict(name="s4d", bidirectional=True),
                          encoder="embedding").double().train()
    x = listops_like(torch.Generator().manual_seed(3), [5, 12], 12)
    ref = model(x, lengths=token_lengths(x))
    model.use_checkpoint = True
    torch.testing.assert_close(model(x, lengths=token_lengths(x)), ref, rtol=0, atol=0)


def test_flip_valid_reverses_each_sample_within_its_length():
    from ssmkit.ops.padding import flip_valid

    x = torch.randn(3, 2, 7)
    lengths = torch.tensor([7, 3, 0])
    y = flip_valid(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert torch.equal(y[i, :, :n], x[i, :, :n].flip(-1)) and torch.equal(y[i, :, n:], x[i, :, n:])
    assert torch.equal(flip_valid(y, lengths), x)


def test_retrieval_towers_see_each_document_without_its_padding():
    from ssmkit.tasks.lra_text import RetrievalModel

    torch.manual_seed(0)
    backbone = SequenceModel(18, 1, d_model=8, n_layers=1, mixer=dict(name="s4d", bidirectional=True),
                             encoder="embedding")
    model = RetrievalModel(backbone).double().eval()
    gen = torch.Generator().manual_seed(4)
    x = listops_like(gen, [7, 20, 12, 3], 20).view(2, 2, 20)  # two pairs of documents
    with torch.no_grad():
        logits = model(x, lengths=token_lengths(x))
        for i in range(2):
            (a, b), (na, nb) = x[i], token_lengths(x[i]).tolist()
            u, v = backbone(a[None, :na])[0], backbone(b[None, :nb])[0]
            torch.testing.assert_close(logits[i], model.head(torch.cat([u, v, u * v, u - v])), rtol=1e-9, atol=1e-10)
