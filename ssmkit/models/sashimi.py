"""SaShiMi (Goel, Gu, Donahue, Re 2022, "It's Raw! Audio Generation with State-Space Models"): a causal
multi-scale U-Net of residual sequence blocks, for autoregressive generation.

Level i runs at length L_i = L / (p_0 ... p_{i-1}) and width H_i = H e^i (pool factors p, expand e). A
down-pool concatenates p consecutive positions and maps them to the next level; an up-pool maps each
coarse position to p fine ones, shifted by one coarse position so that no output sees its own future:

    Down_i:  z_j = W [x_{jp}, ..., x_{jp+p-1}] + b                        (L_i, H_i) -> (L_i / p, H_{i+1})
    Up_i:    u_{jp+r} = (W' y_{j-1} + b')_r,  u_r = 0 for j = 0            (L_i / p, H_{i+1}) -> (L_i, H_i)

y_{j-1} depends on inputs up to jp - 1, so u_t only on inputs before t; the skip connections carry x_t.
With S_i the residual blocks of level i and C those of the centre (paper Fig. 1, the reference backbone):

    f_K(x) = x + C(x),     f_i(x) = v + S_i(v),   v = Up_i(f_{i+1}(Down_i(x))) + x,
    output = decoder(norm(f_0(encoder(x)))).

``unet=True`` (the reference's standalone option, used for diffusion) also puts n_layers blocks before each
down-pool and adds the output of each down-path block to the output of its mirror image on the way up.
Each block is norm -> mixer -> residual, then norm -> MLP (width ``mlp_ratio`` H, the paper's
``ff``) -> residual: ``ssmkit.models.block.ResidualBlock``.

Recurrent mode (``step``): level 0 runs every token; level i + 1 runs once its down-pool has buffered p_i
level-i inputs, and its output refills the p_i pending outputs of the up-pool, which level i then emits one
per token. ``step`` therefore equals the full forward token by token. The state is a dict::

    {"phase": tokens seen mod prod(p),  "units": {unit name: [block states]},
     "pool_in": [(*batch, p_i, H_i) buffered inputs],  "pool_out": [(*batch, p_i, H_i) pending outputs]}

Any length works: without a state the input is right-padded to a multiple of prod(p) and the output cut
back (exact, the model is causal); with a state, tokens up to the next multiple of prod(p) and after the
last one are stepped and the aligned middle runs as one convolution from the state.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ssmkit.models.block import Norm, ResidualBlock
from ssmkit.models.sequence import DEFAULT_MIXER, SequenceModel, check_backbone, make_encoder, refuse_removed

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch < 2.3 has none


class DownPool(nn.Module):
    """(B, L, d_in) -> (B, L / p, d_out): p consecutive positions concatenated, then a Linear."""

    def __init__(self, d_in: int, d_out: int, factor: int):
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(d_in * factor, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(*x.shape[:-2], x.shape[-2] // self.factor, self.factor * x.shape[-1]))

    def step(self, buffered: torch.Tensor) -> torch.Tensor:
        """The p buffered inputs (*batch, p, d_in) -> one coarse token (*batch, d_out)."""
        return self.linear(buffered.flatten(-2))


class UpPool(nn.Module):
    """(B, L, d_in) -> (B, L p, d_out): each position becomes p, emitted one coarse position later."""

    def __init__(self, d_in: int, d_out: int, factor: int):
        super().__init__()
        self.factor, self.d_out = factor, d_out
        self.linear = nn.Linear(d_in, d_out * factor)

    def forward(self, y: torch.Tensor, pending: torch.Tensor | None = None):
        """-> (outputs (B, L p, d_out), the last position's p outputs (B, p, d_out), due next).

        ``pending`` (B, p, d_out): the outputs of the position before ``y`` (zeros at the start)."""
        z = self.linear(y)  # (B, L, p d_out)
        first = torch.zeros_like(z[:, :1]) if pending is None else pending.flatten(-2).unsqueeze(1).to(z.dtype)
        shifted = torch.cat([first, z[:, :-1]], dim=1)
        return shifted.reshape(z.shape[0], -1, self.d_out), z[:, -1].unflatten(-1, (self.factor, self.d_out))

    def step(self, y: torch.Tensor) -> torch.Tensor:
        """One coarse output (*batch, d_in) -> the p fine outputs it produces (*batch, p, d_out)."""
        return self.linear(y).unflatten(-1, (self.factor, self.d_out))


class Stage(nn.Module):
    """Residual blocks at one level (one width, one length). It has ``blocks``, ``mixers``, ``rate``,
    ``step``, ``default_state`` and ``compile_step`` as ``SequenceModel`` has, so a stage compiles as a model
    does; SaShiMi sets every stage's ``rate``."""

    def __init__(self, n_blocks: int, d_model: int, mixer: dict, prenorm: bool, norm: str | None, dropout: float,
                 mlp_ratio: float, checkpoint: bool):
        super().__init__()
        self.use_checkpoint = checkpoint
        self.blocks = nn.ModuleList(
            ResidualBlock(d_model, mixer, prenorm, norm, dropout, mlp_ratio) for _ in range(n_blocks)
        )
        self.rate = 1.0
        self._step_rate = None

    mixers = SequenceModel.mixers
    default_state = SequenceModel.default_state
    setup_step = SequenceModel.setup_step
    compile_step = SequenceModel.compile_step

    def forward(self, x: torch.Tensor, state: list | None = None, return_state: bool = False):
        """(B, L, H) through every block; with ``return_state`` also each block's final state."""
        states = []
        for i, block in enumerate(self.blocks):
            if return_state or state is not None:
                x, s = block(x, state=None if state is None else state[i], return_state=True, rate=self.rate)
                states.append(s)
            elif self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rate=self.rate, use_reentrant=False)
            else:
                x = block(x, rate=self.rate)
        return (x, states) if return_state else x

    def step(self, x: torch.Tensor, state: list):
        """One token (B, H) through every block -> (B, H), next states."""
        if self._step_rate != self.rate and not _is_compiling():
            self.setup_step()
        next_states = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            next_states.append(s)
        return x, next_states


