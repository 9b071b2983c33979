"""Every token mixer, by recipe name (``model.mixer: {name: s4d, ...}``), and how one is built.

``MIXERS`` maps a name to a :class:`~ssmkit.mixers.base.Mixer` class whose constructor is
``cls(d_model, **options)``: the convolution SSMs (s4, s4d, dss, dlr, lssl, sgconv) are ``ConvMixer`` classes
over their kernels (``ssmkit/mixers/conv.py``), the others implement the contract themselves. A new mixer is
one file in this folder, registered here, and picked up by ``tests/mixers/test_contract.py``.

- ``build_mixer(d_model, spec)``: ``spec`` is the recipe's ``model.mixer`` dict (``name`` plus options);
  an unknown name or option is one ``ValueError`` line with a did-you-mean.
- ``mixer_parameters(name)``: every option the mixer accepts with its default (``d_model`` excluded), for the
  recipe validator and ``recipes show --defaults``.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping

from ssmkit.mixers.attention import Attention
from ssmkit.mixers.base import Mixer
from ssmkit.mixers.conv import (
    ConvMixer,
    DLRMixer,
    DSSMixer,
    LSSLMixer,
    S4DMixer,
    S4Mixer,
    SGConvMixer,
)
from ssmkit.mixers.gated_deltanet import GatedDeltaNet
from ssmkit.mixers.gla import GatedLinearAttention
from ssmkit.mixers.hyena import Hyena
from ssmkit.mixers.lru import LRU
from ssmkit.mixers.mamba import Mamba
from ssmkit.mixers.mamba2 import Mamba2
from ssmkit.mixers.rglru import RGLRU
from ssmkit.mixers.s5 import S5
from ssmkit.registry import Registry, did_you_mean

MIXERS = Registry("mixer")
MIXERS.register("s4", description="S4: HiPPO NPLR/DPLR kernel by Cauchy + Woodbury (legs/legt/lagt/fout; mode nplr|dplr|diag)")(S4Mixer)
MIXERS.register("s4d", description="S4D: diagonal SSM (legs/lin/inv/real inits, zoh/bilinear)")(S4DMixer)
MIXERS.register("dss", description="DSS: diagonal state spaces (exp/softmax kernels, hippo/lin/inv/randn inits)")(DSSMixer)
MIXERS.register("dlr", description="DLR: diagonal linear RNN, K_l = sum_n W_n lambda_n^l (omega/randn inits)")(DLRMixer)
MIXERS.register("lssl", description="LSSL: dense HiPPO SSM, bilinear, Krylov kernel by doubling (learn 0 = LSSL-fixed, 1, 2)")(LSSLMixer)
MIXERS.register("sgconv", description="SGConv: multi-scale global convolution (cat/sum, randn/cos, decay)")(SGConvMixer)
MIXERS.register("s5", description="S5: MIMO diagonal SSM (HiPPO-N, J blocks, zoh/bilinear) by a chunked parallel scan")(S5)
MIXERS.register("lru", description="LRU: linear recurrent unit (exp parameterisation, ring init, gamma normalisation)")(LRU)
MIXERS.register("mamba", description="Mamba: selective SSM block (input-dependent dt, B, C; conv + gate), chunked scan, step")(Mamba)
MIXERS.register("attn", description="attention: multi-head, rotary, full or local (chunk_size), KV-cache step")(Attention)
MIXERS.register("hyena", description="Hyena: order-N gated long convolutions (implicit FFN, s4d or sgconv filters), exact step")(Hyena)
MIXERS.register("gla", description="GLA: gated linear attention (low-rank data-dependent gate per key), chunked, step")(GatedLinearAttention)
MIXERS.register("gated_deltanet", description="Gated DeltaNet: gated delta rule (WY/UT chunked form), short conv, step")(GatedDeltaNet)
MIXERS.register("mamba2", description="Mamba-2: SSD block (scalar decay per head, chunked SSD scan, gated RMSNorm), step")(Mamba2)
MIXERS.register("rglru", description="RG-LRU: Griffin's recurrent block (gated real diagonal recurrence, temporal conv, GeLU branch), step")(RGLRU)

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def mixer_parameters(name: str) -> dict[str, inspect.Parameter]:
    """Every option mixer ``name`` accepts (its constructor's arguments but ``d_model``), with defaults."""
    params = inspect.signature(MIXERS.get(name)).parameters
    return {k: p for k, p in params.items() if k not in ("self", "d_model") and p.kind not in _VARIADIC}


def build_mixer(d_model: int, spec: Mapping) -> Mixer:
    """The mixer ``spec["name"]`` with the other keys of ``spec`` as its options, for width ``d_model``."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a mixer is a mapping with a name and options (e.g. {{name: s4d, d_state: 64}}), "
                         f"got {spec!r}")
    options = dict(spec)
    if "name" not in options:
        raise ValueError(f"the mixer options {sorted(options)} have no name; add name: one of {', '.join(MIXERS.names())}")
    name = options.pop("name")
    if not isinstance(name, str):
        raise ValueError(f"the mixer name must be a string, one of {', '.join(MIXERS.names())}; got {name!r}")
    cls = MIXERS.get(name)
    if "d_model" in options:
        raise ValueError(f"d_model is the model's width (model.d_model), not an option of mixer {name!r}; drop it")
    allowed = mixer_parameters(name)
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for mixer {name!r}{did_you_mean(key, allowed)}; "
                             f"allowed: {', '.join(sorted(allowed))}")
    mixer = cls(d_model, **options)
    mixer.name = name
    return mixer


__all__ = ["MIXERS", "ConvMixer", "Mixer", "build_mixer", "mixer_parameters"]
