"""Convolution kernels, by name.

``KERNELS`` maps a name to a :class:`~ssmkit.mixers.kernels.base.Kernel` subclass that makes a (C, H, L)
convolution kernel (and, where its math has one, steps the recurrence). ``ConvMixer``
(``ssmkit/mixers/conv.py``) turns each into a token mixer; other mixers (Hyena) may take one as a filter.
Token mixers that are not convolutions (s5, lru, mamba, attn) are in ``ssmkit.mixers.MIXERS`` only.
"""
from ssmkit.mixers.kernels.base import Kernel
from ssmkit.mixers.kernels.dlr import DLRKernel
from ssmkit.mixers.kernels.dss import DSSKernel
from ssmkit.mixers.kernels.lssl import LSSLKernel
from ssmkit.mixers.kernels.s4 import S4Kernel
from ssmkit.mixers.kernels.s4d import S4DKernel
from ssmkit.mixers.kernels.sgconv import SGConvKernel
from ssmkit.registry import Registry

KERNELS = Registry("kernel")
KERNELS.register("s4", description="S4: HiPPO NPLR/DPLR kernel by Cauchy + Woodbury (legs/legt/lagt/fout; mode nplr|dplr|diag)")(S4Kernel)
KERNELS.register("s4d", description="S4D: diagonal SSM (legs/lin/inv/real inits, zoh/bilinear)")(S4DKernel)
KERNELS.register("dss", description="DSS: diagonal state spaces (exp/softmax kernels, hippo/lin/inv/randn inits)")(DSSKernel)
KERNELS.register("dlr", description="DLR: diagonal linear RNN, K_l = sum_n W_n lambda_n^l (omega/randn inits)")(DLRKernel)
KERNELS.register("lssl", description="LSSL: dense HiPPO SSM, bilinear, Krylov kernel by doubling (learn 0 = LSSL-fixed, 1, 2)")(LSSLKernel)
KERNELS.register("sgconv", description="SGConv: multi-scale global convolution (cat/sum, randn/cos, decay)")(SGConvKernel)

__all__ = ["KERNELS", "DLRKernel", "DSSKernel", "Kernel", "LSSLKernel", "S4DKernel", "S4Kernel", "SGConvKernel"]
