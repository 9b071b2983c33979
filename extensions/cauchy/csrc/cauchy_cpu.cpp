// Cauchy product r[b, l] = sum_n v[b, n] / (z[l] - w[b, n])  (+ conj(v) / (z - conj(w)) when symmetric)
// and its gradient with respect to v and w, on the CPU.
//
// Complex numbers are split into real and imaginary arrays (structure of arrays) so that the inner
// loops are plain float arithmetic that the compiler vectorises (`#pragma omp simd`); the outer loops
// run in parallel with at::parallel_for (OpenMP in torch's builds).
// ATen only (not torch/extension.h): this file compiles in a fraction of the time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cauchy.h"

namespace {

constexpr int64_t kBlockL = 256;  // outputs per task in the forward pass

template <typename T>
void forward_kernel(const T* vr, const T* vi, const T* wr, const T* wi, const T* zr, const T* zi,
                    T* outr, T* outi, int64_t batch, int64_t N, int64_t L, bool symmetric) {
  const int64_t nblocks = (L + kBlockL - 1) / kBlockL;
  at::parallel_for(0, batch * nblocks, 1, [&](int64_t begin, int64_t end) {
    T accr[kBlockL];
    T acci[kBlockL];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblocks;
      const int64_t l0 = (task % nblocks) * kBlockL;
      const int64_t nl = std::min(kBlockL, L - l0);
      const T* zr_ = zr + l0;
      const T* zi_ = zi + l0;
      std::fill(accr, accr + nl, T(0));
      std::fill(acci, acci + nl, T(0));
      for (int64_t n = 0; n < N; ++n) {
        const T a = vr[b * N + n], c = vi[b * N + n];
        const T p = wr[b * N + n], q = wi[b * N + n];
        if (symmetric) {
#pragma omp simd
          for (int64_t l = 0; l < nl; ++l) {
            // v / (z - w) = v * conj(d) / |d|^2,  d = z - w
            const T dr = zr_[l] - p, di = zi_[l] - q;
            const T inv1 = T(1) / (dr * dr + di * di);
            // conj(v) / (z - conj(w)),  e = z - conj(w)
            const T er = dr, ei = zi_[l] + q;
            const T inv2 = T(1) / (er * er + ei * ei);
            accr[l] += (a * dr + c * di) * inv1 + (a * er - c * ei) * inv2;
            acci[l] += (c * dr - a * di) * inv1 - (a * ei + c * er) * inv2;
          }
        } else {
#pragma omp simd
          for (int64_t l = 0; l < nl; ++l) {
            const T dr = zr_[l] - p, di = zi_[l] - q;
            const T inv1 = T(1) / (dr * dr + di * di);
            accr[l] += (a * dr + c * di) * inv1;
            acci[l] += (c * dr - a * di) * inv1;
          }
        }
      }
      std::copy(accr, accr + nl, outr + b * L + l0);
      std::copy(acci, acci + nl, outi + b * L + l0);
    }
  });
}

