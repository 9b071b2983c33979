// The selective scan of Mamba (Gu and Dao 2023, Algorithm 2) on the CPU, fused: one pass over time per
// (batch, channel) row with the N states in registers / L1, instead of the dozens of elementwise passes over
// (batch, D, N, chunk) blocks that the plain-torch scan (ssmkit/ops/selective_scan.py) makes.
//
//     h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t        y_t = C_t . h_t
//
// Forward keeps the state at the start of every chunk (batch * D * N * L / chunk numbers). Backward walks each
// row's chunks from the end: it recomputes the chunk's decays and states from its start state into two
// (chunk, N) buffers, then runs the recurrence of the gradient backwards through them:
//
//     g_t   = gh_t + gy_t C_t                    (the gradient reaching h_t)
//     dC_t += gy_t h_t        dB_t += g_t delta_t u_t        dA += g_t h_{t-1} a_t delta_t
//     du_t  = delta_t (g_t . B_t)                 ddelta_t = (g_t h_{t-1} a_t) . A + u_t (g_t . B_t)
//     gh_{t-1} = g_t a_t                          (a_t = exp(delta_t A))
//
// dB and dC sum over the D channels and dA over the batch: rows are split into tasks of (batch, channel
// group); each group writes its own slice of (groups, batch, L, N) partial sums, reduced at the end, so no two
// threads write one number. The loops over N are written with explicit 32-byte vectors (N padded to their
// width); float32 uses a polynomial exp (no library call), float64 std::exp. The entry points are compiled twice,
// for AVX2+FMA and for the baseline x86-64, and picked at run time by the CPU it runs on.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "selective_scan.h"

namespace {

// Everything the entry points call is forced inline, so that it is compiled into each of their target variants
// (an out-of-line copy would be compiled for the baseline target only).
#define SSMKIT_INLINE inline __attribute__((always_inline))

// Vectors of 32 bytes (GCC/Clang vector extensions): 8 floats or 4 doubles. The N states of a row are padded to
// a multiple of the width (zero A, B, C and start state: those states stay 0 and add nothing), so every loop
// over N is whole vectors, with no scalar tail and no reliance on the auto-vectoriser. Under the baseline
// x86-64 target the compiler splits each into two 16-byte operations.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int64_t W = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int64_t W = 4;
};
template <typename T>
using vec = typename Vec<T>::type;
typedef int32_t vint8 __attribute__((vector_size(32)));

