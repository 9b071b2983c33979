"""Attention against an explicit float64 softmax(tau Q K^T + mask) V with rotary positions written here."""
import math

import numpy as np
import pytest
import torch

from ssmkit.mixers import build_mixer
from ssmkit.mixers.attention import Attention
from ssmkit.models import SequenceModel


def rope(x: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """x (T, d): rotate the pair (x[t, j], x[t, j + r/2]) by angle t * base^(-2j/r), r = d rounded to even."""
    T, d = x.shape
    r = d // 2 * 2
    out = x.copy()
    for t in range(T):
        for j in range(r // 2):
            a = t * base ** (-2 * j / r)
            x1, x2 = x[t, j], x[t, j + r // 2]
            out[t, j] = x1 * math.cos(a) - x2 * math.sin(a)
            out[t, j + r // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def allowed(t: int, s: int, causal: bool, chunk: int | None) -> bool:
    """May the query at position t read the key at position s?"""
    if causal and s > t:
        return False
    if chunk is None:
        return True
    delta = s // chunk - t // chunk
    return delta in ((-1, 0) if causal else (-1, 0, 1))


def reference(m: Attention, u: np.ndarray) -> np.ndarray:
    """u (B, H, L) -> (B, H, L), from the module's raw weights, head by head, in numpy float64."""
    p = lambda t: t.detach().double().numpy()  # noqa: E731
    W, b = p(m.qkv.weight), p(m.qkv.bias)
    Wo, bo = p(m.out.weight), p(m.out.bias)
    tau = float(m.temperature.detach())
    B, H, L = u.shape
    nh, dh = m.n_heads, H // m.n_heads
    y = np.zeros((B, L, H))
    for bi in range(B):
        x = u[bi].T  # (L, H)
        qkv = x @ W.T + b
        heads = []
        for h in range(nh):
            sl = slice(h * dh, (h + 1) * dh)
            q = rope(qkv[:, :H][:, sl])
            k = rope(qkv[:, H : 2 * H][:, sl])
            v = qkv[:, 2 * H :][:, sl]
            logits = tau * q @ k.T  # (L, L)
            for t in range(L):
                for s in range(L):
                    if not allowed(t, s, m.causal, m.chunk_size):
                        logits[t, s] = -np.inf
            w = np.exp(logits - logits.max(-1, keepdims=True))
            heads.append((w / w.sum(-1, keepdims=True)) @ v)
        y[bi] = np.concatenate(heads, -1) @ Wo.T + bo
    return y.transpose(0, 2, 1)


CONFIGS = [
    dict(bidirectional=False, chunk_size=None),
    dict(bidirectional=True, chunk_size=None),
    dict(bidirectional=False, chunk_size=3),
    dict(bidirectional=True, chunk_size=3),
    dict(bidirectional=False, chunk_size=4),  # L = 11 is not a multiple of the chunk
    dict(bidirectional=True, chunk_size=16),  # one chunk longer than the sequence
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_explicit_softmax_attention(cfg):
    torch.manual_seed(0)
    m = Attention(8, n_heads=2, **cfg).double()
    with torch.no_grad():
        m.temperature.mul_(1.7)  # the learned temperature really scales the logits
    u = torch.randn(2, 8, 11, dtype=torch.float64)
    y = m(u)
    np.testing.assert_allclose(y.detach().numpy(), reference(m, u.numpy()), rtol=1e-9, atol=1e-10)


def test_odd_head_width_rotates_the_even_part():
    torch.manual_seed(0)
    m = Attention(6, n_heads=2, learn_temperature=False).double()  # d_head = 3: features 0, 1 rotate
    u = torch.randn(1, 6, 7, dtype=torch.float64)
    np.testing.assert_allclose(m(u).detach().numpy(), reference(m, u.numpy()), rtol=1e-9, atol=1e-10)
    assert "temperature" in dict(m.named_buffers())


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_step_with_kv_cache_equals_full_forward(chunk_size):
    torch.manual_seed(0)
    m = Attention(8, n_heads=2, chunk_size=chunk_size).eval()
    u = torch.randn(3, 8, 13)
    y = m(u)
    state = m.default_state(3)
    ys = []
    for t in range(13):
        y_t, state = m.step(u[..., t], state)
        ys.append(y_t)
        if chunk_size:
            assert state.k.shape[-2] <= 2 * chunk_size  # the cache stays bounded
    assert state.pos == 13
    torch.testing.assert_close(torch.stack(ys, -1), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("splits", [(5, 8), (1, 3, 9), (8, 5)])
def test_forward_from_cache_equals_one_pass(chunk_size, splits):
    torch.manual_seed(0)
    m = Attention(8, n_heads=2, chunk_size=chunk_size).eval()
    u = torch.randn(2, 8, 13)
    y = m(u)
    state, parts, start = None, [], 0
    for n in splits:
        y_part, state = m(u[..., start : start + n], state=state, return_state=True)
        parts.append(y_part)
        start += n
    torch.testing.assert_close(torch.cat(parts, -1), y, rtol=1e-4, atol=1e-5)
    # mixing: steps after a chunked forward
    y1, state = m(u[..., :6], return_state=True)
    y2, state = m.step(u[..., 6], state)
    torch.testing.assert_close(y2, y[..., 6], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_bidirectional_sees_the_future_and_causal_does_not(chunk_size):
    for bidirectional in (False, True):
        torch.manual_seed(0)
        m = Attention(8, bidirectional=bidirectional, chunk_size=chunk_size).double()
        u = torch.randn(1, 8, 12, dtype=torch.float64)
        u2 = u.clone()
        u2[..., 7:] += 1.0
        changed = (m(u)[..., :7] - m(u2)[..., :7]).abs()
        if bidirectional:
            assert changed[..., 6].max() > 1e-6
            if chunk_size:  # position 2 is two chunks before position 7: it cannot see it
                assert changed[..., :3].max() < 1e-12
        else:
            assert changed.max() < 1e-12


def test_gradients_reach_all_parameters_and_dropout_is_training_only():
    torch.manual_seed(0)
    m = Attention(8, n_heads=2, chunk_size=3, attn_dropout=0.5)
    u = torch.randn(2, 8, 10, requires_grad=True)
    m(u).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not torch.equal(m(u), m(u))  # dropout on the weights while training
    m.eval()
    assert torch.equal(m(u), m(u))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_heads=3), "n_heads must be a positive divisor of d_model=8"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(attn_dropout=1.0), "attn_dropout must be in"),
        (dict(attn_ff=2), "set model.mlp_ratio=2"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Attention(8, **kwargs)


def test_bidirectional_has_no_state():
    m = Attention(8, bidirectional=True)
    assert not m.has_state
    with pytest.raises(ValueError, match="no recurrent state"):
        m.default_state(2)
    built = build_mixer(8, {"name": "attn", "bidirectional": True})
    with pytest.raises(ValueError, match="has no recurrent state"):
        built(torch.randn(1, 8, 5), return_state=True)


def test_sequence_model_with_attention_steps_like_its_forward():
    torch.manual_seed(0)
    model = SequenceModel(3, 2, d_model=8, n_layers=2, pool=None, mlp_ratio=2, mixer={"name": "attn", "chunk_size": 4, "n_heads": 2}).eval()
    x = torch.randn(2, 10, 3)
    y = model(x)
    state = model.default_state(2)
    ys = []
    for t in range(10):
        y_t, state = model.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-4, atol=1e-5)


def test_channels_is_no_option_of_attention():
    with pytest.raises(ValueError, match="unknown option 'channels' for mixer 'attn'"):
        build_mixer(8, {"name": "attn", "channels": 2})
