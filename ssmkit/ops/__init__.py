"""Pure tensor math: no parameters, no modules."""
from ssmkit.ops.fftconv import fftconv

__all__ = ["fftconv"]
