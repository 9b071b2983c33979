#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <vector>

// Mamba's short causal depthwise convolution followed by SiLU, on the CPU, fused:
//     y[b, e, t] = silu(bias[e] + sum_k w[e, k] x_full[b, e, t + k]),   x_full = [prev | x]  (prev: K - 1 inputs)
//
// x: (batch, E, L); w: (E, K); bias: (E,) or none; prev: (batch, E, K - 1), the inputs before x (zeros for a
// sequence that starts here). float32 or float64, contiguous, one dtype.
at::Tensor causal_conv_silu_fwd_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                                    const at::Tensor& prev);

// backward for gy (batch, E, L) -> {dx (batch, E, L), dw (E, K), dbias (E,) (undefined without bias),
// dprev (batch, E, K - 1)}.
std::vector<at::Tensor> causal_conv_silu_bwd_cpu(const at::Tensor& x, const at::Tensor& w,
                                                 const std::optional<at::Tensor>& bias, const at::Tensor& prev,
                                                 const at::Tensor& gy);
