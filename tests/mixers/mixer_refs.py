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
