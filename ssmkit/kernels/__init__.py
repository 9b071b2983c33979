"""Convolution kernels and token mixers, by name.

``KERNELS`` maps a recipe name to a class. ``kind="conv"`` classes are :class:`~ssmkit.kernels.base.Kernel`
subclasses that make a (C, H, L) kernel for ``SequenceLayer``'s FFT convolution; ``kind="mixer"`` classes
are whole token mixers (attention) that map (B, H, L) to (B, H, L) themselves.
"""
from ssmkit.kernels.base import Kernel
from ssmkit.kernels.s4d import S4DKernel
from ssmkit.registry import Registry

KERNELS = Registry("kernel")
KERNELS.register("s4d", kind="conv", description="S4D: diagonal SSM (legs/lin/inv/real inits, zoh/bilinear)")(S4DKernel)

__all__ = ["KERNELS", "Kernel", "S4DKernel"]
