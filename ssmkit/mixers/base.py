"""The one contract every token mixer follows.

A mixer maps u (B, H, L) to y (B, H, L). Everything a recipe's ``model.mixer`` names is a ``Mixer``: the
convolution SSMs (s4, s4d, dss, dlr, lssl, sgconv) as ``ConvMixer(kernel)`` (``ssmkit/mixers/conv.py``), and
the mixers that compute their own recurrence or attention (s5, lru, mamba, attn, ...). A mixer's options are
its constructor's arguments; norm, residual and the dropout between blocks belong to the block
(``ssmkit/models/block.py``), never to the mixer.

    forward(u, state=None, return_state=False, lengths=None, rate=1.0) -> y, or (y, next_state)
    step(u_t (B, H), state) -> (y_t (B, H), next_state)          only when ``has_state``
    default_state(*batch_shape, device=None) -> state             only when ``has_state``
    setup_step(rate=1.0)                                          precompute the recurrence for ``step``

What must hold for every mixer (``tests/mixers/test_contract.py`` checks each registered one):
- forward == step token by token == forward in chunks passing the state, in float64 against an independent
  reference (a direct recurrence or an explicit sum), never against itself;
- ``lengths`` (B,) marks suffix padding: each sample's valid outputs equal the sample run alone. The caller
  (the block) zeroes the input after each length; a causal mixer may ignore ``lengths`` (its valid outputs
  never read what follows them), a bidirectional one must use it. ``lengths`` with a state is refused;
- ``rate`` multiplies the step size of a discretised mixer (also in ``setup_step``); a mixer without a step
  size refuses any rate other than 1 (``has_rate`` False);
- bad options raise one-line ``ValueError``s naming the option and the fix.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn


class Mixer(nn.Module, ABC):
    """Base class of all token mixers (see the module docstring for the contract).

    Subclasses set ``self.d_model`` and implement ``forward``; recurrent ones override ``has_state``,
    ``default_state``, ``step`` and, if they precompute anything, ``setup_step``. ``has_rate`` is True for
    mixers whose ``rate`` rescales a step size.
    """

    #: the mixer has a step size that ``rate`` rescales
    has_rate: bool = False
    #: the registry name (set by ``ssmkit.mixers.MIXERS`` registration), used in messages
    name: str = "mixer"

    @abstractmethod
    def forward(self, u: torch.Tensor, state=None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); with ``return_state`` also the state after the last position."""

    # --- recurrent API: declared here, so callers never probe with hasattr ---
    @property
    def has_state(self) -> bool:
        """True when this mixer, with these options, has a recurrence (step, default_state, state passing)."""
        return False

    def no_state_reason(self) -> str:
        """Why ``has_state`` is False, in words that complete 'this mixer has no recurrent state: ...'."""
        return f"{self.name!r} with these options has no recurrence"

    def refuse_state(self, what: str = "recurrent state") -> ValueError:
        return ValueError(f"this {self.name!r} mixer has no {what}: {self.no_state_reason()}; "
                          "use a causal recurrent mixer, or drop state/step")

    def default_state(self, *batch_shape: int, device=None):
        raise self.refuse_state()

    def setup_step(self, rate: float = 1.0) -> None:
        """Precomputes what ``step`` needs for this ``rate`` (a no-op unless overridden)."""
        self.check_rate(rate)

    def step(self, u: torch.Tensor, state):
        """One token u (B, H) -> y (B, H), next state. Equals ``forward`` token by token."""
        raise self.refuse_state("recurrent step")

    # --- checks shared by every mixer ---
    def check_rate(self, rate: float) -> None:
        if rate != 1.0 and not self.has_rate:
            raise ValueError(f"mixer {self.name!r} has no step size, so a sampling-rate factor cannot rescale it; "
                             f"got rate={rate}, use rate=1")

    def check_call(self, u: torch.Tensor, state, return_state: bool, lengths, rate: float) -> None:
        """The argument checks every ``forward`` starts with."""
        if u.dim() != 3 or u.shape[1] != self.d_model:
            raise ValueError(f"mixer {self.name!r} expects (B, {self.d_model}, L) input, got shape {tuple(u.shape)}")
        if (state is not None or return_state) and not self.has_state:
            raise self.refuse_state()
        if lengths is not None and (state is not None or return_state):
            raise ValueError("lengths cannot be combined with state/return_state: the state after the padding is no "
                             "sample's state; run unpadded sequences for state passing")
        self.check_rate(rate)