def _put(buffer: torch.Tensor, slot: int, x: torch.Tensor) -> torch.Tensor:
    """A copy of ``buffer`` (*batch, p, H) with ``x`` (*batch, H) at position ``slot``."""
    return torch.cat([buffer[..., :slot, :], x.unsqueeze(-2).to(buffer.dtype), buffer[..., slot + 1:, :]], dim=-2)


class SaShiMi(nn.Module):
    """The SaShiMi backbone with an encoder and a per-position decoder (the interface of ``SequenceModel``).

    Args:
        d_input, d_output: input features (encoder ``linear``) or vocabulary size (``embedding``); outputs
            per position.
        d_model, n_layers: width H of the outer level; residual blocks per level (8 in the paper).
        mixer: every block's mixer, ``{"name": "s4d", **options}``; causal (a bidirectional one is refused).
        prenorm, norm, dropout, mlp_ratio, checkpoint, rate: as in ``SequenceModel``; ``mlp_ratio`` is the
            paper's ``ff`` (2), the width of the position-wise MLP in each block.
        pool: the task's pooling; SaShiMi predicts at every position, so only None.
        encoder: ``linear`` or ``embedding``.
        pool_factors: the down-pooling factor of each level, outer first (the paper: 4, 4).
        expand: width factor per level (the paper: 2).
        unet: also n_layers blocks before each down-pool, with U-Net skips to the up path.
    """

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_model: int = 64,
        n_layers: int = 8,
        mixer: dict | None = None,
        prenorm: bool = True,
        norm: str | None = "layer",
        dropout: float = 0.0,
        pool: str | None = None,
        encoder: str = "linear",
        mlp_ratio: float = 2.0,
        checkpoint: bool = False,
        pool_factors: tuple[int, ...] | list[int] = (4, 4),
        expand: int = 2,
        unet: bool = False,
        rate: float = 1.0,
        **removed,
    ):
        super().__init__()
        refuse_removed("SaShiMi", removed)
        mixer = dict(DEFAULT_MIXER if mixer is None else mixer)
        self.check_options(mixer=mixer, pool_factors=pool_factors, expand=expand, unet=unet)
        if pool is not None:
            raise ValueError(f"the sashimi backbone predicts at every position, but this task pools ({pool!r}); "
                             "use a per-position task or model.backbone: sequence")
        check_backbone(d_model, n_layers, encoder, rate)
        self.pool, self.unet, self.expand = None, unet, expand
        self.factors = tuple(int(p) for p in pool_factors)
        self.depth = len(self.factors)
        self.period = math.prod(self.factors)  # the step pattern repeats every prod(p) tokens
        self.strides = [math.prod(self.factors[:i]) for i in range(self.depth)]  # tokens per level-i position
        widths = [d_model * expand**i for i in range(self.depth + 1)]

        self.encoder = make_encoder(encoder, d_input, d_model)
        units, self.down_keys, self.up_keys = {}, [], []
        for i in range(self.depth):
            self.down_keys.append([f"down{i}_{k}" for k in range(n_layers if unet else 0)])
            self.up_keys.append([f"up{i}_{k}" for k in range(n_layers if unet else 1)])
            for key in self.down_keys[i] + self.up_keys[i]:
                n_blocks = 1 if unet else n_layers
                units[key] = Stage(n_blocks, widths[i], mixer, prenorm, norm, dropout, mlp_ratio, checkpoint)
        units["center"] = Stage(n_layers, widths[-1], mixer, prenorm, norm, dropout, mlp_ratio, checkpoint)
        self.units = nn.ModuleDict(units)
        self.down_pools = nn.ModuleList(DownPool(widths[i], widths[i + 1], p) for i, p in enumerate(self.factors))
        self.up_pools = nn.ModuleList(UpPool(widths[i + 1], widths[i], p) for i, p in enumerate(self.factors))
        self.final_norm = Norm(norm, d_model) if prenorm else nn.Identity()
        self.decoder = nn.Linear(d_model, d_output)
        self.rate = 1.0
        self.set_rate(rate)

    @staticmethod
    def check_options(mixer: dict, pool_factors, expand, unet=False) -> None:
        """ValueError naming the first impossible option (used by the recipe check too)."""
        factors = list(pool_factors) if isinstance(pool_factors, (list, tuple)) else None
        if not factors or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 2 for p in factors):
            raise ValueError(f"pool_factors must be a non-empty list of integers >= 2 (e.g. [4, 4]), got {pool_factors!r}")
        if not isinstance(expand, int) or isinstance(expand, bool) or expand < 1:
            raise ValueError(f"expand must be an integer >= 1, got {expand!r}")
        if not isinstance(unet, bool):
            raise ValueError(f"unet must be true or false, got {unet!r}")
        if mixer.get("bidirectional"):
            raise ValueError("sashimi is autoregressive and a bidirectional mixer sees the future; "
                             "set model.mixer.bidirectional: false")

    # --- the U-Net, shared by the convolutional and the recurrent mode ---
    def _level(self, i: int, x: torch.Tensor, unit, pool) -> torch.Tensor:
        """f_i(x): ``unit(key, x)`` runs a stage, ``pool(i, x, inner)`` goes down, through ``inner`` (f_{i+1})
        and back up (all positions at once, or one token)."""
        if i == self.depth:
            return x + unit("center", x)
        skips = [x]
        for key in self.down_keys[i]:
            x = unit(key, x)
            skips.append(x)
        x = pool(i, x, lambda z: self._level(i + 1, z, unit, pool)) + skips.pop()
        if self.unet:
            for key in self.up_keys[i]:
                x = unit(key, x) + skips.pop()
            return x
        return x + unit(self.up_keys[i][0], x)

    def _run(self, x: torch.Tensor, state: dict | None, new: dict | None) -> torch.Tensor:
        """All positions of (B, L, H) features, L a multiple of ``period``, from ``state`` at phase 0 (or zeros)."""

        def unit(key, z):
            if new is None:
                return self.units[key](z)
            z, new["units"][key] = self.units[key](z, state=state["units"][key], return_state=True)
            return z

        def pool(i, z, inner):
            pending = None if state is None else state["pool_out"][i]
            z, pending = self.up_pools[i](inner(self.down_pools[i](z)), pending)
            if new is not None:
                new["pool_out"][i] = pending
            return z

        return self._level(0, x, unit, pool)

    def _step_features(self, x: torch.Tensor, state: dict, steps=None):
        """One token of features (*batch, H) -> (*batch, H) before the final norm, next state.
        ``steps``: a step function per unit name (default: each unit's eager ``step``)."""
        phase = state["phase"]
        new = {"phase": (phase + 1) % self.period, "units": dict(state["units"]),
               "pool_in": list(state["pool_in"]), "pool_out": list(state["pool_out"])}

        def unit(key, z):
            run = self.units[key].step if steps is None else steps[key]
            z, new["units"][key] = run(z, state["units"][key])
            return z

        def pool(i, z, inner):
            p, slot = self.factors[i], (phase // self.strides[i]) % self.factors[i]
            new["pool_in"][i] = _put(state["pool_in"][i], slot, z)
            out = state["pool_out"][i][..., slot, :]
            if slot == p - 1:  # the buffer is full: the next level takes one step, the up-pool is refilled
                new["pool_out"][i] = self.up_pools[i].step(inner(self.down_pools[i].step(new["pool_in"][i])))
            return out

        return self._level(0, x, unit, pool), new

    # --- the public interface (that of SequenceModel) ---
    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, state: dict | None = None,
                return_state: bool = False):
        """x: (B, L, d_input) floats or (B, L) token ids -> (B, L, d_output) (``lengths`` is not needed:
        outputs never see later positions). ``state``/``return_state``: continue from / return the state."""
        x = self.encoder(x)  # (B, L, H)
        L = x.shape[1]
        if state is None and not return_state:
            y = self._run(F.pad(x, (0, 0, 0, (-L) % self.period)), None, None)[:, :L]
            return self.decoder(self.final_norm(y))
        if state is None:
            state = self.default_state(x.shape[0], device=x.device)
        head = min(L, (-state["phase"]) % self.period)
        bulk = (L - head) // self.period * self.period
        ys = []
        for t in range(head):
            y, state = self._step_features(x[:, t], state)
            ys.append(y.unsqueeze(1))
        if bulk:
            new = {"phase": 0, "units": dict(state["units"]), "pool_in": list(state["pool_in"]),
                   "pool_out": list(state["pool_out"])}
            ys.append(self._run(x[:, head:head + bulk], state, new))
            state = new
        for t in range(head + bulk, L):
            y, state = self._step_features(x[:, t], state)
            ys.append(y.unsqueeze(1))
        return self.decoder(self.final_norm(torch.cat(ys, dim=1))), state

    @property
    def mixers(self) -> list:
        """Every block's mixer, every level."""
        return [mixer for unit in self.units.values() for mixer in unit.mixers]

    def set_rate(self, rate: float) -> None:
        """Sets the sampling-rate factor of every level (a mixer without a step size refuses any rate but 1)."""
        check_backbone(1, 1, "linear", rate)
        for mixer in self.mixers:
            mixer.check_rate(rate)
        self.rate = float(rate)
        for unit in self.units.values():
            unit.rate = self.rate

    def default_state(self, *batch_shape: int, device=None, real: bool = False) -> dict:
        """The state before the first token (``real=True``: S4D states as real (..., 2) tensors)."""
        dtype = self.decoder.weight.dtype
        device = self.decoder.weight.device if device is None else device
        return {
            "phase": 0,
            "units": {key: unit.default_state(*batch_shape, device=device, real=real) for key, unit in self.units.items()},
            "pool_in": [torch.zeros(*batch_shape, p, pool.linear.in_features // p, dtype=dtype, device=device)
                        for p, pool in zip(self.factors, self.down_pools)],
            "pool_out": [torch.zeros(*batch_shape, p, pool.d_out, dtype=dtype, device=device)
                         for p, pool in zip(self.factors, self.up_pools)],
        }

    def setup_step(self) -> None:
        for unit in self.units.values():
            unit.setup_step()

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: dict):
        """One token through the whole U-Net: x (B, d_input) or (B,) ids -> (B, d_output), next state."""
        y, state = self._step_features(self.encoder(x), state)
        return self.decoder(self.final_norm(y)), state

    def compile_step(self, backend: str = "auto") -> CompiledStep:
        """``step`` with each stage's blocks compiled (``Stage.compile_step``, i.e. ``SequenceModel``'s:
        ``aot``, ``inductor`` or ``auto``); the pools and the choice of which levels run at a token stay in
        Python, because that choice changes from token to token. Use ``default_state(..., real=True)``."""
        if backend not in ("auto", "aot", "inductor"):
            raise ValueError(f"unknown step backend {backend!r}; choose auto, aot or inductor")
        self.eval()
        return CompiledStep(self, {key: unit.compile_step(backend) for key, unit in self.units.items()})


class CompiledStep:
    """``y, state = fast(x, state)``: SaShiMi's step with every stage's step compiled."""

    def __init__(self, model: SaShiMi, steps: dict):
        self.model, self.steps = model, steps

    def refresh(self) -> None:
        """After changing the weights: recompile the ahead-of-time stages (they hold the old weights)."""
        self.model.setup_step()
        for fn in self.steps.values():
            if hasattr(fn, "refresh"):
                fn.refresh()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, state: dict):
        y, state = self.model._step_features(self.model.encoder(x), state, self.steps)
        return self.model.decoder(self.model.final_norm(y)), state
