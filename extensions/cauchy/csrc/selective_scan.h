#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

// The selective scan of Mamba on the CPU, fused with its skip and gate:
//     h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t,     y_t = (C_t . h_t + D u_t) * silu(z_t)
//
// u, delta: (batch, D, L); A: (D, N); Bt, Ct: (batch, L, N) (B and C transposed, so that a step reads N
// contiguous numbers); h0: (batch, D, N); Dskip (D,) and z (batch, D, L) optional (no skip / no gate);
// float32 or float64, contiguous, one dtype.
//
// forward -> {y (batch, D, L), h_last (batch, D, N), starts}: starts (batch, D, ceil(L / chunk), Np) holds the
// state at the start of every chunk of `chunk` positions (N padded to the vector width), which is all that
// backward needs (it recomputes each chunk).
std::vector<at::Tensor> selective_scan_fwd_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                               const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& h0,
                                               const std::optional<at::Tensor>& Dskip,
                                               const std::optional<at::Tensor>& z, int64_t chunk);

// backward for output gradients gy (batch, D, L) and gh (batch, D, N) (the gradient of h_last)
// -> {du, ddelta (batch, D, L), dA (D, N), dBt, dCt (batch, L, N), dh0 (batch, D, N), dD (D,), dz (batch, D, L)}
// (dD, dz undefined without a skip / gate).
std::vector<at::Tensor> selective_scan_bwd_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                               const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& starts,
                                               const std::optional<at::Tensor>& Dskip,
                                               const std::optional<at::Tensor>& z, const at::Tensor& gy,
                                               const at::Tensor& gh, int64_t chunk);

// Which compiled variant the scan runs here: "avx2+fma" or "baseline" (SSMKIT_SIMD_BASELINE=1 forces it).
std::string selective_scan_isa();
