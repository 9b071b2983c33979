"""The position-wise end of a mixer: activation -> dropout -> output map (Linear, or Linear + GLU).

Used by every mixer whose paper ends its layer this way (the convolution SSMs, S5, LRU; attention's optional
map after its own projection), so the names, defaults and checks are the same everywhere:

- ``activation``: gelu, silu, relu, tanh, sigmoid, id or None;
- ``output``: ``glu`` (Linear d_in -> 2 H, then GLU), ``linear`` (Linear d_in -> H) or None (d_in must be H);
- ``dropout`` (in [0, 1)) on the d_in mixed features before the map; ``tie_dropout`` shares its mask over the
  sequence (``nn.Dropout1d``; needs dropout > 0).

Applied channels-first: (B, d_in, L) -> (B, H, L) as one batched GEMM with the ``nn.Linear``'s weights
(``ssmkit/ops/linear.py``), so activations are never transposed; ``step`` maps one token (B, d_in) -> (B, H).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.ops.linear import channels_first_linear
from ssmkit.registry import did_you_mean

ACTIVATIONS = {
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "id": nn.Identity,
    None: nn.Identity,
}
OUTPUTS = ("glu", "linear", None)


def check_activation(activation, extra: tuple = ()) -> None:
    allowed = [*ACTIVATIONS, *extra]
    if activation not in allowed:
        raise ValueError(f"unknown activation {activation!r}{did_you_mean(activation, [a for a in allowed if a])}; "
                         f"choose one of {', '.join(str(a) for a in allowed)}")


class OutputMap(nn.Module):
    """activation -> dropout -> output map, channels-first (see the module docstring)."""

    def __init__(self, d_in: int, d_model: int, activation: str | None = "gelu", output: str | None = "glu",
                 dropout: float = 0.0, tie_dropout: bool = False):
        super().__init__()
        check_activation(activation)
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}{did_you_mean(output, ['glu', 'linear'])}; "
                             "choose one of glu, linear, None")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if tie_dropout and not dropout:
            raise ValueError("tie_dropout=True shares the dropout mask over the sequence, but dropout is 0; "
                             "set dropout > 0 or drop tie_dropout")
        if output is None and d_in != d_model:
            raise ValueError(f"output=None needs the mixed features to be d_model (got {d_in} for d_model={d_model}, "
                             "e.g. channels > 1); use output linear or glu")
        self.activation_name, self.output_name = activation, output
        self.act = ACTIVATIONS[activation]()
        self.dropout = (nn.Dropout1d if tie_dropout else nn.Dropout)(dropout) if dropout > 0 else nn.Identity()
        if output == "glu":
            self.out = nn.Sequential(nn.Linear(d_in, 2 * d_model), nn.GLU(dim=-1))
        elif output == "linear":
            self.out = nn.Linear(d_in, d_model)
        else:
            self.out = nn.Identity()

    def forward(self, y: torch.Tensor, activate: bool = True) -> torch.Tensor:
        """(B, d_in, L) -> (B, H, L). ``activate=False`` skips the activation (a caller that applied its own,
        e.g. a GLU over a convolution's doubled channels)."""
        y = self.dropout(self.act(y) if activate else y)
        linear = self.out[0] if isinstance(self.out, nn.Sequential) else self.out
        if not isinstance(linear, nn.Linear):
            return y
        y = channels_first_linear(y, linear.weight, linear.bias)
        return F.glu(y, dim=1) if linear is not self.out else y

    def step(self, y: torch.Tensor, activate: bool = True) -> torch.Tensor:
        """One token (B, d_in) -> (B, H): nn.Linear (+ GLU) on (B, d_in) is the cheaper call."""
        return self.out(self.dropout(self.act(y) if activate else y))