template <typename T>
SSMKIT_INLINE vec<T> load(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
SSMKIT_INLINE void store(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
SSMKIT_INLINE T hsum(vec<T> v) {
  T s = 0;
  for (int64_t i = 0; i < Vec<T>::W; ++i) s += v[i];
  return s;
}

// e^x for 8 floats without a library call: x = k ln2 + r with |r| <= ln2/2, e^r by the degree-6 polynomial of
// Cephes' expf, 2^k from the exponent bits. x is clamped to [-87, 88]: e^-87 ~ 1.6e-38 stands in for smaller
// decays (a state that has long vanished; no denormals). Relative error ~1e-7 (tested against float64 in
// tests/ops/test_selective_scan_ext.py).
SSMKIT_INLINE vec<float> vexp(vec<float> x) {
  const vec<float> lo = vec<float>{} - 87.0f, hi = vec<float>{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vec<float> kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2): 1.5 * 2^23
  const vec<float> r = (x - kf * 0.693359375f) + kf * 2.12194440e-4f;             // ln2 in two parts
  vec<float> p = vec<float>{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vint8 bits = (__builtin_convertvector(kf, vint8) + 127) << 23;
  return p * reinterpret_cast<const vec<float>&>(bits);
}
// float64 (the tests' precision): std::exp per lane.
SSMKIT_INLINE vec<double> vexp(vec<double> x) {
  for (int64_t i = 0; i < Vec<double>::W; ++i) x[i] = std::exp(x[i]);
  return x;
}

// One row (b, d): u, dl (L), A (N), Bt, Ct (L, N) of batch b, h0 (N) -> y (L), hlast (N), starts (nchunks, N).
// N is a multiple of the vector width; h: (N), a: (chunk, N) scratch. Each chunk first computes its decays
// (a loop of independent exps, at the throughput of the vector units), then runs the recurrence.
template <typename T>
SSMKIT_INLINE void forward_row(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* h0, T* y, T* hlast,
                        T* starts, int64_t L, int64_t N, int64_t chunk, T* h, T* a) {
  constexpr int64_t W = Vec<T>::W;
  std::copy(h0, h0 + N, h);
  for (int64_t t0 = 0; t0 < L; t0 += chunk) {
    std::copy(h, h + N, starts + (t0 / chunk) * N);
    const int64_t T_ = std::min(chunk, L - t0);
    for (int64_t s = 0; s < T_; ++s) {
      const T dt = dl[t0 + s];
      for (int64_t n = 0; n < N; n += W) store(a + s * N + n, vexp(dt * load(A + n)));
    }
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = t0 + s;
      const T x = dl[t] * u[t];
      const T* b = Bt + t * N;
      const T* c = Ct + t * N;
      vec<T> acc{};
      for (int64_t n = 0; n < N; n += W) {
        const vec<T> hn = load(a + s * N + n) * load(h + n) + x * load(b + n);
        store(h + n, hn);
        acc += load(c + n) * hn;
      }
      y[t] = hsum<T>(acc);
    }
  }
  std::copy(h, h + N, hlast);
}

// The backward pass of one row. gh (N) holds the gradient of the last state on entry and that of h0 on exit;
// dA (N) and dBt, dCt (L, N) are accumulated into; du, ddl (L) are written. a, hs: (chunk, N) scratch.
template <typename T>
SSMKIT_INLINE void backward_row(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* starts, const T* gy,
                         T* gh, T* du, T* ddl, T* dA, T* dBt, T* dCt, int64_t L, int64_t N, int64_t chunk, T* a,
                         T* hs) {
  constexpr int64_t W = Vec<T>::W;
  const int64_t nchunks = (L + chunk - 1) / chunk;
  for (int64_t ci = nchunks - 1; ci >= 0; --ci) {
    const int64_t t0 = ci * chunk, T_ = std::min(chunk, L - t0);
    const T* hprev = starts + ci * N;
    for (int64_t s = 0; s < T_; ++s) {  // recompute the chunk's decays and states
      const int64_t t = t0 + s;
      const T dt = dl[t], x = dt * u[t];
      const T* b = Bt + t * N;
      for (int64_t n = 0; n < N; n += W) {
        const vec<T> an = vexp(dt * load(A + n));
        store(a + s * N + n, an);
        store(hs + s * N + n, an * load(hprev + n) + x * load(b + n));
      }
      hprev = hs + s * N;
    }
    for (int64_t s = T_ - 1; s >= 0; --s) {
      const int64_t t = t0 + s;
      const T dt = dl[t], ut = u[t], g_y = gy[t], x = dt * ut;
      const T* b = Bt + t * N;
      const T* c = Ct + t * N;
      const T* as = a + s * N;
      const T* h = hs + s * N;
      const T* hp = s > 0 ? hs + (s - 1) * N : starts + ci * N;
      T* db = dBt + t * N;
      T* dc = dCt + t * N;
      vec<T> gdecay{}, gB{};
      for (int64_t n = 0; n < N; n += W) {
        const vec<T> g = load(gh + n) + g_y * load(c + n);
        const vec<T> an = load(as + n);
        store(dc + n, load(dc + n) + g_y * load(h + n));
        store(db + n, load(db + n) + g * x);
        const vec<T> gl = g * load(hp + n) * an;  // the gradient of the step's log decay dt * A[n]
        store(dA + n, load(dA + n) + gl * dt);
        gdecay += gl * load(A + n);
        gB += g * load(b + n);
        store(gh + n, g * an);
      }
      const T gb = hsum<T>(gB);
      du[t] = dt * gb;
      ddl[t] = hsum<T>(gdecay) + ut * gb;
    }
  }
}

// Rows r0..r1 of the forward pass.
template <typename T>
SSMKIT_INLINE void forward_rows(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* h0, T* y,
                                T* hlast, T* starts, int64_t r0, int64_t r1, int64_t D, int64_t L, int64_t N,
                                int64_t chunk) {
  std::vector<T> h(N), a(chunk * N);
  const int64_t nc = (L + chunk - 1) / chunk;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t bi = r / D, d = r % D;
    forward_row<T>(u + r * L, dl + r * L, A + d * N, Bt + bi * L * N, Ct + bi * L * N, h0 + r * N, y + r * L,
                   hlast + r * N, starts + r * nc * N, L, N, chunk, h.data(), a.data());
  }
}

// Task (b, group): channels d0..d1 of batch b. gh (b, D, N) is updated in place (-> dh0); dBt, dCt are the
// task's own (L, N) partial sums.
template <typename T>
SSMKIT_INLINE void backward_task(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* starts,
                                 const T* gy, T* gh, T* du, T* ddl, T* dA, T* dBt, T* dCt, int64_t bi, int64_t d0,
                                 int64_t d1, int64_t D, int64_t L, int64_t N, int64_t chunk) {
  std::vector<T> a(chunk * N), hs(chunk * N);
  const int64_t nc = (L + chunk - 1) / chunk;
  for (int64_t d = d0; d < d1; ++d) {
    const int64_t r = bi * D + d;
    backward_row<T>(u + r * L, dl + r * L, A + d * N, Bt + bi * L * N, Ct + bi * L * N, starts + r * nc * N,
                    gy + r * L, gh + r * N, du + r * L, ddl + r * L, dA + r * N, dBt, dCt, L, N, chunk, a.data(),
                    hs.data());
  }
}

// Each entry point compiled twice on x86-64: for AVX2+FMA and for the baseline; `use_avx2()` picks one per call
// (the wheel's build must run on any x86-64, so -march=native is not an option). SSMKIT_SCAN_BASELINE=1 forces
// the baseline variant (the tests run both).
#if defined(__x86_64__) && defined(__GNUC__)
#define SSMKIT_AVX2 __attribute__((target("avx2,fma")))
bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
#define SSMKIT_AVX2
bool cpu_has_avx2() { return false; }
#endif

bool use_avx2() {
  const char* off = std::getenv("SSMKIT_SCAN_BASELINE");
  return cpu_has_avx2() && !(off != nullptr && off[0] == '1');
}

template <typename T>
SSMKIT_AVX2 void forward_rows_avx2(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* h0, T* y,
                                   T* hlast, T* starts, int64_t r0, int64_t r1, int64_t D, int64_t L, int64_t N,
                                   int64_t chunk) {
  forward_rows<T>(u, dl, A, Bt, Ct, h0, y, hlast, starts, r0, r1, D, L, N, chunk);
}
template <typename T>
void forward_rows_base(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* h0, T* y, T* hlast,
                       T* starts, int64_t r0, int64_t r1, int64_t D, int64_t L, int64_t N, int64_t chunk) {
  forward_rows<T>(u, dl, A, Bt, Ct, h0, y, hlast, starts, r0, r1, D, L, N, chunk);
}
template <typename T>
SSMKIT_AVX2 void backward_task_avx2(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* starts,
                                    const T* gy, T* gh, T* du, T* ddl, T* dA, T* dBt, T* dCt, int64_t bi, int64_t d0,
                                    int64_t d1, int64_t D, int64_t L, int64_t N, int64_t chunk) {
  backward_task<T>(u, dl, A, Bt, Ct, starts, gy, gh, du, ddl, dA, dBt, dCt, bi, d0, d1, D, L, N, chunk);
}
template <typename T>
void backward_task_base(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, const T* starts, const T* gy,
                        T* gh, T* du, T* ddl, T* dA, T* dBt, T* dCt, int64_t bi, int64_t d0, int64_t d1, int64_t D,
                        int64_t L, int64_t N, int64_t chunk) {
  backward_task<T>(u, dl, A, Bt, Ct, starts, gy, gh, du, ddl, dA, dBt, dCt, bi, d0, d1, D, L, N, chunk);
}

void check(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
           const at::Tensor& Ct, int64_t chunk) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan: u and delta must be (batch, D, L)");
  const int64_t b = u.size(0), D = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == D, "selective_scan: A must be (D, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(Bt.dim() == 3 && Bt.size(0) == b && Bt.size(1) == L && Bt.size(2) == N &&
                  Ct.sizes() == Bt.sizes(),
              "selective_scan: Bt and Ct must be (batch, L, N)");
  TORCH_CHECK(chunk >= 1, "selective_scan: chunk must be >= 1");
  for (const auto* t : {&u, &delta, &A, &Bt, &Ct}) {
    TORCH_CHECK(t->device().is_cpu(), "selective_scan: the extension's scan runs on the CPU only");
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "selective_scan: all inputs must share one dtype");
    TORCH_CHECK(t->is_contiguous(), "selective_scan: inputs must be contiguous");
  }
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "selective_scan: float32 or float64 expected, got ", u.scalar_type());
}

