"""One backend dispatch for every op that has several implementations (Cauchy, Vandermonde, the selective scan,
the causal convolution, ...).

Each op declares one table, an :class:`Op`: its implementations (:class:`Impl`) in the order ``auto`` prefers them,
each with

* ``probe``: whether it is here at all (a package imports, the compiled extension has the kernel); ``None`` for code
  of this package, which is always here. Probes are cached by their owners (``ssmkit/ops/backends.py``);
* what it supports: ``devices`` (device types), ``dtypes`` (of the inputs), ``features`` (the op's optional needs a
  call may have, e.g. a start state or a gradient with respect to some input; ``None``: all of them) and ``check``,
  a per-call test for anything else, returning why not in one line;
* ``self_test(device)``: the largest error against the op's reference implementation on a tiny problem, values and
  gradients, and ``tol``. Run once per (op, implementation, device type) before first use, with gradients on,
  outside inference mode and autocast, whatever the caller's mode (a first call under ``no_grad`` once dropped the
  extension for the whole process). Only code that can be broken by a build or an install (compiled, third-party)
  carries one; the torch implementations are checked by ``tests/ops``.
* ``auto``: whether ``auto`` may take it: ``True``, ``False`` (by name only, e.g. pykeops) or a per-call test that
  returns why not (a size preference: the materialising reference for small problems only).

The rules, the same for every op:

* ``auto`` takes the first implementation that ``auto`` may take, that supports the call, whose probe succeeds and
  whose self-test passes on the call's device type. Every table has a plain-torch implementation that ``auto`` may
  take with no probe and no restriction (``tests/ops/test_dispatch.py`` checks it), so ``auto`` never fails. Its choice is logged once per (op, device type, choice) on the ``ssmkit.ops``
  logger at INFO, with the reason each implementation before it was not used; a failed self-test is logged once as
  a WARNING (a broken build, not a missing one).
* A name runs that implementation or raises :class:`BackendUnavailable`, one line naming why and the names that can
  run the call. An unknown name raises :class:`BackendError` (a ``ValueError``) with the choices.
* :meth:`Op.reason` is THE reason string of an (op, implementation) on a device: why it cannot run there, or what
  runs and how its self-test went. ``ssmkit doctor`` prints it, and :meth:`Op.explain` for what ``auto`` picks.

Adding an implementation to an op is one :class:`Impl` in its table (plus a probe in ``backends.py`` if it needs
an optional package); adding an op is one :class:`Op` in the op's module, which registers it in :data:`OPS`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ssmkit.errors import UserError
from ssmkit.registry import did_you_mean

log = logging.getLogger("ssmkit.ops")


class BackendError(UserError, ValueError):
    """An unknown backend name."""


class BackendUnavailable(UserError, RuntimeError):
    """A backend asked for by name cannot run here: not installed, failed its self-test, or lacks what the call
    needs (device, dtype, a feature)."""


@dataclass
class Probe:
    """Whether an implementation is here; ``reason`` says why not, or describes what was found."""

    ok: bool
    reason: str = ""
    module: object = None


@dataclass(frozen=True)
class Call:
    """What a call needs from an implementation: its device, the dtypes of its inputs, the op's optional features it
    uses (``needs``) and its size (elements the reference would materialise: for size preferences)."""

    device: torch.device
    dtypes: frozenset
    needs: frozenset = frozenset()
    size: int = 0


def float32_call(device: torch.device) -> Call:
    """A plain float32 call on ``device``: the ``example`` of the ops whose doctor row needs no size."""
    return Call(device, frozenset((torch.float32,)))


@dataclass(frozen=True)
class Impl:
    """One implementation of an op (see the module docstring for each field's meaning)."""

    name: str
    fn: Callable
    note: str
    probe: Callable[[], Probe] | None = None
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    features: frozenset | None = None
    check: Callable[[Call], str | None] | None = None
    self_test: Callable[[torch.device], float] | None = None
    tol: float = 0.0
    auto: bool | Callable[[Call], str | None] = True


#: every op's table, by op name (``ssmkit doctor`` walks it)
OPS: dict[str, Op] = {}

_self_tests: dict[tuple[str, str, str], Probe] = {}
_logged: set[tuple[str, str, str]] = set()
_DEVICE_WORDS = {"cpu": "the CPU", "cuda": "CUDA"}


class Op:
    """The table of one op (see the module docstring). ``label`` names it in errors ("unknown Cauchy backend 'x'");
    ``needs`` maps each optional feature a call may need to what an implementation without it lacks, in words;
    ``example(device)`` is a typical call and ``example_text`` says what it is (``ssmkit doctor``)."""

    def __init__(self, name: str, label: str, impls: Iterable[Impl], needs: dict[str, str] | None = None,
                 example: Callable[[torch.device], Call] | None = None, example_text: str = "") -> None:
        self.name, self.label, self.example, self.example_text = name, label, example, example_text
        self.needs = dict(needs or {})
        self.impls: dict[str, Impl] = {i.name: i for i in impls}
        #: name -> the function that runs (what the op's front end calls)
        self.fns: dict[str, Callable] = {name: i.fn for name, i in self.impls.items()}
        for i in self.impls.values():
            unknown = (i.features or frozenset()) - set(self.needs)
            if unknown:
                raise ValueError(f"{name}: the {i.name} backend declares unknown features {sorted(unknown)}")
        OPS[name] = self

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a caller may pass: ``auto`` and the implementations."""
        return ("auto", *self.impls)

    def impl(self, name: str) -> Impl:
        if name not in self.impls:
            raise BackendError(f"unknown {self.label} backend {name!r}{did_you_mean(name, self.names)}; "
                               f"choose one of {', '.join(self.names)}")
        return self.impls[name]

    def why_not(self, name: str, call: Call, test: bool = True) -> str | None:
        """None if ``name`` can run ``call`` (self-testing it first if it has not been on this device type), else
        why not, in one line. ``test=False`` runs no self-test (a failed one already run still counts)."""
        impl = self.impl(name)
        if impl.devices is not None and call.device.type not in impl.devices:
            return f"it runs on {' and '.join(_DEVICE_WORDS.get(d, d) for d in impl.devices)} only"
        if impl.probe is not None:
            probe = impl.probe()
            if not probe.ok:
                return _one_line(probe.reason)
        if impl.dtypes is not None and not call.dtypes <= set(impl.dtypes):
            got = ", ".join(sorted(str(d).removeprefix("torch.") for d in call.dtypes))
            want = "/".join(str(d).removeprefix("torch.") for d in impl.dtypes)
            return f"it takes {want} inputs, got {got}"
        if impl.features is not None:
            for need in sorted(call.needs - impl.features):
                return self.needs[need]
        if impl.check is not None and (why := impl.check(call)):
            return _one_line(why)
        if impl.self_test is not None:
            result = self.self_test(name, call.device) if test else _self_tests.get((self.name, name, call.device.type))
            if result is not None and not result.ok:
                return result.reason
        return None

    def self_test(self, name: str, device: torch.device) -> Probe:
        """The self-test of ``name`` on ``device``'s type, run once per process (see the module docstring)."""
        impl = self.impls[name]
        key = (self.name, name, device.type)
        if key not in _self_tests:
            try:
                with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                    err = impl.self_test(device)
                ok = err <= impl.tol
                _self_tests[key] = Probe(ok, f"self-test error {err:.2e}" + ("" if ok else f" > tolerance {impl.tol:.0e}"))
            except (RuntimeError, ValueError, TypeError, ImportError, OSError) as e:
                # keops raises plain RuntimeError / ValueError on compile failures; the extension RuntimeError from
                # TORCH_CHECK. Anything else is a bug and propagates.
                _self_tests[key] = Probe(False, f"self-test raised {type(e).__name__}: {_one_line(str(e))}")
            if not _self_tests[key].ok:
                log.warning("%s on %s: the %s backend failed its self-test (%s); it will not be used in this process",
                            self.name, device.type, name, _self_tests[key].reason)
        return _self_tests[key]

    def choose(self, requested: str, call: Call) -> str:
        """The implementation that runs ``call``: ``requested`` itself (or :class:`BackendUnavailable`), or for
        ``auto`` the first that may and can (see the module docstring)."""
        if requested != "auto":
            why = self.why_not(requested, call)
            if why is not None:
                runnable = [n for n in self.impls if self.why_not(n, call, test=False) is None]
                raise BackendUnavailable(
                    f"{self.name}: backend {requested!r} cannot run this call on {call.device.type} ({why}); "
                    f"choose {' or '.join(['auto', *runnable])}")
            return requested
        pick, skipped = self._auto(call)
        key = (self.name, call.device.type, pick)
        if key not in _logged:
            _logged.add(key)
            impl = self.impls[pick]
            how = "; ".join(f"{n} not used: {why}" for n, why in skipped) or (
                impl.note + (", self-test passed" if impl.self_test is not None else ""))
            log.info("%s on %s: using the %s backend (%s)", self.name, call.device.type, pick, how)
        return pick

    def _auto(self, call: Call) -> tuple[str, list[tuple[str, str]]]:
        skipped = []
        for name, impl in self.impls.items():
            if impl.auto is False:
                continue
            why = impl.auto(call) if callable(impl.auto) else None
            why = why or self.why_not(name, call)
            if why is None:
                return name, skipped
            skipped.append((name, why))
        raise BackendUnavailable(f"{self.name}: no backend can run this call on {call.device.type} ("
                                 + "; ".join(f"{n}: {w}" for n, w in skipped) + ")")

    def explain(self, call: Call) -> tuple[str, list[tuple[str, str]], list[str]]:
        """What ``auto`` picks for ``call``: (the pick, [(an implementation before it, why it was not used)], the
        names it never reached or takes by name only)."""
        pick, skipped = self._auto(call)
        seen = {pick, *(n for n, _ in skipped)}
        return pick, skipped, [n for n in self.impls if n not in seen]

    def reason(self, name: str, device: torch.device) -> tuple[bool, str]:
        """THE reason string of (this op, ``name``) on ``device``, for its :attr:`example` call: (True, what runs and
        its self-test) or (False, why it cannot run)."""
        call = self.example(device) if self.example is not None else Call(device, frozenset())
        why = self.why_not(name, call)
        if why is not None:
            return False, why
        impl = self.impls[name]
        parts = [impl.note]
        if impl.probe is not None:
            parts.append(impl.probe().reason)
        if impl.self_test is not None:
            parts.append(self.self_test(name, device).reason)
        return True, "; ".join(p for p in parts if p)


def max_relative_error(candidate: Callable, reference: Callable, args: list[torch.Tensor], loss: Callable) -> float:
    """A self-test's error: candidate(*args) against reference(*args), each on fresh leaf copies of args; the largest
    difference of the outputs and of the gradients of ``loss(*outputs)`` with respect to every arg, relative to 1 +
    the reference's magnitude."""
    outs = []
    for fn in (candidate, reference):
        inputs = [t.clone().requires_grad_() for t in args]
        out = fn(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        outs.append([o.detach() for o in out] + list(torch.autograd.grad(loss(*out), inputs)))
    return max((a - r).abs().max().item() / (1 + r.abs().max().item()) for a, r in zip(*outs))


def reset() -> None:
    """Forgets self-tests and which choices were logged (for tests; probes: ``backends.reset``)."""
    _self_tests.clear()
    _logged.clear()


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no reason given"