template <typename T>
void backward_kernel(const T* vr, const T* vi, const T* wr, const T* wi, const T* zr, const T* zi,
                     const T* gr, const T* gi, T* dvr, T* dvi, T* dwr, T* dwi, int64_t batch, int64_t N,
                     int64_t L, bool symmetric) {
  // dv = S1, dw = conj(v) * S2 with
  //   S1 = sum_l g conj(a) [+ conj(g) b],  S2 = sum_l g conj(a)^2 [+ conj(g) b^2],
  //   a = 1/(z - w), b = 1/(z - conj(w)).
  at::parallel_for(0, batch * N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / N;
      const T p = wr[task], q = wi[task];
      const T* gr_ = gr + b * L;
      const T* gi_ = gi + b * L;
      T s1r = 0, s1i = 0, s2r = 0, s2i = 0;
      if (symmetric) {
#pragma omp simd reduction(+ : s1r, s1i, s2r, s2i)
        for (int64_t l = 0; l < L; ++l) {
          const T dr = zr[l] - p, di = zi[l] - q;
          const T inv1 = T(1) / (dr * dr + di * di);
          const T car = dr * inv1, cai = di * inv1;  // conj(a)
          const T er = dr, ei = zi[l] + q;
          const T inv2 = T(1) / (er * er + ei * ei);
          const T br = er * inv2, bi = -ei * inv2;  // b
          const T ca2r = car * car - cai * cai, ca2i = T(2) * car * cai;
          const T b2r = br * br - bi * bi, b2i = T(2) * br * bi;
          const T x = gr_[l], y = gi_[l];
          s1r += x * car - y * cai + x * br + y * bi;
          s1i += x * cai + y * car + x * bi - y * br;
          s2r += x * ca2r - y * ca2i + x * b2r + y * b2i;
          s2i += x * ca2i + y * ca2r + x * b2i - y * b2r;
        }
      } else {
#pragma omp simd reduction(+ : s1r, s1i, s2r, s2i)
        for (int64_t l = 0; l < L; ++l) {
          const T dr = zr[l] - p, di = zi[l] - q;
          const T inv1 = T(1) / (dr * dr + di * di);
          const T car = dr * inv1, cai = di * inv1;
          const T ca2r = car * car - cai * cai, ca2i = T(2) * car * cai;
          const T x = gr_[l], y = gi_[l];
          s1r += x * car - y * cai;
          s1i += x * cai + y * car;
          s2r += x * ca2r - y * ca2i;
          s2i += x * ca2i + y * ca2r;
        }
      }
      const T a = vr[task], c = vi[task];
      dvr[task] = s1r;
      dvi[task] = s1i;
      // conj(v) * S2
      dwr[task] = a * s2r + c * s2i;
      dwi[task] = a * s2i - c * s2r;
    }
  });
}

std::pair<at::Tensor, at::Tensor> split(const at::Tensor& t) {
  return {at::real(t).contiguous(), at::imag(t).contiguous()};
}

}  // namespace

at::Tensor cauchy_fwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric) {
  const int64_t batch = v.size(0), N = v.size(1), L = z.size(0);
  auto [vr, vi] = split(v);
  auto [wr, wi] = split(w);
  auto [zr, zi] = split(z);
  auto outr = at::empty({batch, L}, vr.options());
  auto outi = at::empty({batch, L}, vr.options());
  AT_DISPATCH_FLOATING_TYPES(vr.scalar_type(), "cauchy_fwd_cpu", [&] {
    forward_kernel<scalar_t>(vr.data_ptr<scalar_t>(), vi.data_ptr<scalar_t>(), wr.data_ptr<scalar_t>(),
                             wi.data_ptr<scalar_t>(), zr.data_ptr<scalar_t>(), zi.data_ptr<scalar_t>(),
                             outr.data_ptr<scalar_t>(), outi.data_ptr<scalar_t>(), batch, N, L, symmetric);
  });
  return at::complex(outr, outi);
}

std::vector<at::Tensor> cauchy_bwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                       const at::Tensor& grad, bool symmetric) {
  const int64_t batch = v.size(0), N = v.size(1), L = z.size(0);
  auto [vr, vi] = split(v);
  auto [wr, wi] = split(w);
  auto [zr, zi] = split(z);
  auto [gr, gi] = split(grad);
  auto dvr = at::empty_like(vr), dvi = at::empty_like(vr), dwr = at::empty_like(vr), dwi = at::empty_like(vr);
  AT_DISPATCH_FLOATING_TYPES(vr.scalar_type(), "cauchy_bwd_cpu", [&] {
    backward_kernel<scalar_t>(vr.data_ptr<scalar_t>(), vi.data_ptr<scalar_t>(), wr.data_ptr<scalar_t>(),
                              wi.data_ptr<scalar_t>(), zr.data_ptr<scalar_t>(), zi.data_ptr<scalar_t>(),
                              gr.data_ptr<scalar_t>(), gi.data_ptr<scalar_t>(), dvr.data_ptr<scalar_t>(),
                              dvi.data_ptr<scalar_t>(), dwr.data_ptr<scalar_t>(), dwi.data_ptr<scalar_t>(),
                              batch, N, L, symmetric);
  });
  return {at::complex(dvr, dvi), at::complex(dwr, dwi)};
}
