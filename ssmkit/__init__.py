"""ssmkit: state-space and global-convolution sequence models in plain PyTorch."""
# isort: off
from ssmkit import openmp as _openmp

_openmp.apply_default()  # before torch is imported: libgomp reads OMP_WAIT_POLICY once, when it loads

from ssmkit.generation import Stream, load  # noqa: E402
from ssmkit.mixers.kernels import KERNELS  # noqa: E402
from ssmkit.models import SequenceModel  # noqa: E402
from ssmkit.train.optim import param_groups  # noqa: E402
# isort: on

__version__ = "0.1.0"
__all__ = ["KERNELS", "SequenceModel", "Stream", "load", "param_groups", "__version__"]