// N rounded up to the vector width of the dtype.
int64_t padded(int64_t N, at::ScalarType dtype) {
  const int64_t w = dtype == at::kFloat ? Vec<float>::W : Vec<double>::W;
  return (N + w - 1) / w * w;
}

// t (..., N) -> (..., Np), zeros appended (contiguous; t itself when Np == N).
at::Tensor pad_states(const at::Tensor& t, int64_t Np) {
  const int64_t N = t.size(-1);
  return Np == N ? t.contiguous() : at::constant_pad_nd(t, {0, Np - N}, 0).contiguous();
}

at::Tensor unpad(const at::Tensor& t, int64_t N) { return t.size(-1) == N ? t : t.narrow(-1, 0, N).contiguous(); }

}  // namespace

std::string selective_scan_isa() { return use_avx2() ? "avx2+fma" : "baseline"; }

std::vector<at::Tensor> selective_scan_fwd_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                               const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& h0,
                                               int64_t chunk) {
  check(u, delta, A, Bt, Ct, chunk);
  const int64_t b = u.size(0), D = u.size(1), L = u.size(2), N = A.size(1);
  TORCH_CHECK(h0.dim() == 3 && h0.size(0) == b && h0.size(1) == D && h0.size(2) == N && h0.is_contiguous() &&
                  h0.scalar_type() == u.scalar_type(),
              "selective_scan: h0 must be a contiguous (batch, D, N) tensor of the inputs' dtype");
  const int64_t Np = padded(N, u.scalar_type());
  const auto Ap = pad_states(A, Np), Bp = pad_states(Bt, Np), Cp = pad_states(Ct, Np), hp = pad_states(h0, Np);
  auto y = at::empty({b, D, L}, u.options());
  auto hlast = at::empty({b, D, Np}, u.options());
  auto starts = at::empty({b, D, (L + chunk - 1) / chunk, Np}, u.options());
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_fwd_cpu", [&] {
    const scalar_t *pu = u.data_ptr<scalar_t>(), *pd = delta.data_ptr<scalar_t>(), *pA = Ap.data_ptr<scalar_t>(),
                   *pB = Bp.data_ptr<scalar_t>(), *pC = Cp.data_ptr<scalar_t>(), *ph = hp.data_ptr<scalar_t>();
    scalar_t *py = y.data_ptr<scalar_t>(), *pl = hlast.data_ptr<scalar_t>(), *ps = starts.data_ptr<scalar_t>();
    at::parallel_for(0, b * D, 1, [&](int64_t r0, int64_t r1) {
      (avx2 ? forward_rows_avx2<scalar_t> : forward_rows_base<scalar_t>)(pu, pd, pA, pB, pC, ph, py, pl, ps, r0, r1, D,
                                                                          L, Np, chunk);
    });
  });
  return {y, unpad(hlast, N), starts};
}

