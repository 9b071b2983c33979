"""ssmkit: state-space and global-convolution sequence models in plain PyTorch.

``ssmkit.load(run)`` a trained run, ``ssmkit.generate(model, prompt, n)`` continue prompts, ``ssmkit.Stream(model)``
feed an input chunk by chunk; ``SequenceModel(..., mixer={"name": "s4d", ...})`` with any of ``MIXERS``.
"""
# isort: off
from ssmkit import openmp as _openmp

_openmp.apply_default()  # before torch is imported: libgomp reads OMP_WAIT_POLICY once, when it loads

from ssmkit.generation import Stream, generate  # noqa: E402
from ssmkit.mixers import MIXERS, build_mixer  # noqa: E402
from ssmkit.mixers.kernels import KERNELS  # noqa: E402
from ssmkit.models import SequenceModel  # noqa: E402
from ssmkit.runs.load import load  # noqa: E402
from ssmkit.train.optim import param_groups  # noqa: E402
from ssmkit._version import __version__  # noqa: E402
# isort: on

__all__ = ["KERNELS", "MIXERS", "SequenceModel", "Stream", "__version__", "build_mixer", "generate", "load",
           "param_groups"]
