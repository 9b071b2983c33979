"""The Mamba mixer against the block written out in float64 in this file (explicit convolution sum and
recurrence), its initialisation, step/state passing, parameter groups, option errors and DDP."""
import importlib
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from mixer_refs import run_chunks, run_steps

from ssmkit.mixers.mamba import Mamba
from ssmkit.train.optim import param_groups


def branch_reference(ssm, x):
    """One direction of the block between in_proj and the gate, from the parameters, position by position.
    x (B, E, L) float64 -> y (B, E, L)."""
    Bt, E, L = x.shape
    K, N, R = ssm.d_conv, ssm.d_state, ssm.dt_rank
    w = ssm.conv1d.weight[:, 0].double()  # (E, K)
    A = -torch.exp(ssm.A_log.double())  # (E, N)
    h = torch.zeros(Bt, E, N, dtype=torch.float64)
    ys = []
    for t in range(L):
        xc = ssm.conv1d.bias.double().expand(Bt, E).clone()
        for k in range(K):  # causal: tap k reads position t - (K - 1) + k
            s = t - (K - 1) + k
            if s >= 0:
                xc = xc + w[:, k] * x[:, :, s]
        xc = xc * torch.sigmoid(xc)  # SiLU
        dbc = xc @ ssm.x_proj.weight.double().T  # (B, R + 2N)
        dt, Bm, Cm = dbc[:, :R], dbc[:, R : R + N], dbc[:, R + N :]
        delta = torch.log1p(torch.exp(dt @ ssm.dt_proj.weight.double().T + ssm.dt_proj.bias.double()))  # softplus
        h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * xc).unsqueeze(-1) * Bm.unsqueeze(1)
        ys.append((h * Cm.unsqueeze(1)).sum(-1) + ssm.D.double() * xc)
    return torch.stack(ys, -1)


def block_reference(m: Mamba, u):
    """u (B, H, L) -> (B, H, L): in_proj, branch(es), SiLU gate, out_proj."""
    xz = torch.einsum("oh,bhl->bol", m.in_proj.weight.double(), u.double())
    x, z = xz.chunk(2, dim=1)
    y = branch_reference(m.ssm, x)
    if m.ssm_reverse is not None:
        y = y + branch_reference(m.ssm_reverse, x.flip(-1)).flip(-1)
    return torch.einsum("ho,bol->bhl", m.out_proj.weight.double(), y * z * torch.sigmoid(z))


def _extension_reason():
    from ssmkit.ops.selective_scan import _extension_reason

    return _extension_reason()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("d_conv", [1, 3])
