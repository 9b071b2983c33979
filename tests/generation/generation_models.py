"""Tiny float64 models for the generation and streaming tests: every kernel with a step, both backbones."""
import torch

from ssmkit import SequenceModel

V, D = 7, 8  # vocabulary, width

# Every mixer configuration that has a recurrent step (SGConv has none: tested as a refusal).
STEP_KERNELS = {
    "s4d": dict(name="s4d", d_state=8),
    "s4d-real-bilinear": dict(name="s4d", d_state=4, init="real", disc="bilinear"),
    "s4-nplr": dict(name="s4", d_state=8),
    "s4-dplr": dict(name="s4", d_state=8, mode="dplr"),
    "s4-diag": dict(name="s4", d_state=8, mode="diag"),
    "dss-exp": dict(name="dss", d_state=8),
    "dss-softmax": dict(name="dss", d_state=8, version="softmax", softmax_length=64),
    "dlr": dict(name="dlr", d_state=16),
    "attn": dict(name="attn", n_heads=2),
    "attn-local": dict(name="attn", n_heads=2, chunk_size=4),
}


def has_sashimi() -> bool:
    try:
        import ssmkit.models.sashimi  # noqa: F401
    except ImportError:
        return False
    return True


BACKBONES = ["sequence", "sashimi"] if has_sashimi() else ["sequence"]


def make_model(kernel: str, backbone: str = "sequence", seed: int = 0, **model_kw) -> torch.nn.Module:
    """A token model (embedding encoder, scores per position) in float64 and eval mode."""
    torch.manual_seed(seed)
    mixer = dict(STEP_KERNELS.get(kernel, {"name": kernel}))
    kw = dict(d_model=D, n_layers=2, mixer=mixer, pool=None, encoder="embedding", **model_kw)
    if backbone == "sashimi":
        from ssmkit.models.sashimi import SaShiMi

        kw.update(n_layers=1, pool_factors=(2, 2), expand=2)
        model = SaShiMi(V, V, **kw)
    else:
        model = SequenceModel(V, V, **kw)
    return model.double().eval()
