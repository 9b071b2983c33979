import torch

from ssmkit import SequenceModel, param_groups
from ssmkit.train.optim import describe_groups


def groups_by_name(groups):
    return {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}


def test_ssm_parameters_get_their_own_lr_and_no_weight_decay():
    m = SequenceModel(3, 2, d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8, lr={"A": 1e-3, "dt": 2e-3, "B": 0}))
    g = groups_by_name(param_groups(m, lr=1e-2, weight_decay=0.1))
    assert g["blocks.0.mixer.kernel.A_real"] == (1e-3, 0.0)
    assert g["blocks.1.mixer.kernel.log_dt"] == (2e-3, 0.0)
    assert "blocks.0.mixer.kernel.B" not in g  # frozen: a buffer
    assert g["blocks.0.mixer.kernel.C"] == (1e-2, 0.1)
    assert g["blocks.0.mixer.post.out.0.weight"] == (1e-2, 0.1)
    # norms, biases and the skip D: no weight decay
    assert g["blocks.0.norm.norm.weight"] == (1e-2, 0.0)
    assert g["blocks.0.mixer.post.out.0.bias"] == (1e-2, 0.0)
    assert g["blocks.0.mixer.D"] == (1e-2, 0.0)
    # every trainable parameter is in exactly one group
    assert sorted(g) == sorted(n for n, p in m.named_parameters())


def test_groups_drive_a_real_optimizer_and_describe():
    m = SequenceModel(3, 2, d_model=8, n_layers=1, mixer=dict(name="s4d", d_state=4, lr=5e-4, wd={"A": 0.01}))
    groups = param_groups(m, lr=1e-2, weight_decay=0.1)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    lrs = sorted({pg["lr"] for pg in opt.param_groups})
    assert lrs == [5e-4, 1e-2]
    rows = describe_groups(groups)
    assert sum(r["tensors"] for r in rows) == len(list(m.parameters()))
    a_group = next(g for g in groups if "blocks.0.mixer.kernel.A_real" in g["names"])
    assert (a_group["lr"], a_group["weight_decay"]) == (5e-4, 0.01)