@pytest.mark.parametrize("backend", ["torch", "extension"])  # extension: fused conv + SiLU, scan with the gate
def test_block_matches_the_explicit_computation(bidirectional, d_conv, backend):
    if backend == "extension" and _extension_reason() is not None:
        pytest.skip(f"the compiled extension's scan is not available here: {_extension_reason()}")
    torch.manual_seed(0)
    m = Mamba(6, bidirectional=bidirectional, d_state=3, d_conv=d_conv, expand=1.5, dt_rank=2, backend=backend).double()
    with torch.no_grad():  # larger steps than the init, so the recurrence carries far
        m.ssm.dt_proj.bias.add_(2.0)
    u = torch.randn(2, 6, 19, dtype=torch.float64, requires_grad=True)
    y = m(u)
    y_ref = block_reference(m, u)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y)
    wrt = [u, *m.parameters()]
    for g, r in zip(torch.autograd.grad((y * w).sum(), wrt), torch.autograd.grad((y_ref * w).sum(), wrt)):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    m = Mamba(40, d_state=16)  # dt_rank auto = ceil(40 / 16) = 3, E = 80
    assert m.d_inner == 80 and m.ssm.dt_rank == 3 and m.ssm.x_proj.out_features == 3 + 2 * 16
    torch.testing.assert_close(m.ssm.A_log, torch.log(torch.arange(1.0, 17)).expand(80, 16))  # S4D-Real: A = -(1..N)
    assert torch.equal(m.ssm.D, torch.ones(80))
    dt = F.softplus(m.ssm.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    log_dt = dt.log()  # log-uniform on [log 1e-3, log 1e-1]: mean near the middle, both ends reached
    assert abs(log_dt.mean().item() - math.log(1e-2)) < 0.6
    assert log_dt.min() < math.log(2e-3) and log_dt.max() > math.log(5e-2)
    bound = 3**-0.5
    assert m.ssm.dt_proj.weight.abs().max() <= bound and m.in_proj.bias is None and m.out_proj.bias is None


@pytest.mark.parametrize("d_conv", [1, 4])
def test_step_and_state_passing_equal_the_full_forward(d_conv):
    """forward, ``step`` token by token and forward in chunks passing the state all equal the block written out."""
    torch.manual_seed(0)
    m = Mamba(8, d_state=4, d_conv=d_conv).double().eval()
    with torch.no_grad():  # larger steps than the init, so the state carries far
        m.ssm.dt_proj.bias.add_(2.0)
    x = torch.randn(3, 8, 25, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, block_reference(m, x), rtol=1e-10, atol=1e-10)
    m.setup_step()
    ys, state = run_steps(m, x, m.default_state(3))
    torch.testing.assert_close(ys, y, rtol=1e-10, atol=1e-10)
    for cuts in ((1,), (2,), (13,), (1, 2, 3, 20)):  # the convolution window crosses the cuts
        yc, s = run_chunks(m, x, cuts)
        torch.testing.assert_close(yc, y, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s.ssm, state.ssm, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s.conv, state.conv)


def test_bidirectional_mamba_has_no_state():
    m = Mamba(4, bidirectional=True)
    assert not m.has_state
    for call in (lambda: m.default_state(1), lambda: m(torch.randn(1, 4, 5), return_state=True),
                 lambda: m.step(torch.randn(1, 4), None)):
        with pytest.raises(ValueError, match="'mamba' mixer has no recurren.*: a bidirectional mixer sees the future"):
            call()


def test_rate_other_than_one_is_refused_in_one_line():
    m = Mamba(4)
    for call in (lambda: m(torch.randn(1, 4, 5), rate=2.0), lambda: m.setup_step(rate=0.5)):
        with pytest.raises(ValueError, match="mixer 'mamba' computes its step size from the input.*use rate=1") as err:
            call()
        assert "\n" not in str(err.value)
    m.setup_step(rate=1.0)


def test_padding_each_sample_equals_the_sample_alone():
    """``lengths`` with the padding zeroed (the block's job): the valid outputs of either direction equal the sample
    run alone; the reverse branch starts at each sample's own end."""
    torch.manual_seed(2)
    for bidirectional in (False, True):
        m = Mamba(6, bidirectional=bidirectional, d_state=3, expand=1).double()
        x = torch.randn(2, 6, 17, dtype=torch.float64)
        x[1, :, 11:] = 0
        y = m(x, lengths=torch.tensor([17, 11]))
        torch.testing.assert_close(y[1, :, :11], m(x[1:, :, :11])[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(y[0], m(x[:1])[0], rtol=1e-10, atol=1e-10)


def test_ssm_parameters_get_their_own_lr_and_no_weight_decay():
    m = Mamba(16, lr=1e-3)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in param_groups(m, lr=4e-3, weight_decay=0.1) for n in g["names"]}
    for name in ("ssm.A_log", "ssm.D", "ssm.dt_proj.bias"):
        assert by_name[name] == (1e-3, 0.0), name
    for name in ("in_proj.weight", "out_proj.weight", "ssm.x_proj.weight", "ssm.dt_proj.weight"):
        assert by_name[name] == (4e-3, 0.1), name
    untagged = param_groups(Mamba(16), lr=4e-3, weight_decay=0.1)
    assert any(n == "ssm.A_log" and g["lr"] == 4e-3 and g["weight_decay"] == 0.0 for g in untagged for n in g["names"])


@pytest.mark.parametrize("options, match", [
    ({"d_state": 0}, "d_state and d_conv must be >= 1"),
    ({"dt_min": 0.1, "dt_max": 0.01}, "dt_min <= dt_max"),
    ({"dt_rank": 0}, "dt_rank must be a positive integer"),
    ({"backend": "cuda"}, "unknown selective-scan backend"),
    ({"expand": 0}, "expand must be positive"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ValueError, match=match) as err:
        Mamba(8, **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options", [{"d_stat": 4}, {"output": None}, {"activation": "gelu"}])
def test_unknown_options_name_the_fix(options):
    """A misspelt option gets a did-you-mean; ``output``/``activation`` are no Mamba options (out_proj is its map)."""
    build_mixer = getattr(importlib.import_module("ssmkit.mixers"), "build_mixer", None)
    if build_mixer is None:
        pytest.skip("ssmkit.mixers.build_mixer (the mixer registry of issue #23) is not in this tree yet")
    with pytest.raises(ValueError, match="mamba") as err:
        build_mixer(8, {"name": "mamba", **options})
    assert "\n" not in str(err.value)
    if "d_stat" in options:
        assert "did you mean 'd_state'" in str(err.value)


def _ddp_worker(rank, port, path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = Mamba(8, d_state=4)
    ddp = DDP(model)
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(1))
    ddp(x[2 * rank : 2 * rank + 2]).square().mean().backward()  # each rank its half of the batch
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, path)
    dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_gradients_equal_the_full_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.multiprocessing.spawn(_ddp_worker, args=(port, str(tmp_path / "g.pt")), nprocs=2)
    torch.manual_seed(0)
    model = Mamba(8, d_state=4)
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    ddp_grads = torch.load(tmp_path / "g.pt", weights_only=True)
    for n, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
