"""Autoregressive generation: read the prompt as a convolution, then step one token at a time.

    prompt (B, Lp) --forward(return_state=True)--> scores of the next token, every layer's state
    repeat: next token = sample(scores) --step--> scores of the token after it, next state

Reading the prompt in convolution mode costs one FFT convolution per layer instead of Lp steps, and the
state it returns is exactly the state the recurrence would have reached (``forward_state``). Each new
token then costs O(1) in the sequence length (an N-state update per feature, or one attention query
against the KV cache), against O(L log L) for re-running the convolution over the whole prefix.

The step runs eagerly or compiled (``SequenceModel.compile_step``): ``compile="auto"`` compiles ahead of
time (AOTInductor) when every layer's state is a real tensor and the generation is long enough to pay
for the compile (``AUTO_COMPILE_MIN_STEPS``), otherwise steps eagerly; a compile that fails falls back to the eager step with
a warning. ``Generation.step`` says which step ran and ``Generation.step_note`` why.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ssmkit.errors import UserError, first_line
from ssmkit.generation.recurrent import check_recurrent
from ssmkit.generation.sampling import check_sampling, make_generator, sample_next
from ssmkit.models.fast_step import aot_unsupported

log = logging.getLogger("ssmkit.generation")

#: ``compile="auto"`` compiles the step only for at least this many steps. Compiling takes 20-75 s (one
#: library per batch size), the eager step runs ~1,900 steps/s and the compiled one ~11,000 (6 layers,
#: d_model 128, one CPU core, docs/performance.md): compiling pays from ~45,000 steps on.
AUTO_COMPILE_MIN_STEPS = 32768
COMPILE_MODES = ("auto", "aot", "inductor", "none")
PREFILL_MODES = ("conv", "step")


@dataclass
class Generation:
    """The result of :func:`generate`.

    tokens: (B, prompt_len + new tokens) ids, the prompt first.
    step: the step that produced the new tokens: ``aot``, ``inductor`` or ``eager``; ``step_note`` says why.
    seed: the seed of the sampling generator (the one drawn when none was given).
    prefill_s / compile_s / decode_s: seconds spent reading the prompt, compiling, and stepping.
    scores: with ``keep_scores=True``, (B, new tokens, V): the scores each new token was drawn from.
    """

    tokens: torch.Tensor
    prompt_len: int
    step: str
    step_note: str
    seed: int
    prefill_s: float
    compile_s: float
    decode_s: float
    scores: torch.Tensor | None = None

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len:]

    @property
    def tokens_per_s(self) -> float:
        """New tokens (all sequences of the batch) per second of stepping."""
        n = self.new_tokens.numel()
        return n / self.decode_s if self.decode_s > 0 else float("inf")


def _vocabulary(model: nn.Module) -> int | None:
    """The token vocabulary: the size of the model's first embedding (its encoder), or of its adaptive
    softmax (whose weights a tied adaptive input embedding reuses); None for a model of features."""
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            return m.num_embeddings
        if isinstance(m, nn.AdaptiveLogSoftmaxWithLoss):
            return m.n_classes
    return None


def _map_states(fn, state, template):
    """Applies fn(leaf, template_leaf) over matching nested lists/tuples/NamedTuples/dicts of tensors."""
    if isinstance(state, torch.Tensor):
        return fn(state, template)
    if isinstance(state, dict):
        return {k: _map_states(fn, v, template[k]) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        items = [_map_states(fn, s, t) for s, t in zip(state, template)]
        if hasattr(state, "_fields"):  # NamedTuple (attention's KVCache)
            return type(state)(*items)
        return type(state)(items)
    return state


def _like(state, template):
    """The state in the template's form: complex leaves become (..., 2) real ones where the template's
    are real (S4D steps real states, which compile); everything else unchanged."""
    def convert(s, t):
        if isinstance(t, torch.Tensor) and s.is_complex() and not t.is_complex():
            return torch.view_as_real(s)
        return s

    return _map_states(convert, state, template)


def _params_key(model: nn.Module) -> tuple:
    return tuple((id(p), p._version, p.dtype, p.device) for p in model.parameters())


def _compiled_step(model: nn.Module, backend: str):
    """``model.compile_step(backend)``, kept on the model while its parameters are unchanged."""
    cache = model.__dict__.setdefault("_ssmkit_compiled_steps", {})
    key = _params_key(model)
    hit = cache.get(backend)
    if hit is not None and hit[0] == key:
        return hit[1]
    fn = model.compile_step(backend)
    cache[backend] = (key, fn)
    return fn


def _uncompilable(state) -> str | None:
    """Why a state (any nesting) cannot go through an ahead-of-time compiled step, or None."""
    if isinstance(state, torch.Tensor):
        return "a state is complex, which inductor cannot compile" if state.is_complex() else None
    if hasattr(state, "_fields"):
        return f"a state is a {type(state).__name__} (attention's key/value cache grows every step)"
    items = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else ()
    return next((why for why in map(_uncompilable, items) if why), None)


def _choose_backend(model: nn.Module, compile: str, n_steps: int, template) -> tuple[str, str]:
    """(backend, why) for ``compile`` in auto/aot/inductor/none."""
    if compile == "none":
        return "eager", "compile='none'"
    if not hasattr(model, "compile_step"):
        if compile != "auto":
            raise UserError(f"compile={compile!r}: {type(model).__name__} has no compile_step(); use compile='none'")
        return "eager", f"{type(model).__name__} has no compile_step()"
    if compile in ("aot", "inductor"):
        return compile, f"compile={compile!r}"
    device = next(model.parameters()).device
    why = aot_unsupported(model, template) if hasattr(model, "blocks") else _uncompilable(template)
    if why is not None:
        return "eager", f"no ahead-of-time step: {why}"
    if device.type != "cpu":
        return "eager", f"the ahead-of-time step is used on the CPU only (model on {device.type})"
    if n_steps < AUTO_COMPILE_MIN_STEPS:
        return "eager", (f"{n_steps} steps < {AUTO_COMPILE_MIN_STEPS}: compiling (20-75 s) would cost more than "
                         "it saves (compile='aot' forces it)")
    return "aot", f"{n_steps} steps, every state real"


def _prepare_step(model, backend: str, token: torch.Tensor, state) -> tuple[Callable, str, str, float]:
    """The step to run and its name; compiles (timed) with one warm-up call, falls back to eager on failure."""
    if backend == "eager":
        return model.step, "eager", "", 0.0
    t0 = time.perf_counter()
    try:
        fn = _compiled_step(model, backend)
        fn(token, state)  # compiles for this signature; the step is pure, the result is dropped
    except Exception as e:  # noqa: BLE001 - export/inductor raise many types; the warning names it
        warnings.warn(f"compile_step({backend!r}) failed ({type(e).__name__}: {first_line(e, empty='')}); stepping eagerly",
                      RuntimeWarning, stacklevel=3)
        return model.step, "eager", f"compile_step({backend!r}) failed: {type(e).__name__}", time.perf_counter() - t0
    return fn, backend, "", time.perf_counter() - t0


def _check_prompt(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    prompt = torch.as_tensor(prompt)
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.dim() != 2 or prompt.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise UserError(f"the prompt must be token ids of shape (batch, length) or (length,), got "
                        f"{prompt.dtype} of shape {tuple(prompt.shape)}")
    if prompt.shape[1] == 0:
        raise UserError("the prompt is empty: give at least one token (e.g. the task's start token)")
    vocab = _vocabulary(model)
    if vocab is not None and (prompt.min() < 0 or prompt.max() >= vocab):
        bad = prompt[(prompt < 0) | (prompt >= vocab)][0].item()
        raise UserError(f"the prompt holds token id {bad}, outside the model's vocabulary 0..{vocab - 1}")
    return prompt.long().to(next(model.parameters()).device)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    compile: str = "auto",
    prefill: str = "conv",
    progress: Callable[[int], None] | None = None,
    keep_scores: bool = False,
) -> Generation:
    """Continues each prompt by ``max_new_tokens`` tokens.

    Args:
        model: a model with per-position scores (pool None) and a recurrence in every layer
            (``SequenceModel`` or SaShiMi); run in eval mode (its mode is restored after).
        prompt: (B, Lp) or (Lp,) token ids, Lp >= 1; one row per sequence to continue.
        temperature: 0 is greedy (argmax); otherwise scores / temperature are sampled.
        top_k, top_p: keep only the k most likely tokens / the smallest set with probability >= p.
        seed: seeds the sampling generator (deterministic for a seed); None draws one (in the result).
        compile: ``auto`` | ``aot`` | ``inductor`` | ``none`` (see the module docstring).
        prefill: ``conv`` reads the prompt with one convolution-mode forward (fast); ``step`` steps it
            token by token (the reference; same result).
        progress: called with the number of new tokens done after each one.
        keep_scores: also return the scores of every drawn token (``Generation.scores``).
    """
    _check_options(model, temperature, top_k, top_p, compile, prefill, max_new_tokens)
    prompt = _check_prompt(model, prompt)
    B, Lp = prompt.shape
    generator, seed = make_generator(seed, prompt.device)
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        scores, state = _prefill(model, prompt, prefill)
        prefill_s = time.perf_counter() - t0
        template = model.default_state(B, device=prompt.device, real=True) if hasattr(model, "compile_step") else state
        backend, note = _choose_backend(model, compile, max_new_tokens - 1, template)
        if backend != "eager":
            state = _like(state, template)
        token = sample_next(scores, temperature, top_k, top_p, generator)
        step, backend, failed, compile_s = _prepare_step(model, backend, token, state)
        note = failed or note
        log.info("generation step: %s (%s)", backend, note)
        t0 = time.perf_counter()
        out, kept = _decode(step, token, scores, state, max_new_tokens,
                            lambda s: sample_next(s, temperature, top_k, top_p, generator), progress, keep_scores)
        decode_s = time.perf_counter() - t0
    finally:
        model.train(was_training)
    tokens = torch.cat([prompt, torch.stack(out, dim=1)], dim=1)
    kept = torch.stack(kept, dim=1) if keep_scores else None
    return Generation(tokens, Lp, backend, note, seed, prefill_s, compile_s, decode_s, kept)


def _check_options(model, temperature, top_k, top_p, compile: str, prefill: str, max_new_tokens: int) -> None:
    """One-line UserErrors for a model without recurrence and for bad sampling/compile/prefill options."""
    check_recurrent(model, "generation")
    check_sampling(temperature, top_k, top_p)
    if compile not in COMPILE_MODES:
        raise UserError(f"unknown compile={compile!r}; choose one of {', '.join(COMPILE_MODES)}")
    if prefill not in PREFILL_MODES:
        raise UserError(f"unknown prefill={prefill!r}; choose conv or step")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


def _prefill(model, prompt: torch.Tensor, prefill: str):
    """(scores of the token after the prompt (B, V), every layer's state after the prompt)."""
    if prefill == "conv":
        scores, state = model(prompt, return_state=True)  # (B, Lp, V), per-layer states
        return scores[:, -1], state
    state = model.default_state(prompt.shape[0], device=prompt.device)
    for t in range(prompt.shape[1]):
        scores, state = model.step(prompt[:, t], state)
    return scores, state


def _decode(step, token, scores, state, max_new_tokens: int, sample, progress, keep_scores: bool):
    """The new tokens (the first, ``token``, already drawn from ``scores``) and, with ``keep_scores``, the scores
    each was drawn from."""
    out, kept = [token], [scores] if keep_scores else None
    if progress is not None:
        progress(1)
    for i in range(1, max_new_tokens):
        scores, state = step(token, state)
        token = sample(scores)
        out.append(token)
        if keep_scores:
            kept.append(scores)
        if progress is not None:
            progress(i + 1)
    return out, kept
