"""Written-out float64 pieces shared by the tests of the mixers that own their output map (S5, LRU, attention),
and a token-by-token driver for ``Mixer.step``."""
import math

import torch
from helpers import run_chunks, run_steps  # noqa: F401  (the mixers' tests import them from here too)


def post_reference(m, y: torch.Tensor) -> torch.Tensor:
    """The mixer's ``post`` (``OutputMap``) in float64, written out: GELU (erf form) or none, then Linear (+ GLU)
    or none. Dropout must be 0 (or the mixer in eval)."""
    y = y.double()
    if m.post.activation_name == "gelu":
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    elif m.post.activation_name not in (None, "id"):
        raise NotImplementedError(m.post.activation_name)
    if m.post.output_name is None:
        return y
    linear = m.post.out[0] if m.post.output_name == "glu" else m.post.out
    y = torch.einsum("oh,bhl->bol", linear.weight.double(), y) + linear.bias.double()[:, None]
    if m.post.output_name == "glu":
        a, b = y.chunk(2, dim=1)
        y = a / (1 + torch.exp(-b))
    return y


def assert_grads_match(m, reference, u: torch.Tensor, every_parameter: bool = False, rtol=1e-8, atol=1e-10) -> None:
    """The gradients of sum(m(u) * w) (w random) w.r.t. u and every parameter equal those through ``reference(m, u)[0]``
    (a float64 loop); with ``every_parameter``, each reference gradient must be non-zero (every parameter takes part)."""
    w = torch.randn(u.shape, dtype=u.dtype)
    names = ["u"] + [n for n, _ in m.named_parameters()]
    params = [p for _, p in m.named_parameters()]
    g = torch.autograd.grad((m(u) * w).sum(), [u, *params])
    g_ref = torch.autograd.grad((reference(m, u)[0] * w).sum(), [u, *params])
    for name, a, b in zip(names, g, g_ref):
        if every_parameter:
            assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=name)


def assert_lengths_match(m, u: torch.Tensor, lengths: torch.Tensor, alone, tol=1e-10) -> None:
    """``m(u, lengths=lengths)``'s valid outputs of each sample equal ``alone(sample cut to its length)``."""
    y = m(u, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[i:i + 1, :, :n], alone(u[i:i + 1, :, :n]), rtol=tol, atol=tol)
