"""Discretisation of diagonal SSMs without cancellation or overflow, for any step size.

With z = dt * A (complex, Re z <= 0), the discrete decay and input scale of

    zero-order hold:  dA = exp(z),                          dB = dt * phi1(z) * B,  phi1(z) = (exp(z) - 1) / z
    bilinear:         dA = (1 + z/2) / (1 - z/2) = exp(2 atanh(z/2)),   dB = dt / (1 - z/2) * B

are formed here from log dA, never from dA itself, and with exp(z) - 1 computed as expm1:

- ``expm1(z)``: exp(z) - 1 accurate to rounding for every z (Re and Im by real expm1 and sin, so there is
  no cancellation at |z| << 1: at dt = 1e-6 a float32 exp(z) - 1 keeps one or two digits).
- ``phi1(z)``: (exp(z) - 1) / z with its limit 1 at z = 0, finite value and gradient for z from 0 to -1e6.
- ``bilinear_log(z)``: log dA of the bilinear map as 2 atanh(z/2), accurate at small z where
  log((1 + z/2)/(1 - z/2)) loses every digit of the ratio's distance to 1.

Kernels then take powers as exp(l log dA): a decayed dA underflows to 0 in float32 (exp(-0.5 * 1e4)),
and log(0) = -inf makes exp(0 * -inf) a NaN and every gradient through it NaN, while log dA stays finite.
"""
from __future__ import annotations

import torch


def expm1(z: torch.Tensor) -> torch.Tensor:
    """exp(z) - 1 for real or complex z, without cancellation at small |z|."""
    if not z.is_complex():
        return torch.expm1(z)
    a, b = z.real, z.imag
    re = torch.expm1(a) * torch.cos(b) - 2 * torch.sin(b / 2) ** 2
    return torch.complex(re, torch.exp(a) * torch.sin(b))


def phi1(z: torch.Tensor) -> torch.Tensor:
    """(exp(z) - 1) / z, equal to 1 (and with derivative 1/2) at z = 0."""
    zero = z == 0
    safe = torch.where(zero, torch.ones_like(z), z)
    return torch.where(zero, 1 + z / 2, expm1(safe) / safe)


def bilinear_log(z: torch.Tensor) -> torch.Tensor:
    """log((1 + z/2) / (1 - z/2)) = 2 atanh(z/2), the log of the bilinear (Tustin) decay."""
    return 2 * torch.atanh(z / 2)
