"""Convolution kernels and token mixers, by name.

``KERNELS`` maps a recipe name to a class. ``kind="conv"`` classes are :class:`~ssmkit.mixers.kernels.base.Kernel`
subclasses that make a (C, H, L) kernel for ``SequenceLayer``'s FFT convolution; ``kind="mixer"`` classes
are whole token mixers (attention) that map (B, H, L) to (B, H, L) themselves.
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
KERNELS.register("s4", kind="conv", description="S4: HiPPO NPLR/DPLR kernel by Cauchy + Woodbury (legs/legt/lagt/fout; mode nplr|dplr|diag)")(S4Kernel)
KERNELS.register("s4d", kind="conv", description="S4D: diagonal SSM (legs/lin/inv/real inits, zoh/bilinear)")(S4DKernel)
KERNELS.register("dss", kind="conv", description="DSS: diagonal state spaces (exp/softmax kernels, hippo/lin/inv/randn inits)")(DSSKernel)
KERNELS.register("dlr", kind="conv", description="DLR: diagonal linear RNN, K_l = sum_n W_n lambda_n^l (omega/randn inits)")(DLRKernel)
KERNELS.register("lssl", kind="conv", description="LSSL: dense HiPPO SSM, bilinear, Krylov kernel by doubling (learn 0 = LSSL-fixed, 1, 2)")(LSSLKernel)
KERNELS.register("sgconv", kind="conv", description="SGConv: multi-scale global convolution (cat/sum, randn/cos, decay)")(SGConvKernel)
from ssmkit.mixers.s5 import S5  # noqa: E402  (moving: see ssmkit/mixers)
from ssmkit.mixers.lru import LRU  # noqa: E402

KERNELS.register("s5", kind="mixer", description="S5: MIMO diagonal SSM (HiPPO-N, J blocks, zoh/bilinear) by a chunked parallel scan")(S5)
KERNELS.register("lru", kind="mixer", description="LRU: linear recurrent unit (exp parameterisation, ring init, gamma normalisation)")(LRU)

# After KERNELS exists: ssmkit.layers imports KERNELS back (SequenceLayer).
from ssmkit.mixers.attention import Attention  # noqa: E402

KERNELS.register("attn", kind="mixer", description="attention: multi-head, rotary, full or local (chunk_size), KV-cache step")(Attention)
from ssmkit.mixers.mamba import Mamba  # noqa: E402

KERNELS.register("mamba", kind="mixer", description="Mamba: selective SSM block (input-dependent dt, B, C; conv + gate), chunked scan, step")(Mamba)

__all__ = ["KERNELS", "DLRKernel", "DSSKernel", "Attention", "Mamba", "SGConvKernel", "Kernel", "LSSLKernel", "S4DKernel", "S4Kernel"]
