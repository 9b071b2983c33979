"""ssmkit: state-space and global-convolution sequence models in plain PyTorch."""
from ssmkit.generation import Stream, load
from ssmkit.kernels import KERNELS
from ssmkit.layers import SequenceLayer
from ssmkit.models import SequenceModel
from ssmkit.train.optim import param_groups

__version__ = "0.1.0"
__all__ = ["KERNELS", "SequenceLayer", "SequenceModel", "Stream", "load", "param_groups", "__version__"]
