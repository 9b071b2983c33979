// Mamba's causal depthwise convolution (kernel K, one filter per channel) and SiLU, fused on the CPU: one pass
// per (batch, channel) row instead of torch's padded copy, convolution, and SiLU with their three backward
// passes. A row is copied once into a buffer [prev | x | zeros] (K - 1 + L rounded up to the vector width; 16 KB
// at L = 4096, it stays in L1), and every output is K multiply-adds over shifted loads of it:
//
//     pre[t] = bias + sum_k w[k] buf[t + k]            y[t] = silu(pre[t]) = pre[t] sigmoid(pre[t])
//
// Backward recomputes pre, takes g = gy silu'(pre) (zero past L) and correlates it with the filter:
//
//     dbuf[j] = sum_k w[k] g[j - k]     dw[k] = sum_t g[t] buf[t + k]     dbias = sum_t g[t]
//
// the first K - 1 entries of dbuf being the gradient of prev. dw and dbias are summed over the batch from
// per-row partials, so threads never share an output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "causal_conv.h"
#include "parallel.h"
#include "simd.h"

using namespace ssmkit_simd;

namespace {

template <typename T>
struct Conv {
  const T *x, *w, *bias, *prev, *gy;
  T *y, *dx, *dprev, *dw, *dbias;  // dw, dbias: (batch, E, K), (batch, E) partials
  int64_t E, L, K, Lp;              // Lp: L rounded up to the vector width
};

// buf = [prev | x | zeros] of row r; returns its length (K - 1 + Lp + width).
template <typename T>
SSMKIT_INLINE void fill_row(const Conv<T>& c, int64_t r, T* buf) {
  const int64_t k1 = c.K - 1;
  std::copy(c.prev + r * k1, c.prev + (r + 1) * k1, buf);
  std::copy(c.x + r * c.L, c.x + (r + 1) * c.L, buf + k1);
  std::fill(buf + k1 + c.L, buf + k1 + c.Lp + Vec<T>::W, T(0));
}

// pre-activation of positions t..t+W-1 of the row in buf
template <typename T>
SSMKIT_INLINE vec<T> pre_at(const T* buf, const T* w, T b, int64_t K, int64_t t) {
  vec<T> acc = vec<T>{} + b;
  for (int64_t k = 0; k < K; ++k) acc += w[k] * load(buf + t + k);
  return acc;
}

template <typename T>
SSMKIT_INLINE vec<T> sigmoid(vec<T> v) {
  return T(1) / (T(1) + vexp(-v));
}

template <typename T>
SSMKIT_INLINE void forward_rows(const Conv<T>& c, int64_t r0, int64_t r1) {
  constexpr int64_t W = Vec<T>::W;
  std::vector<T> buf(c.K - 1 + c.Lp + W), out(c.Lp);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t e = r % c.E;
    fill_row(c, r, buf.data());
    const T* w = c.w + e * c.K;
    const T b = c.bias ? c.bias[e] : T(0);
    for (int64_t t = 0; t < c.Lp; t += W) {
      const vec<T> pre = pre_at(buf.data(), w, b, c.K, t);
      store(out.data() + t, pre * sigmoid<T>(pre));
    }
    std::copy(out.begin(), out.begin() + c.L, c.y + r * c.L);
  }
}

template <typename T>
SSMKIT_INLINE void backward_rows(const Conv<T>& c, int64_t r0, int64_t r1) {
  constexpr int64_t W = Vec<T>::W;
  const int64_t k1 = c.K - 1;
  // g is stored after k1 leading zeros (gpad), so that dbuf[j] = sum_k w[k] gpad[j + k1 - k] reads in bounds;
  // dbuf is computed in whole vectors up to k1 + Lp rounded up, reading gpad up to 2 k1 + Lp + 2 W
  std::vector<T> buf(k1 + c.Lp + W), gpad(2 * k1 + c.Lp + 2 * W, T(0)), dbuf(k1 + c.Lp + W);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t e = r % c.E;
    fill_row(c, r, buf.data());
    const T* w = c.w + e * c.K;
    const T b = c.bias ? c.bias[e] : T(0);
    const T* gy = c.gy + r * c.L;
    T* g = gpad.data() + k1;
    vec<T> db{};
    for (int64_t t = 0; t < c.Lp; t += W) {
      const vec<T> pre = pre_at(buf.data(), w, b, c.K, t);
      const vec<T> sig = sigmoid<T>(pre);
      vec<T> go{};
      if (t + W <= c.L) {
        go = load(gy + t);
      } else {
        for (int64_t i = 0; i < c.L - t; ++i) go[i] = gy[t + i];
      }
      const vec<T> gv = go * sig * (T(1) + pre * (T(1) - sig));  // silu'(pre); zero past L (go is)
      store(g + t, gv);
      db += gv;
    }
    std::fill(g + c.Lp, gpad.data() + gpad.size(), T(0));
    for (int64_t k = 0; k < c.K; ++k) {  // dw[k] = sum_t g[t] buf[t + k]
      vec<T> acc{};
      for (int64_t t = 0; t < c.Lp; t += W) acc += load(g + t) * load(buf.data() + t + k);
      c.dw[r * c.K + k] = hsum(acc);
    }
    if (c.dbias) c.dbias[r] = hsum(db);
    for (int64_t j = 0; j < k1 + c.Lp; j += W) {  // dbuf[j] = sum_k w[k] g[j - k]
      vec<T> acc{};
      for (int64_t k = 0; k < c.K; ++k) acc += w[k] * load(gpad.data() + j + k1 - k);
      store(dbuf.data() + j, acc);
    }
    std::copy(dbuf.begin(), dbuf.begin() + k1, c.dprev + r * k1);
    std::copy(dbuf.begin() + k1, dbuf.begin() + k1 + c.L, c.dx + r * c.L);
  }
}

