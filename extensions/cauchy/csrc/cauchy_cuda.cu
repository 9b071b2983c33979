// Cauchy product and its gradient on the GPU (same math as cauchy_cpu.cpp).
//
// Forward: one thread per output position l; v and w are staged through shared memory in tiles, so any
// N works (no power-of-two restriction). Backward: one block per (b, n), threads stride over L and the
// block reduces the four partial sums in shared memory.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "cauchy.h"

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void fwd_kernel(const T* __restrict__ vr, const T* __restrict__ vi, const T* __restrict__ wr,
                           const T* __restrict__ wi, const T* __restrict__ zr, const T* __restrict__ zi,
                           T* __restrict__ outr, T* __restrict__ outi, int64_t N, int64_t L, bool symmetric) {
  __shared__ T s_vr[kThreads], s_vi[kThreads], s_wr[kThreads], s_wi[kThreads];
  const int64_t b = blockIdx.y;
  const int64_t l = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const T z_r = l < L ? zr[l] : T(0), z_i = l < L ? zi[l] : T(0);
  T accr = 0, acci = 0;
  for (int64_t n0 = 0; n0 < N; n0 += kThreads) {
    const int64_t n = n0 + threadIdx.x;
    if (n < N) {
      s_vr[threadIdx.x] = vr[b * N + n];
      s_vi[threadIdx.x] = vi[b * N + n];
      s_wr[threadIdx.x] = wr[b * N + n];
      s_wi[threadIdx.x] = wi[b * N + n];
    }
    __syncthreads();
    const int m = static_cast<int>(min(static_cast<int64_t>(kThreads), N - n0));
    for (int k = 0; k < m; ++k) {
      const T a = s_vr[k], c = s_vi[k], p = s_wr[k], q = s_wi[k];
      const T dr = z_r - p, di = z_i - q;
      const T inv1 = T(1) / (dr * dr + di * di);
      accr += (a * dr + c * di) * inv1;
      acci += (c * dr - a * di) * inv1;
      if (symmetric) {
        const T ei = z_i + q;
        const T inv2 = T(1) / (dr * dr + ei * ei);
        accr += (a * dr - c * ei) * inv2;
        acci -= (a * ei + c * dr) * inv2;
      }
    }
    __syncthreads();
  }
  if (l < L) {
    outr[b * L + l] = accr;
    outi[b * L + l] = acci;
  }
}

template <typename T>
__global__ void bwd_kernel(const T* __restrict__ vr, const T* __restrict__ vi, const T* __restrict__ wr,
                           const T* __restrict__ wi, const T* __restrict__ zr, const T* __restrict__ zi,
                           const T* __restrict__ gr, const T* __restrict__ gi, T* __restrict__ dvr,
                           T* __restrict__ dvi, T* __restrict__ dwr, T* __restrict__ dwi, int64_t N, int64_t L,
                           bool symmetric) {
  __shared__ T red[4][kThreads];
  const int64_t task = blockIdx.x;  // b * N + n
  const int64_t b = task / N;
  const T p = wr[task], q = wi[task];
  T s1r = 0, s1i = 0, s2r = 0, s2i = 0;
  for (int64_t l = threadIdx.x; l < L; l += kThreads) {
    const T dr = zr[l] - p, di = zi[l] - q;
    const T inv1 = T(1) / (dr * dr + di * di);
    const T car = dr * inv1, cai = di * inv1;
    const T ca2r = car * car - cai * cai, ca2i = T(2) * car * cai;
    const T x = gr[b * L + l], y = gi[b * L + l];
    s1r += x * car - y * cai;
    s1i += x * cai + y * car;
    s2r += x * ca2r - y * ca2i;
    s2i += x * ca2i + y * ca2r;
    if (symmetric) {
      const T ei = zi[l] + q;
      const T inv2 = T(1) / (dr * dr + ei * ei);
      const T br = dr * inv2, bi = -ei * inv2;
      const T b2r = br * br - bi * bi, b2i = T(2) * br * bi;
      s1r += x * br + y * bi;
      s1i += x * bi - y * br;
      s2r += x * b2r + y * b2i;
      s2i += x * b2i - y * b2r;
    }
  }
  red[0][threadIdx.x] = s1r;
  red[1][threadIdx.x] = s1i;
  red[2][threadIdx.x] = s2r;
  red[3][threadIdx.x] = s2i;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      for (int j = 0; j < 4; ++j) red[j][threadIdx.x] += red[j][threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const T a = vr[task], c = vi[task];
    dvr[task] = red[0][0];
    dvi[task] = red[1][0];
    dwr[task] = a * red[2][0] + c * red[3][0];
    dwi[task] = a * red[3][0] - c * red[2][0];
  }
}

std::pair<at::Tensor, at::Tensor> split(const at::Tensor& t) {
  return {at::real(t).contiguous(), at::imag(t).contiguous()};
}

}  // namespace

at::Tensor cauchy_fwd_cuda(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric) {
  const c10::cuda::CUDAGuard guard(v.device());
  const int64_t batch = v.size(0), N = v.size(1), L = z.size(0);
  TORCH_CHECK(batch <= 65535, "cauchy (CUDA): batch must be <= 65535, got ", batch);
  auto [vr, vi] = split(v);
  auto [wr, wi] = split(w);
  auto [zr, zi] = split(z);
  auto outr = at::empty({batch, L}, vr.options());
  auto outi = at::empty({batch, L}, vr.options());
  const dim3 grid((L + kThreads - 1) / kThreads, batch);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(vr.scalar_type(), "cauchy_fwd_cuda", [&] {
    fwd_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        vr.data_ptr<scalar_t>(), vi.data_ptr<scalar_t>(), wr.data_ptr<scalar_t>(), wi.data_ptr<scalar_t>(),
        zr.data_ptr<scalar_t>(), zi.data_ptr<scalar_t>(), outr.data_ptr<scalar_t>(), outi.data_ptr<scalar_t>(),
        N, L, symmetric);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return at::complex(outr, outi);
}

std::vector<at::Tensor> cauchy_bwd_cuda(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                        const at::Tensor& grad, bool symmetric) {
  const c10::cuda::CUDAGuard guard(v.device());
  const int64_t batch = v.size(0), N = v.size(1), L = z.size(0);
  auto [vr, vi] = split(v);
  auto [wr, wi] = split(w);
  auto [zr, zi] = split(z);
  auto [gr, gi] = split(grad);
  auto dvr = at::empty_like(vr), dvi = at::empty_like(vr), dwr = at::empty_like(vr), dwi = at::empty_like(vr);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(vr.scalar_type(), "cauchy_bwd_cuda", [&] {
    bwd_kernel<scalar_t><<<static_cast<unsigned int>(batch * N), kThreads, 0, stream>>>(
        vr.data_ptr<scalar_t>(), vi.data_ptr<scalar_t>(), wr.data_ptr<scalar_t>(), wi.data_ptr<scalar_t>(),
        zr.data_ptr<scalar_t>(), zi.data_ptr<scalar_t>(), gr.data_ptr<scalar_t>(), gi.data_ptr<scalar_t>(),
        dvr.data_ptr<scalar_t>(), dvi.data_ptr<scalar_t>(), dwr.data_ptr<scalar_t>(), dwi.data_ptr<scalar_t>(), N,
        L, symmetric);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {at::complex(dvr, dvi), at::complex(dwr, dwi)};
}