std::vector<at::Tensor> selective_scan_bwd_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                               const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& starts,
                                               const at::Tensor& gy, const at::Tensor& gh, int64_t chunk) {
  check(u, delta, A, Bt, Ct, chunk);
  const int64_t b = u.size(0), D = u.size(1), L = u.size(2), N = A.size(1);
  const int64_t nc = (L + chunk - 1) / chunk;
  const int64_t Np = padded(N, u.scalar_type());
  TORCH_CHECK(starts.dim() == 4 && starts.size(0) == b && starts.size(1) == D && starts.size(2) == nc &&
                  starts.size(3) == Np && starts.is_contiguous() && starts.scalar_type() == u.scalar_type(),
              "selective_scan: starts must be the forward's (batch, D, ceil(L / chunk), N)");
  TORCH_CHECK(gy.sizes() == u.sizes() && gh.dim() == 3 && gh.size(0) == b && gh.size(1) == D && gh.size(2) == N,
              "selective_scan: gy must be (batch, D, L) and gh (batch, D, N)");
  // channel groups per batch row: enough tasks for every thread, few partial sums to reduce
  const int64_t threads = at::get_num_threads();
  const int64_t groups = std::min(D, std::max<int64_t>(1, (2 * threads + b - 1) / b));
  const int64_t per = (D + groups - 1) / groups;
  const auto Ap = pad_states(A, Np), Bp = pad_states(Bt, Np), Cp = pad_states(Ct, Np);
  auto gyc = gy.contiguous().to(u.scalar_type());
  auto dh = pad_states(gh.contiguous().to(u.scalar_type()), Np).clone();
  auto du = at::empty_like(u), ddl = at::empty_like(u);
  auto dA = at::zeros({b, D, Np}, u.options());
  auto dBt = at::zeros({groups, b, L, Np}, u.options()), dCt = at::zeros({groups, b, L, Np}, u.options());
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_bwd_cpu", [&] {
    const scalar_t *pu = u.data_ptr<scalar_t>(), *pd = delta.data_ptr<scalar_t>(), *pA = Ap.data_ptr<scalar_t>(),
                   *pB = Bp.data_ptr<scalar_t>(), *pC = Cp.data_ptr<scalar_t>(), *ps = starts.data_ptr<scalar_t>(),
                   *pg = gyc.data_ptr<scalar_t>();
    scalar_t *ph = dh.data_ptr<scalar_t>(), *pdu = du.data_ptr<scalar_t>(), *pdd = ddl.data_ptr<scalar_t>(),
             *pdA = dA.data_ptr<scalar_t>(), *pdB = dBt.data_ptr<scalar_t>(), *pdC = dCt.data_ptr<scalar_t>();
    at::parallel_for(0, b * groups, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t bi = k / groups, g = k % groups;
        const int64_t d0 = g * per, d1 = std::min(D, d0 + per);
        if (d0 >= d1) continue;
        const int64_t off = (g * b + bi) * L * Np;
        (avx2 ? backward_task_avx2<scalar_t> : backward_task_base<scalar_t>)(
            pu, pd, pA, pB, pC, ps, pg, ph, pdu, pdd, pdA, pdB + off, pdC + off, bi, d0, d1, D, L, Np, chunk);
      }
    });
  });
  return {du, ddl, unpad(dA.sum(0), N), unpad(dBt.sum(0), N), unpad(dCt.sum(0), N), unpad(dh, N)};
}
