"""Per-window normalisation of forecasting inputs (RevIN-style instance normalisation, Kim et al. 2022).

A forecaster trained on globally standardised values only ever sees the training range; on a trending series
its forecasts stop at the top of that range (weekly CO2: the test values reach +4 training standard
deviations). :class:`WindowNorm` takes each sample's observed window on its own: every value channel is
centred on the window's mean and divided by the window's standard deviation before the backbone, and the
forecast is mapped back with the same two numbers, so the backbone learns the shape of the next steps
relative to the recent past and the level comes from the window itself.

It is the model side of ``normalize: window`` of the forecasting tasks (``tasks/timeseries.py``): the task's
``Forecaster`` calls :meth:`WindowNorm.normalize` on the input and :meth:`WindowNorm.denormalize` on the
forecast. RevIN's learnable affine map is left out: the backbone's linear encoder and decoder already hold
one. Only the observed positions are normalised: the forecast positions stay zero (the mask token's value
in normalised units) and the other channels (mask, calendar features) pass unchanged. No parameters, so a
checkpoint's weights are the backbone's.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class WindowNorm(nn.Module):
    """Normalises channels ``[0, n_values)`` of the first ``seq_len`` positions of x (B, L, d) per sample;
    ``denormalize`` maps forecasts whose channels are the value channels ``out_index`` back."""

    def __init__(self, n_values: int, seq_len: int, out_index: list[int], eps: float = 1e-5):
        super().__init__()
        if not 0 < n_values or seq_len < 1 or not out_index or max(out_index) >= n_values:
            raise ValueError(f"WindowNorm: bad layout n_values={n_values}, seq_len={seq_len}, out_index={out_index}")
        self.n_values, self.seq_len, self.out_index, self.eps = n_values, seq_len, list(out_index), eps

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, L, d) -> (x with its observed values normalised, (mean, std) each (B, 1, n_values))."""
        n, s = self.n_values, self.seq_len
        dtype = torch.promote_types(x.dtype, torch.float32)  # statistics in float32 at least (float64 stays)
        observed = x[:, :s, :n].to(dtype)
        mean = observed.mean(1, keepdim=True)
        std = (observed.var(1, keepdim=True, unbiased=False) + self.eps).sqrt()
        values = torch.cat([(observed - mean) / std, x[:, s:, :n].to(dtype)], dim=1).to(x.dtype)
        return torch.cat([values, x[..., n:]], dim=-1), (mean, std)

    def denormalize(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Forecasts y (B, P, len(out_index)) in window units -> the task's units."""
        mean, std = stats
        idx = self.out_index
        return y.to(std.dtype) * std[..., idx] + mean[..., idx]

    def extra_repr(self) -> str:
        return f"n_values={self.n_values}, seq_len={self.seq_len}, out_index={self.out_index}"
