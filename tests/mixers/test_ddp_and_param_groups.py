"""Every registered mixer under DistributedDataParallel (two real gloo processes) and in ``param_groups``.

DDP: the gradients averaged over two ranks, each holding half the batch, equal one copy's gradients over the whole
batch, for every mixer, with ``find_unused_parameters=False`` (a parameter that takes no part in the forward is an
error there). ``param_groups``: a mixer's ``lr`` option puts its SSM parameters (decays, step sizes, filters) in
their own group without weight decay, and leaves its projections in the optimizer's group.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_contract import make

from ssmkit.mixers import MIXERS, mixer_parameters
from ssmkit.train.optim import param_groups

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
def test_every_mixer_trains_under_ddp(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sorted(result) == sorted(MIXERS.names())
        bad = {k: v for k, v in result.items() if not isinstance(v, float) or v > 1e-9}
        assert not bad, f"rank {rank}: {bad}"


#: where a mixer's SSM learning rate is set when it is not its ``lr`` option (Hyena: its filter's, as the reference)
LR_OPTION = {"hyena": {"filter_options": {"lr": 1e-4}}}
WITH_LR = [n for n in MIXERS.names() if "lr" in mixer_parameters(n) or n in LR_OPTION]


def test_the_ssm_mixers_take_an_lr():
    """Every mixer with a state-space, decay or filter parameterisation takes an SSM learning rate (attention has
    nothing to tag)."""
    assert set(MIXERS.names()) - set(WITH_LR) <= {"attn"}


@pytest.mark.parametrize("name", WITH_LR)
def test_lr_option_makes_its_own_group_without_weight_decay(name):
    m = make(name, **LR_OPTION.get(name, {"lr": 1e-4}))
    groups = param_groups(m, lr=1e-2, weight_decay=0.1)
    ssm = [g for g in groups if g["lr"] == 1e-4]
    assert len(ssm) == 1 and ssm[0]["weight_decay"] == 0.0 and ssm[0]["params"], [g["names"] for g in groups]
    main = [g for g in groups if g["lr"] == 1e-2 and g["weight_decay"] == 0.1]
    assert main and all(p.dim() >= 2 for g in main for p in g["params"])
    tagged = {n for n, p in m.named_parameters() if getattr(p, "_optim", {}).get("lr") == 1e-4}
    assert tagged == set(ssm[0]["names"])
    # the projections (Linear weights; Hyena's filter FFN excepted, tagged as the reference) stay in the optimizer's
    linear = {f"{mod}.weight" for mod, x in m.named_modules() if isinstance(x, torch.nn.Linear)}
    assert linear - tagged and all(n.startswith("filters.") for n in linear & tagged)
