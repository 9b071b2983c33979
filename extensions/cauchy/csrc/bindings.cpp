// Python bindings: checks the arguments and dispatches on the device.
// (The selective scan checks its own arguments in selective_scan_cpu.cpp; it has no CUDA half: on CUDA,
// ssmkit runs its plain-torch scan or the optional mamba_ssm kernel.)
#include <torch/extension.h>

#include <vector>

#include "cauchy.h"
#include "causal_conv.h"
#include "selective_scan.h"

namespace {

void check_args(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w) {
  TORCH_CHECK(v.dim() == 2 && w.dim() == 2, "cauchy: v and w must be (batch, N), got ", v.sizes(), " and ", w.sizes());
  TORCH_CHECK(v.size(1) == w.size(1) && w.size(0) > 0 && v.size(0) % w.size(0) == 0,
              "cauchy: w must be (P, N) with P dividing v's batch (row b uses w row b % P), got v ", v.sizes(),
              " and w ", w.sizes());
  TORCH_CHECK(z.dim() == 1, "cauchy: z must be (L,), got ", z.sizes());
  TORCH_CHECK(v.scalar_type() == z.scalar_type() && v.scalar_type() == w.scalar_type(),
              "cauchy: v, z, w must share one dtype");
  TORCH_CHECK(v.scalar_type() == at::kComplexFloat || v.scalar_type() == at::kComplexDouble,
              "cauchy: complex64 or complex128 expected, got ", v.scalar_type());
  TORCH_CHECK(v.device() == z.device() && v.device() == w.device(), "cauchy: v, z, w must be on one device");
}

bool is_cuda(const at::Tensor& t) { return t.device().is_cuda(); }

}  // namespace

at::Tensor cauchy_fwd(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric) {
  check_args(v, z, w);
  if (is_cuda(v)) {
#ifdef SSMKIT_WITH_CUDA
    const auto reps = v.size(0) / w.size(0);  // the CUDA kernel takes one pole row per v row
    return cauchy_fwd_cuda(v.contiguous(), z.contiguous(), w.repeat({reps, 1}).contiguous(), symmetric);
#else
    TORCH_CHECK(false, "cauchy: this build of ssmkit_cauchy has no CUDA part");
#endif
  }
  return cauchy_fwd_cpu(v, z, w, symmetric);
}

std::vector<at::Tensor> cauchy_bwd(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                   const at::Tensor& grad, bool symmetric) {
  check_args(v, z, w);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == v.size(0) && grad.size(1) == z.size(0),
              "cauchy: grad must be (batch, L)");
  if (is_cuda(v)) {
#ifdef SSMKIT_WITH_CUDA
    const auto reps = v.size(0) / w.size(0);
    auto grads = cauchy_bwd_cuda(v.contiguous(), z.contiguous(), w.repeat({reps, 1}).contiguous(), grad.contiguous(),
                                 symmetric);
    grads[1] = grads[1].view({reps, w.size(0), w.size(1)}).sum(0);  // (P, N): summed over the sharing rows
    return grads;
#else
    TORCH_CHECK(false, "cauchy: this build of ssmkit_cauchy has no CUDA part");
#endif
  }
  return cauchy_bwd_cpu(v, z, w, grad, symmetric);
}

bool has_cuda() {
#ifdef SSMKIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ssmkit Cauchy product kernels (CPU and, when built, CUDA) and the selective scan (CPU)";
  m.def("cauchy_fwd", &cauchy_fwd, "Cauchy product forward", py::arg("v"), py::arg("z"), py::arg("w"),
        py::arg("symmetric"));
  m.def("cauchy_bwd", &cauchy_bwd, "Cauchy product backward -> (dv, dw)", py::arg("v"), py::arg("z"),
        py::arg("w"), py::arg("grad"), py::arg("symmetric"));
  m.def("has_cuda", &has_cuda, "whether the CUDA part was compiled");
  m.def("selective_scan_fwd", &selective_scan_fwd_cpu,
        "Mamba's selective scan, CPU -> (y, h_last, chunk start states)", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("Bt"), py::arg("Ct"), py::arg("h0"), py::arg("D"), py::arg("z"), py::arg("chunk"));
  m.def("selective_scan_bwd", &selective_scan_bwd_cpu,
        "its backward -> (du, ddelta, dA, dBt, dCt, dh0, dD, dz)", py::arg("u"), py::arg("delta"), py::arg("A"),
        py::arg("Bt"), py::arg("Ct"), py::arg("starts"), py::arg("D"), py::arg("z"), py::arg("gy"), py::arg("gh"),
        py::arg("chunk"));
  m.def("causal_conv_silu_fwd", &causal_conv_silu_fwd_cpu, "Mamba's causal depthwise conv + SiLU, CPU",
        py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("prev"));
  m.def("causal_conv_silu_bwd", &causal_conv_silu_bwd_cpu, "its backward -> (dx, dw, dbias, dprev)", py::arg("x"),
        py::arg("w"), py::arg("bias"), py::arg("prev"), py::arg("gy"));
  m.def("selective_scan_isa", &selective_scan_isa, "the scan's compiled variant in use: avx2+fma or baseline");
  m.attr("shares_poles") = true;  // w may be (P, N) with P dividing the batch (see cauchy.h)
}
