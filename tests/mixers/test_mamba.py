"""The Mamba mixer against the block written out in float64 in this file (explicit convolution sum and
recurrence), its initialisation, step/state passing, parameter groups, option errors and DDP."""
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from helpers import run_steps

from ssmkit import SequenceLayer, SequenceModel
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
    y, _ = m(u)
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
    torch.manual_seed(0)
    layer = SequenceLayer(8, kernel="mamba", d_state=4, d_conv=d_conv, output=None).double().eval()
    x = torch.randn(3, 8, 25, dtype=torch.float64)
    y = layer(x)
    ys, state = run_steps(layer, x, layer.default_state(3))
    torch.testing.assert_close(ys, y, rtol=1e-10, atol=1e-10)
    for cut in (1, 2, 13):  # the convolution window crosses the cut
        y1, s1 = layer(x[..., :cut], return_state=True)
        y2, s2 = layer(x[..., cut:], state=s1, return_state=True)
        torch.testing.assert_close(torch.cat([y1, y2], -1), y, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s2.ssm, state.ssm, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s2.conv, state.conv)


def test_bidirectional_mamba_has_no_state():
    layer = SequenceLayer(4, kernel="mamba", bidirectional=True)
    assert not layer.has_state
    with pytest.raises(ValueError, match="has no recurrent state"):
        layer.default_state(1)


def test_ssm_parameters_get_their_own_lr_and_no_weight_decay():
    model = SequenceModel(3, 2, d_model=16, n_layers=2, layer={"kernel": "mamba", "lr": 1e-3, "output": None})
    groups = param_groups(model, lr=4e-3, weight_decay=0.1)
    by_name = {n.split("mixer.")[-1]: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"] if "mixer" in n}
    for name in ("ssm.A_log", "ssm.D", "ssm.dt_proj.bias"):
        assert by_name[name] == (1e-3, 0.0), name
    for name in ("in_proj.weight", "out_proj.weight", "ssm.x_proj.weight", "ssm.dt_proj.weight"):
        assert by_name[name] == (4e-3, 0.1), name
    untagged = param_groups(SequenceModel(3, 2, d_model=16, layer={"kernel": "mamba"}), lr=4e-3, weight_decay=0.1)
    assert any("mixer.ssm.A_log" in n and g["lr"] == 4e-3 and g["weight_decay"] == 0.0 for g in untagged for n in g["names"])


@pytest.mark.parametrize("options, match", [
    ({"d_state": 0}, "d_state and d_conv must be >= 1"),
    ({"dt_min": 0.1, "dt_max": 0.01}, "dt_min <= dt_max"),
    ({"dt_rank": 0}, "dt_rank must be a positive integer"),
    ({"backend": "cuda"}, "unknown selective-scan backend"),
    ({"expand": 0}, "expand must be positive"),
    ({"d_stat": 4}, "did you mean"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ValueError, match=match):
        SequenceLayer(8, kernel="mamba", **options)


def _ddp_worker(rank, port, path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = SequenceModel(2, 1, d_model=8, n_layers=1, pool=None, layer={"kernel": "mamba", "d_state": 4, "output": None})
    ddp = DDP(model)
    x = torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(1))
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
    model = SequenceModel(2, 1, d_model=8, n_layers=1, pool=None, layer={"kernel": "mamba", "d_state": 4, "output": None})
    x = torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    ddp_grads = torch.load(tmp_path / "g.pt", weights_only=True)
    for n, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
