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
#include "parallel.h"

namespace {

constexpr int64_t kBlockL = 256;  // positions per task / per block of the reductions

// Rows share poles: w is (P, N) and v row b (of batch = R * P rows) uses w row b % P (w broadcast over the
// leading dimensions, as S4's (C+r) x (n_in+r) products share the H x N poles). The terms 1/(z - w), the
// only divisions, are then formed once per pole and position and used by all R rows.

template <typename T>
void forward_kernel(const T* vr, const T* vi, const T* wr, const T* wi, const T* zr, const T* zi,
                    T* outr, T* outi, int64_t batch, int64_t P, int64_t N, int64_t L, bool symmetric) {
  const int64_t R = batch / P;
  const int64_t nblocks = (L + kBlockL - 1) / kBlockL;
  at::parallel_for(0, P * nblocks, ssmkit::grain_for(R * N * kBlockL), [&](int64_t begin, int64_t end) {
    std::vector<T> accr(R * kBlockL), acci(R * kBlockL);
    alignas(64) T f1[kBlockL], f2[kBlockL], f3[kBlockL], f4[kBlockL];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / nblocks;
      const int64_t l0 = (task % nblocks) * kBlockL;
      const int64_t nl = std::min(kBlockL, L - l0);
      const T* zr_ = zr + l0;
      const T* zi_ = zi + l0;
      std::fill(accr.begin(), accr.end(), T(0));
      std::fill(acci.begin(), acci.end(), T(0));
      for (int64_t n = 0; n < N; ++n) {
        const T wre = wr[p * N + n], wim = wi[p * N + n];
        // v A (+ conj(v) B) with A = 1/(z - w), B = 1/(z - conj(w)):
        //   real = a f1 + c f2, imag = a f3 + c f4  (v = a + i c)
        if (symmetric) {
#pragma omp simd
          for (int64_t l = 0; l < nl; ++l) {
            const T dr = zr_[l] - wre, di = zi_[l] - wim;
            const T inv1 = T(1) / (dr * dr + di * di);
            const T ar = dr * inv1, ai = -di * inv1;
            const T ei = zi_[l] + wim;
            const T inv2 = T(1) / (dr * dr + ei * ei);
            const T br = dr * inv2, bi = -ei * inv2;
            f1[l] = ar + br;
            f2[l] = bi - ai;
            f3[l] = ai + bi;
            f4[l] = ar - br;
          }
        } else {
#pragma omp simd
          for (int64_t l = 0; l < nl; ++l) {
            const T dr = zr_[l] - wre, di = zi_[l] - wim;
            const T inv1 = T(1) / (dr * dr + di * di);
            f1[l] = dr * inv1;
            f2[l] = di * inv1;
            f3[l] = -di * inv1;
            f4[l] = dr * inv1;
          }
        }
        for (int64_t r = 0; r < R; ++r) {
          const int64_t b = r * P + p;
          const T a = vr[b * N + n], c = vi[b * N + n];
          T* ar_ = accr.data() + r * kBlockL;
          T* ai_ = acci.data() + r * kBlockL;
#pragma omp simd
          for (int64_t l = 0; l < nl; ++l) {
            ar_[l] += a * f1[l] + c * f2[l];
            ai_[l] += a * f3[l] + c * f4[l];
          }
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = r * P + p;
        std::copy(accr.data() + r * kBlockL, accr.data() + r * kBlockL + nl, outr + b * L + l0);
        std::copy(acci.data() + r * kBlockL, acci.data() + r * kBlockL + nl, outi + b * L + l0);
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* vr, const T* vi, const T* wr, const T* wi, const T* zr, const T* zi,
                     const T* gr, const T* gi, T* dvr, T* dvi, T* dwr, T* dwi, int64_t batch, int64_t P,
                     int64_t N, int64_t L, bool symmetric) {
  // Per row: dv = S1, and dw (summed over the R rows that share the pole) = sum_r conj(v_r) S2_r, with
  //   S1 = sum_l g conj(a) [+ conj(g) b],  S2 = sum_l g conj(a)^2 [+ conj(g) b^2],
  //   a = 1/(z - w), b = 1/(z - conj(w)).
  const int64_t R = batch / P;
  at::parallel_for(0, P * N, ssmkit::grain_for(R * L), [&](int64_t begin, int64_t end) {
    std::vector<T> s(4 * R);
    alignas(64) T car[kBlockL], cai[kBlockL], br[kBlockL], bi[kBlockL];
    alignas(64) T ca2r[kBlockL], ca2i[kBlockL], b2r[kBlockL], b2i[kBlockL];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / N, n = task % N;
      const T wre = wr[task], wim = wi[task];
      std::fill(s.begin(), s.end(), T(0));
      for (int64_t l0 = 0; l0 < L; l0 += kBlockL) {
        const int64_t nl = std::min(kBlockL, L - l0);
#pragma omp simd
        for (int64_t l = 0; l < nl; ++l) {
          const T dr = zr[l0 + l] - wre, di = zi[l0 + l] - wim;
          const T inv1 = T(1) / (dr * dr + di * di);
          car[l] = dr * inv1;  // conj(a)
          cai[l] = di * inv1;
          ca2r[l] = car[l] * car[l] - cai[l] * cai[l];
          ca2i[l] = T(2) * car[l] * cai[l];
          if (symmetric) {
            const T ei = zi[l0 + l] + wim;
            const T inv2 = T(1) / (dr * dr + ei * ei);
            br[l] = dr * inv2;  // b
            bi[l] = -ei * inv2;
          } else {
            br[l] = T(0);
            bi[l] = T(0);
          }
          b2r[l] = br[l] * br[l] - bi[l] * bi[l];
          b2i[l] = T(2) * br[l] * bi[l];
        }
        for (int64_t r = 0; r < R; ++r) {
          const int64_t b = r * P + p;
          const T* x_ = gr + b * L + l0;
          const T* y_ = gi + b * L + l0;
          T s1r = 0, s1i = 0, s2r = 0, s2i = 0;
#pragma omp simd reduction(+ : s1r, s1i, s2r, s2i)
          for (int64_t l = 0; l < nl; ++l) {
            const T x = x_[l], y = y_[l];
            s1r += x * car[l] - y * cai[l] + x * br[l] + y * bi[l];
            s1i += x * cai[l] + y * car[l] + x * bi[l] - y * br[l];
            s2r += x * ca2r[l] - y * ca2i[l] + x * b2r[l] + y * b2i[l];
            s2i += x * ca2i[l] + y * ca2r[l] + x * b2i[l] - y * b2r[l];
          }
          s[4 * r] += s1r;
          s[4 * r + 1] += s1i;
          s[4 * r + 2] += s2r;
          s[4 * r + 3] += s2i;
        }
      }
      T dwr_ = 0, dwi_ = 0;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = r * P + p;
        dvr[b * N + n] = s[4 * r];
        dvi[b * N + n] = s[4 * r + 1];
        const T a = vr[b * N + n], c = vi[b * N + n];  // conj(v) * S2
        dwr_ += a * s[4 * r + 2] + c * s[4 * r + 3];
        dwi_ += a * s[4 * r + 3] - c * s[4 * r + 2];
      }
      dwr[task] = dwr_;
      dwi[task] = dwi_;
    }
  });
}

std::pair<at::Tensor, at::Tensor> split(const at::Tensor& t) {
  return {at::real(t).contiguous(), at::imag(t).contiguous()};
}

}  // namespace

at::Tensor cauchy_fwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w, bool symmetric) {
  const int64_t batch = v.size(0), P = w.size(0), N = v.size(1), L = z.size(0);
  auto [vr, vi] = split(v);
  auto [wr, wi] = split(w);
  auto [zr, zi] = split(z);
  auto outr = at::empty({batch, L}, vr.options());
  auto outi = at::empty({batch, L}, vr.options());
  AT_DISPATCH_FLOATING_TYPES(vr.scalar_type(), "cauchy_fwd_cpu", [&] {
    forward_kernel<scalar_t>(vr.data_ptr<scalar_t>(), vi.data_ptr<scalar_t>(), wr.data_ptr<scalar_t>(),
                             wi.data_ptr<scalar_t>(), zr.data_ptr<scalar_t>(), zi.data_ptr<scalar_t>(),
                             outr.data_ptr<scalar_t>(), outi.data_ptr<scalar_t>(), batch, P, N, L, symmetric);
  });
  return at::complex(outr, outi);
}

std::vector<at::Tensor> cauchy_bwd_cpu(const at::Tensor& v, const at::Tensor& z, const at::Tensor& w,
                                       const at::Tensor& grad, bool symmetric) {
  const int64_t batch = v.size(0), P = w.size(0), N = v.size(1), L = z.size(0);
  auto [vr, vi] = split(v);
  auto [wr, wi] = split(w);
  auto [zr, zi] = split(z);
  auto [gr, gi] = split(grad);
  auto dvr = at::empty_like(vr), dvi = at::empty_like(vr), dwr = at::empty_like(wr), dwi = at::empty_like(wr);
  AT_DISPATCH_FLOATING_TYPES(vr.scalar_type(), "cauchy_bwd_cpu", [&] {
    backward_kernel<scalar_t>(vr.data_ptr<scalar_t>(), vi.data_ptr<scalar_t>(), wr.data_ptr<scalar_t>(),
                              wi.data_ptr<scalar_t>(), zr.data_ptr<scalar_t>(), zi.data_ptr<scalar_t>(),
                              gr.data_ptr<scalar_t>(), gi.data_ptr<scalar_t>(), dvr.data_ptr<scalar_t>(),
                              dvi.data_ptr<scalar_t>(), dwr.data_ptr<scalar_t>(), dwi.data_ptr<scalar_t>(),
                              batch, P, N, L, symmetric);
  });
  return {at::complex(dvr, dvi), at::complex(dwr, dwi)};
}
