"""The backend table every op shares (ssmkit/ops/dispatch.py), on a toy op whose implementations we control: what
``auto`` skips and why, one-line errors for a name that cannot run, self-tests (once, with gradients, whatever the
caller's mode), the log lines, the reason strings ``ssmkit doctor`` prints; and invariants of the real ops' tables."""
import logging

import pytest
import torch

from ssmkit.errors import UserError
from ssmkit.ops import cauchy, causal_conv, dispatch, selective_scan, ssd, vandermonde
from ssmkit.ops.dispatch import BackendError, BackendUnavailable, Call, Impl, Op, Probe

CPU = torch.device("cpu")
F32 = frozenset((torch.float32,))


def reference(x):
    return x * 2


def wrong(x):  # a broken build: the right shape, the wrong numbers
    return x * 3


def self_test_of(fn):
    def run(device):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).to(device)
        return dispatch.max_relative_error(fn, reference, [x], lambda y: y.square().sum())
    return run


class Toy:
    """A toy op: ``fast`` (probe, self-test, CPU only, float32, no start state), ``broken`` (passes its probe, fails
    its self-test), ``named`` (by name only) and the reference ``plain`` (runs everything)."""

    def __init__(self, monkeypatch, fast_ok=True, fast_fn=reference, broken_first=False):
        monkeypatch.setattr(dispatch, "OPS", {})  # the toy does not join the real tables
        dispatch.reset()
        self.self_tests = []

        def counted(name, run):
            def test(device):
                self.self_tests.append((name, device.type, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
                return run(device)
            return test

        fast = Impl("fast", fast_fn, "the fast kernel", probe=lambda: Probe(fast_ok, "fast 1.0" if fast_ok else
                    "fastlib does not import (No module named 'fastlib'); pip install fastlib"),
                    devices=("cpu",), dtypes=(torch.float32,), features=frozenset(),
                    self_test=counted("fast", self_test_of(fast_fn)), tol=1e-6)
        broken = Impl("broken", wrong, "a broken build", probe=lambda: Probe(True, "broken 0.1"),
                      self_test=counted("broken", self_test_of(wrong)), tol=1e-6)
        impls = [broken, fast] if broken_first else [fast]
        impls += [Impl("named", reference, "by name only", auto=False),
                  Impl("plain", reference, "the reference")]
        self.op = Op("toy", "toy", impls, needs={"start_state": "it takes no start state"},
                     example=lambda d: Call(d, F32), example_text="a toy call")


@pytest.fixture(autouse=True)
def _forget():
    dispatch.reset()
    yield
    dispatch.reset()


def test_auto_takes_the_first_implementation_that_runs_and_logs_it_once(monkeypatch, caplog):
    toy = Toy(monkeypatch)
    with caplog.at_level(logging.INFO, logger="ssmkit.ops"):
        assert toy.op.choose("auto", Call(CPU, F32)) == "fast"
        assert toy.op.choose("auto", Call(CPU, F32)) == "fast"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["toy on cpu: using the fast backend (the fast kernel, self-test passed)"]
    assert toy.self_tests == [("fast", "cpu", True, False)]  # once per process and device type


def test_a_failed_probe_is_skipped_with_its_reason_and_refused_by_name(monkeypatch, caplog):
    toy = Toy(monkeypatch, fast_ok=False)
    with caplog.at_level(logging.INFO, logger="ssmkit.ops"):
        assert toy.op.choose("auto", Call(CPU, F32)) == "plain"
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ("toy on cpu: using the plain backend (fast not used: fastlib does not import (No module named "
                    "'fastlib'); pip install fastlib)")
    with pytest.raises(BackendUnavailable) as e:
        toy.op.choose("fast", Call(CPU, F32))
    assert str(e.value) == ("toy: backend 'fast' cannot run this call on cpu (fastlib does not import (No module "
                            "named 'fastlib'); pip install fastlib); choose auto or named or plain")
    assert isinstance(e.value, UserError)  # the CLI prints it as one line, exit code 2
    assert toy.self_tests == []  # nothing to test when the probe fails


def test_a_failed_self_test_is_skipped_warned_once_and_refused_by_name(monkeypatch, caplog):
    toy = Toy(monkeypatch, broken_first=True)
    with caplog.at_level(logging.INFO, logger="ssmkit.ops"):
        assert toy.op.choose("auto", Call(CPU, F32)) == "fast"
        assert toy.op.choose("auto", Call(CPU, F32)) == "fast"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("toy on cpu: the broken backend failed its self-test (self-test "
                                                     "error 1.")  # the gradients: |18x - 8x| / (1 + |8x|)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and "broken not used: self-test error" in info[0] and "> tolerance 1e-06" in info[0]
    with pytest.raises(BackendUnavailable, match=r"^toy: backend 'broken' cannot run this call on cpu \(self-test "
                                                 r"error .* > tolerance 1e-06\); choose auto or fast or named or plain$"):
        toy.op.choose("broken", Call(CPU, F32))
    assert [t[0] for t in toy.self_tests] == ["broken", "fast"]  # each once


def test_a_self_test_that_raises_is_a_failed_self_test(monkeypatch):
    def crashes(x):
        raise RuntimeError("kernel launch failed\nsecond line")

    toy = Toy(monkeypatch, fast_fn=crashes)
    assert toy.op.choose("auto", Call(CPU, F32)) == "plain"
    ok, reason = toy.op.reason("fast", CPU)
    assert not ok and reason == "self-test raised RuntimeError: kernel launch failed second line"


def test_an_implementation_without_a_needed_feature_device_or_dtype_is_skipped(monkeypatch):
    toy = Toy(monkeypatch)
    cases = {Call(CPU, F32, frozenset(("start_state",))): "it takes no start state",
             Call(torch.device("cuda"), F32): "it runs on the CPU only",
             Call(CPU, frozenset((torch.float64,))): "it takes float32 inputs, got float64"}
    for call, why in cases.items():
        pick, skipped, rest = toy.op.explain(call)
        assert (pick, skipped, rest) == ("plain", [("fast", why)], ["named"])
        with pytest.raises(BackendUnavailable, match=f"backend 'fast' cannot run this call on {call.device.type} "
                                                     rf"\({why}\); choose auto or named or plain$"):
            toy.op.choose("fast", call)
    assert toy.self_tests == []  # a call it cannot take never runs its self-test


def test_self_tests_run_with_gradients_whatever_the_callers_mode(monkeypatch):
    toy = Toy(monkeypatch)
    with torch.inference_mode():
        assert toy.op.choose("auto", Call(CPU, F32)) == "fast"
    assert toy.self_tests == [("fast", "cpu", True, False)]
    dispatch.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert toy.op.choose("fast", Call(CPU, F32)) == "fast"
    assert toy.self_tests[1] == ("fast", "cpu", True, False)
    assert toy.op.reason("fast", CPU)[1].startswith("the fast kernel; fast 1.0; self-test error 0.00e+00")


def test_by_name_only_and_size_preferences(monkeypatch):
    toy = Toy(monkeypatch)
    assert toy.op.choose("named", Call(CPU, F32)) == "named"  # auto never takes it, a name does
    big = Impl("small_only", reference, "materialises", auto=lambda c: None if c.size <= 10 else f"{c.size} > 10")
    op = Op("toy2", "toy2", [big, Impl("plain", reference, "the reference")])
    assert op.choose("auto", Call(CPU, F32, size=10)) == "small_only"
    assert op.explain(Call(CPU, F32, size=11)) == ("plain", [("small_only", "11 > 10")], [])
    assert op.choose("small_only", Call(CPU, F32, size=11)) == "small_only"  # a preference, not a limit


def test_unknown_names_and_declarations(monkeypatch):
    toy = Toy(monkeypatch)
    with pytest.raises(BackendError, match=r"unknown toy backend 'fats' \(did you mean 'fast'\?\); choose one of "
                                           r"auto, fast, named, plain") as e:
        toy.op.choose("fats", Call(CPU, F32))
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match=r"the odd backend declares unknown features \['grad_z'\]"):
        Op("toy3", "toy3", [Impl("odd", reference, "", features=frozenset(("grad_z",)))], needs={"z_grad": "..."})


def test_adding_an_implementation_is_one_entry(monkeypatch):
    """What the mamba2 mixer's mamba_ssm SSD or any new kernel does: one Impl in the op's table."""
    toy = Toy(monkeypatch)
    toy.op.impls = {"new": Impl("new", reference, "a new kernel", self_test=self_test_of(reference), tol=1e-6),
                    **toy.op.impls}
    toy.op.fns = {n: i.fn for n, i in toy.op.impls.items()}
    assert toy.op.choose("auto", Call(CPU, F32)) == "new"
    assert toy.op.names == ("auto", "new", "fast", "named", "plain")


OP_MODULES = (cauchy, vandermonde, selective_scan, causal_conv, ssd)


@pytest.mark.parametrize("module", OP_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_real_op_has_a_table_auto_cannot_fail_and_doctor_can_read(module):
    op = module.OP
    assert dispatch.OPS[op.name] is op and module.BACKENDS == op.names
    fallback = [i for i in op.impls.values() if i.auto is True and i.probe is None and i.devices is None
                and i.dtypes is None and i.features is None and i.check is None and i.self_test is None]
    assert fallback, f"{op.name}: auto needs one implementation that runs every call"
    for impl in op.impls.values():  # code a build or an install can break (it has a probe) is self-tested
        if impl.probe is not None and impl.fn is not vandermonde._no_kernel:
            assert impl.self_test is not None, f"{op.name}/{impl.name} has no self-test"
    for device in (CPU, torch.device("cuda")) if torch.cuda.is_available() else (CPU,):
        pick, skipped, rest = op.explain(op.example(device))
        assert pick in op.impls and all("\n" not in why for _, why in skipped)
        for name in op.impls:
            ok, why = op.reason(name, device)
            assert why and "\n" not in why
