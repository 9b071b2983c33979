from ssmkit.models.block import NORMS, Norm, ResidualBlock
from ssmkit.models.sashimi import SaShiMi
from ssmkit.models.sequence import POOLS, SequenceModel
from ssmkit.registry import Registry

#: ``model.backbone`` -> model class. Each takes SequenceModel's arguments (d_input, d_output, d_model, n_layers,
#: mixer, prenorm, norm, dropout, pool, encoder, mlp_ratio, checkpoint, rate) plus the recipe keys in ``options``.
BACKBONES = Registry("backbone")
BACKBONES.register("sequence", options=())(SequenceModel)
BACKBONES.register("sashimi", options=("pool_factors", "expand", "unet"))(SaShiMi)

__all__ = ["BACKBONES", "NORMS", "POOLS", "Norm", "ResidualBlock", "SaShiMi", "SequenceModel"]
