"""The ``mamba_backend`` fixture: a test of Mamba's CPU kernels (selective scan, causal convolution) runs once on
the torch path and once on each compiled variant of the extension's fused kernel: AVX2+FMA (where the CPU has
it) and the baseline x86-64 one (``SSMKIT_SIMD_BASELINE=1``)."""
import pytest
from helpers import needs_ext


@pytest.fixture(params=["torch", pytest.param("extension", marks=needs_ext),
                        pytest.param("extension-baseline", marks=needs_ext)])
def mamba_backend(request, monkeypatch):
    if request.param == "extension-baseline":
        monkeypatch.setenv("SSMKIT_SIMD_BASELINE", "1")
        return "extension"
    monkeypatch.delenv("SSMKIT_SIMD_BASELINE", raising=False)
    return request.param