SSMKIT_VARIANTS(forward_rows, (const Conv<T>& c, int64_t r0, int64_t r1), (c, r0, r1))
SSMKIT_VARIANTS(backward_rows, (const Conv<T>& c, int64_t r0, int64_t r1), (c, r0, r1))

void check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& prev) {
  TORCH_CHECK(x.dim() == 3, "causal_conv_silu: x must be (batch, E, L), got ", x.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(1) && w.size(1) >= 1, "causal_conv_silu: w must be (E, K)");
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == x.size(1)), "causal_conv_silu: bias must be (E,)");
  TORCH_CHECK(prev.dim() == 3 && prev.size(0) == x.size(0) && prev.size(1) == x.size(1) && prev.size(2) == w.size(1) - 1,
              "causal_conv_silu: prev must be (batch, E, K - 1)");
  for (const auto* t : {&x, &w, &bias, &prev}) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->device().is_cpu(), "causal_conv_silu: the extension's kernel runs on the CPU only");
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "causal_conv_silu: all inputs must share one dtype");
    TORCH_CHECK(t->is_contiguous(), "causal_conv_silu: inputs must be contiguous");
  }
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "causal_conv_silu: float32 or float64 expected, got ", x.scalar_type());
}

template <typename T>
Conv<T> make(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& prev) {
  Conv<T> c{};
  c.x = x.data_ptr<T>(), c.w = w.data_ptr<T>(), c.prev = prev.data_ptr<T>();
  c.bias = bias.defined() ? bias.data_ptr<T>() : nullptr;
  c.E = x.size(1), c.L = x.size(2), c.K = w.size(1);
  c.Lp = (c.L + Vec<T>::W - 1) / Vec<T>::W * Vec<T>::W;
  return c;
}

}  // namespace

at::Tensor causal_conv_silu_fwd_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                                    const at::Tensor& prev) {
  const at::Tensor b = bias.value_or(at::Tensor());
  check(x, w, b, prev);
  auto y = at::empty_like(x);
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_silu_fwd_cpu", [&] {
    auto c = make<scalar_t>(x, w, b, prev);
    c.y = y.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0) * x.size(1), ssmkit::grain_for(x.size(2) * w.size(1)), [&](int64_t r0, int64_t r1) {
      (avx2 ? forward_rows_avx2<scalar_t> : forward_rows_base<scalar_t>)(c, r0, r1);
    });
  });
  return y;
}

std::vector<at::Tensor> causal_conv_silu_bwd_cpu(const at::Tensor& x, const at::Tensor& w,
                                                 const std::optional<at::Tensor>& bias, const at::Tensor& prev,
                                                 const at::Tensor& gy) {
  const at::Tensor b = bias.value_or(at::Tensor());
  check(x, w, b, prev);
  TORCH_CHECK(gy.sizes() == x.sizes(), "causal_conv_silu: gy must be (batch, E, L) like x");
  const int64_t B = x.size(0), E = x.size(1), K = w.size(1);
  auto g = gy.contiguous().to(x.scalar_type());
  auto dx = at::empty_like(x), dprev = at::empty_like(prev);
  auto dw = at::empty({B, E, K}, x.options());
  auto dbias = b.defined() ? at::empty({B, E}, x.options()) : at::Tensor();
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_silu_bwd_cpu", [&] {
    auto c = make<scalar_t>(x, w, b, prev);
    c.gy = g.data_ptr<scalar_t>(), c.dx = dx.data_ptr<scalar_t>(), c.dprev = dprev.data_ptr<scalar_t>();
    c.dw = dw.data_ptr<scalar_t>(), c.dbias = dbias.defined() ? dbias.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B * E, ssmkit::grain_for(x.size(2) * K), [&](int64_t r0, int64_t r1) {
      (avx2 ? backward_rows_avx2<scalar_t> : backward_rows_base<scalar_t>)(c, r0, r1);
    });
  });
  return {dx, dw.sum(0), dbias.defined() ? dbias.sum(0) : dbias, dprev};
}
