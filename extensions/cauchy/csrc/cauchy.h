#pragma once
#include <ATen/ATen.h>

#include <vector>

// v, w: (batch, N) complex, z: (L,) complex, grad: (batch, L) complex; all contiguous, same dtype.
at::Tensor cauchy_fwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric);
std::vector<at::Tensor> cauchy_bwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                       const at::Tensor& grad, bool symmetric);
#ifdef SSMKIT_WITH_CUDA
at::Tensor cauchy_fwd_cuda(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric);
std::vector<at::Tensor> cauchy_bwd_cuda(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                        const at::Tensor& grad, bool symmetric);
#endif
