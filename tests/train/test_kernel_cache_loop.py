"""Under gradient accumulation the loop computes each kernel once per optimizer step, and lands on the
same weights as recomputing it for every micro-batch."""
import torch
from safetensors.torch import load_file

from ssmkit.ops import cache
from ssmkit.recipe import validate
from ssmkit.runs.checkpoint import find_checkpoint
from ssmkit.train import loop
from ssmkit.train.loop import train


def recipe(tmp_path) -> dict:
    return {
        "name": "accum",
        "task": {"name": "cumsum", "seq_len": 16, "samples_per_epoch": 64, "val_samples": 8},
        "model": {"d_model": 8, "n_layers": 2, "mixer": {"name": "s4d", "d_state": 4}},
        # SGD: the weights then differ by the gradients' rounding only. Adam divides by sqrt(v) + 1e-8, so a
        # gradient entry near zero turns float-order noise into a visible update (2.6e-5 on A_real).
        "optimizer": {"name": "sgd", "lr": 1e-2},
        "train": {"batch_size": 4, "grad_accum": 4, "max_steps": 3, "log_every": 1, "runs_dir": str(tmp_path)},
    }


def test_cached_kernels_give_the_same_weights_with_fewer_kernel_computations(tmp_path, monkeypatch):
    computed = []
    original = cache.KernelCache.get

    def counting_get(self, key, compute):
        return original(self, key, lambda: computed.append(1) or compute())

    monkeypatch.setattr(cache.KernelCache, "get", counting_get)
    cached = train(validate(recipe(tmp_path)))["run_dir"]
    n_cached = len(computed)
    monkeypatch.setattr(loop, "set_kernel_caching", lambda model, on: 0)  # recompute per micro-batch
    plain = train(validate(recipe(tmp_path)))["run_dir"]
    n_plain = len(computed) - n_cached  # the plain run goes through the cache only in evaluation
    # training: 3 steps x 2 layers, once per step instead of once per micro-batch (4 per step)
    assert n_cached - n_plain == 3 * 2
    a, b = (load_file(str(find_checkpoint(r) / "model.safetensors")) for r in (cached, plain))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
