#pragma once
#include <ATen/ATen.h>

#include <vector>

// v: (batch, N), w: (P, N) with batch % P == 0 (row b uses w row b % P; the CUDA half needs P == batch),
// z: (L,), grad: (batch, L); complex, contiguous, one dtype. The gradient for w is (P, N), summed over the
// rows that share it.
at::Tensor cauchy_fwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric);
std::vector<at::Tensor> cauchy_bwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                       const at::Tensor& grad, bool symmetric);
#ifdef SSMKIT_WITH_CUDA
at::Tensor cauchy_fwd_cuda(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric);
std::vector<at::Tensor> cauchy_bwd_cuda(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                        const at::Tensor& grad, bool symmetric);
#endif
