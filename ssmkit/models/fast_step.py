"""Fast token-by-token inference: a model's whole recurrent ``step`` compiled ahead of time.

``AOTStep`` exports ``model.step`` with ``torch.export`` and compiles it with AOTInductor into one
shared library: the weights are frozen into it, the S4D recurrences, norms and activations become a few
fused C++ loops, and the small matrix products become generated GEMM micro-kernels. A call then goes
straight into C++ (no Python per layer, no dynamo guards). On a 2-core CPU this takes a 6-layer S4D
model (d_model 128) from ~1,700 steps/s eager to ~11,000 (docs/performance.md).

The price: compiling takes 10-30 s per (batch, dtype) shape (g++), and the compiled step holds a copy of
the weights at compile time, so it must be rebuilt after the weights change (``AOTStep.refresh()``).
Used by ``SequenceModel.compile_step()``; see there for when it falls back to ``torch.compile``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ssmkit.errors import first_line
from ssmkit.mixers import ConvMixer

# Inductor options of the compiled step: freeze the weights into the library and let inductor generate
# its own GEMMs for the small matrix-vector products (an extern BLAS call costs more than the work).
AOT_OPTIONS = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "autotune_num_choices_displayed": 0,  # no benchmark tables on stderr
    "max_autotune_report_choices_stats": False,
}


def aot_unsupported(model: nn.Module, state: list) -> str | None:
    """Why ``model.step`` on ``state`` cannot be compiled ahead of time, or None if it can."""
    if not hasattr(torch, "export") or not hasattr(torch._inductor, "aoti_compile_and_package"):
        return f"torch {torch.__version__} has no AOTInductor (needs torch >= 2.6)"
    for i, (block, s) in enumerate(zip(model.blocks, state)):
        mixer = block.mixer
        if not isinstance(mixer, ConvMixer):
            return (f"layer {i} is the token mixer {mixer.name!r}; only convolution SSMs' steps are compiled ahead "
                    "of time (attention's key/value cache grows every step)")
        if not isinstance(s, torch.Tensor):
            return f"layer {i} has a structured state ({type(s).__name__})"
        if s.is_complex():
            kernel = type(mixer.kernel).__name__
            return (f"layer {i} ({kernel}) steps in complex arithmetic, which inductor cannot compile "
                    "(S4D steps in real arithmetic: use default_state(..., real=True))")
    return None


class _Step(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        y, next_state = self.model.step(x, list(state))
        return (y, *next_state)


class AOTStep:
    """``model.step`` compiled ahead of time; call it as ``y, state = step(x, state)``.

    One library is compiled per input signature (shapes, dtypes, device) on first use and kept. After
    changing the weights call :meth:`refresh` (the libraries hold the weights they were compiled with).
    """

    def __init__(self, model: nn.Module, options: dict | None = None, workdir: str | Path | None = None):
        """``options``: inductor settings (default ``AOT_OPTIONS``); ``workdir``: where to keep the compiled
        packages (default: a temporary folder, deleted with this object)."""
        self.model = model
        self.options = dict(AOT_OPTIONS if options is None else options)
        # The compiled packages live in ``workdir`` (kept) or in a temporary folder removed with this object.
        self._tmp = tempfile.TemporaryDirectory(prefix="ssmkit-step-") if workdir is None else None
        self._dir = Path(workdir) if workdir is not None else Path(self._tmp.name)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._runs: dict[tuple, object] = {}

    @staticmethod
    def _signature(x: torch.Tensor, state: list) -> tuple:
        return tuple((tuple(t.shape), t.dtype, t.device) for t in (x, *state))

    def compile(self, x: torch.Tensor, state: list):
        """Exports and compiles the step for inputs shaped like ``x`` and ``state``; returns the runner."""
        why = aot_unsupported(self.model, state)
        if why:
            raise ValueError(f"cannot compile this step ahead of time: {why}")
        self.model.eval()
        self.model.setup_step()
        key = self._signature(x, state)
        try:
            with torch.no_grad():
                exported = torch.export.export(_Step(self.model), (x, *state))
                path = self._dir / f"step-{len(self._runs)}.pt2"
                package = torch._inductor.aoti_compile_and_package(
                    exported, package_path=str(path), inductor_configs=self.options
                )
        except Exception as e:  # export and inductor raise many types; keep the cause, say what to do
            raise RuntimeError(
                f"compile_step('aot') could not compile this model's step ({type(e).__name__}: "
                f"{first_line(e, empty='')}); use compile_step('inductor') or model.step"
            ) from e
        runner = torch._inductor.aoti_load_package(package).loader.run  # skips per-call pytree parsing
        self._runs[key] = runner
        return runner

    def refresh(self) -> None:
        """Forget the compiled libraries (they hold old weights); the next call recompiles."""
        self._runs.clear()

    def __call__(self, x: torch.Tensor, state: list):
        run = self._runs.get(self._signature(x, state))
        if run is None:
            run = self.compile(x, state)
        out = run([x, *state])
        return out[0], list(out[1:])
