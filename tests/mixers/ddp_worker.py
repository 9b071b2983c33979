"""Run by tests/mixers/test_ddp_and_param_groups.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

For every registered mixer: a replica per rank wrapped in DistributedDataParallel (no unused parameters allowed),
each rank backpropagates its half of a batch; the averaged gradients must equal, on every rank, the gradients of
one unwrapped copy over the whole batch (float64). Writes ``<out>/rank<r>.json``: mixer -> relative error, or the
one-line error the mixer raised.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ssmkit.mixers import MIXERS

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # as pytest's
from test_contract import H, L, make  # noqa: E402


def check(name: str, rank: int, world: int) -> float:
    ref = make(name).double()
    replica = make(name).double()
    model = DDP(replica, find_unused_parameters=False)
    torch.manual_seed(1)
    u = torch.randn(2 * world, H, L, dtype=torch.float64)
    target = torch.randn(2 * world, H, L, dtype=torch.float64)
    mine = slice(2 * rank, 2 * rank + 2)
    ((model(u[mine]) - target[mine]) ** 2).mean().backward()
    ((ref(u) - target) ** 2).mean().backward()
    worst = 0.0
    for p, q in zip(replica.parameters(), ref.parameters()):
        if q.grad is None:
            continue
        err = ((p.grad - q.grad).norm() / q.grad.norm().clamp_min(1e-30)).item()
        worst = max(worst, err)
    return worst


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {}
    for name in MIXERS.names():
        try:
            result[name] = check(name, rank, world)
        except Exception as e:  # reported per mixer, so one failure names the mixer
            result[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
