// The selective scan of Mamba (Gu and Dao 2023, Algorithm 2) on the CPU, fused: one pass over time per
// (batch, channel) row with the N states in registers / L1, instead of the dozens of elementwise passes over
// (batch, D, N, chunk) blocks that the plain-torch scan (ssmkit/ops/selective_scan.py) makes.
//
//     h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t        y_t = (C_t . h_t + D u_t) * silu(z_t)
//
// with the skip D and the gate z of the Mamba block optional (fused here, they cost no extra pass over memory).
// Forward keeps the state at the start of every chunk (batch * D * N * L / chunk numbers). Backward walks each
// row's chunks from the end: it recomputes the chunk's decays and states from its start state into two
// (chunk, N) buffers, then runs the recurrence of the gradient backwards through them:
//
//     g_t   = gh_t + gy_t C_t                    (the gradient reaching h_t; gy_t is taken through the gate)
//     dC_t += gy_t h_t        dB_t += g_t delta_t u_t        dA += g_t h_{t-1} a_t delta_t
//     du_t  = delta_t (g_t . B_t)                 ddelta_t = (g_t h_{t-1} a_t) . A + u_t (g_t . B_t)
//     gh_{t-1} = g_t a_t                          (a_t = exp(delta_t A))
//     dz_t  = gout_t y_t silu'(z_t)               dD += gy_t u_t, du_t += D gy_t   (y_t recomputed from h_t)
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

#include "parallel.h"
#include "selective_scan.h"
#include "simd.h"

using namespace ssmkit_simd;

namespace {

// One problem: the whole tensors' data and sizes (N padded to the vector width). Dskip, z (and in backward dD,
// dz) are null when the scan has no skip / no gate.
template <typename T>
struct Problem {
  const T *u, *dl, *A, *Bt, *Ct, *Dskip, *z;
  int64_t D, L, N, chunk, nc;
  // forward
  const T* h0;
  T *y, *hlast, *starts;
  // backward
  const T* gy;
  T *gh, *du, *ddl, *dA, *dBt, *dCt, *dD, *dz;
};

// silu(z) and silu'(z) for n positions, vectorised over time (sz, dsz hold n rounded up to the width).
template <typename T>
SSMKIT_INLINE void silu_block(const T* z, int64_t n, T* sz, T* dsz) {
  constexpr int64_t W = Vec<T>::W;
  for (int64_t s = 0; s < n; s += W) {
    vec<T> zv{};
    if (s + W <= n) {
      zv = load(z + s);
    } else {
      for (int64_t i = 0; i < n - s; ++i) zv[i] = z[s + i];
    }
    const vec<T> sig = T(1) / (T(1) + vexp(-zv));
    store(sz + s, zv * sig);
    store(dsz + s, sig * (T(1) + zv * (T(1) - sig)));
  }
}

// Scratch of one thread: the state, a chunk's decays and states, silu of a chunk of the gate.
template <typename T>
struct Scratch {
  std::vector<T> h, a, hs, sz, dsz;
  Scratch(int64_t N, int64_t chunk)
      : h(N), a(chunk * N), hs(chunk * N), sz(chunk + Vec<T>::W), dsz(chunk + Vec<T>::W) {}
};

// The forward pass of row r = (b, d): y = (C . h + D u) (* silu(z)), the last state and the chunks' start
// states. Each chunk first computes its decays (independent exps, at the throughput of the vector units),
// then runs the recurrence.
template <typename T>
SSMKIT_INLINE void forward_row(const Problem<T>& p, int64_t r, Scratch<T>& w) {
  constexpr int64_t W = Vec<T>::W;
  const int64_t N = p.N, L = p.L, bi = r / p.D, d = r % p.D;
  const T *u = p.u + r * L, *dl = p.dl + r * L, *A = p.A + d * N, *Bt = p.Bt + bi * L * N, *Ct = p.Ct + bi * L * N;
  const T Dd = p.Dskip ? p.Dskip[d] : T(0);
  T *y = p.y + r * L, *starts = p.starts + r * p.nc * N, *h = w.h.data(), *a = w.a.data();
  std::copy(p.h0 + r * N, p.h0 + (r + 1) * N, h);
  for (int64_t t0 = 0; t0 < L; t0 += p.chunk) {
    std::copy(h, h + N, starts + (t0 / p.chunk) * N);
    const int64_t T_ = std::min(p.chunk, L - t0);
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
      y[t] = hsum(acc) + Dd * u[t];
    }
    if (p.z) {
      silu_block(p.z + r * L + t0, T_, w.sz.data(), w.dsz.data());
      for (int64_t s = 0; s < T_; ++s) y[t0 + s] *= w.sz[s];
    }
  }
  std::copy(h, h + N, p.hlast + r * N);
}

// The backward pass of row r. gh (N) holds the gradient of the last state on entry and that of h0 on exit;
// dA (N) and the task's dBt, dCt (L, N) partial sums are accumulated into; du, ddl, dz (L) and dD[r] are
// written. y (before the gate) is recomputed where the gate needs it.
template <typename T>
SSMKIT_INLINE void backward_row(const Problem<T>& p, int64_t r, T* dBt, T* dCt, Scratch<T>& w) {
  constexpr int64_t W = Vec<T>::W;
  const int64_t N = p.N, L = p.L, bi = r / p.D, d = r % p.D;
  const T *u = p.u + r * L, *dl = p.dl + r * L, *A = p.A + d * N, *Bt = p.Bt + bi * L * N, *Ct = p.Ct + bi * L * N;
  const T *starts = p.starts + r * p.nc * N, *gy = p.gy + r * L;
  const T Dd = p.Dskip ? p.Dskip[d] : T(0);
  T *gh = p.gh + r * N, *du = p.du + r * L, *ddl = p.ddl + r * L, *dA = p.dA + r * N, *a = w.a.data(),
    *hs = w.hs.data();
  T dD = 0;
  for (int64_t ci = p.nc - 1; ci >= 0; --ci) {
    const int64_t t0 = ci * p.chunk, T_ = std::min(p.chunk, L - t0);
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
    if (p.z) silu_block(p.z + r * L + t0, T_, w.sz.data(), w.dsz.data());
    for (int64_t s = T_ - 1; s >= 0; --s) {
      const int64_t t = t0 + s;
      const T dt = dl[t], ut = u[t], x = dt * ut;
      const T g_y = p.z ? gy[t] * w.sz[s] : gy[t];  // the gradient of y before the gate
      const T* b = Bt + t * N;
      const T* c = Ct + t * N;
      const T* as = a + s * N;
      const T* h = hs + s * N;
      const T* hp = s > 0 ? hs + (s - 1) * N : starts + ci * N;
      T* db = dBt + t * N;
      T* dc = dCt + t * N;
      vec<T> gdecay{}, gB{}, yv{};
      for (int64_t n = 0; n < N; n += W) {
        const vec<T> g = load(gh + n) + g_y * load(c + n);
        const vec<T> an = load(as + n), hn = load(h + n);
        store(dc + n, load(dc + n) + g_y * hn);
        store(db + n, load(db + n) + g * x);
        const vec<T> gl = g * load(hp + n) * an;  // the gradient of the step's log decay dt * A[n]
        store(dA + n, load(dA + n) + gl * dt);
        gdecay += gl * load(A + n);
        gB += g * load(b + n);
        yv += load(c + n) * hn;
        store(gh + n, g * an);
      }
      if (p.z) p.dz[r * L + t] = gy[t] * (hsum(yv) + Dd * ut) * w.dsz[s];
      const T gb = hsum(gB);
      du[t] = dt * gb + Dd * g_y;
      ddl[t] = hsum(gdecay) + ut * gb;
      dD += g_y * ut;
    }
  }
  if (p.dD) p.dD[r] = dD;
}

// Rows r0..r1 of the forward pass.
template <typename T>
SSMKIT_INLINE void forward_rows(const Problem<T>& p, int64_t r0, int64_t r1) {
  Scratch<T> w(p.N, p.chunk);
  for (int64_t r = r0; r < r1; ++r) forward_row(p, r, w);
}

// Task (b, group): channels d0..d1 of batch b, with its own dBt, dCt (L, N) partial sums.
template <typename T>
SSMKIT_INLINE void backward_task(const Problem<T>& p, int64_t bi, int64_t d0, int64_t d1, T* dBt, T* dCt) {
  Scratch<T> w(p.N, p.chunk);
  for (int64_t d = d0; d < d1; ++d) backward_row(p, bi * p.D + d, dBt, dCt, w);
}

SSMKIT_VARIANTS(forward_rows, (const Problem<T>& p, int64_t r0, int64_t r1), (p, r0, r1))
SSMKIT_VARIANTS(backward_task, (const Problem<T>& p, int64_t bi, int64_t d0, int64_t d1, T* dBt, T* dCt),
                (p, bi, d0, d1, dBt, dCt))

void check(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
           const at::Tensor& Ct, const at::Tensor& Dskip, const at::Tensor& z, int64_t chunk) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan: u and delta must be (batch, D, L)");
  const int64_t b = u.size(0), D = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == D, "selective_scan: A must be (D, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(Bt.dim() == 3 && Bt.size(0) == b && Bt.size(1) == L && Bt.size(2) == N && Ct.sizes() == Bt.sizes(),
              "selective_scan: Bt and Ct must be (batch, L, N)");
  TORCH_CHECK(!Dskip.defined() || (Dskip.dim() == 1 && Dskip.size(0) == D), "selective_scan: D must be (D,)");
  TORCH_CHECK(!z.defined() || z.sizes() == u.sizes(), "selective_scan: z must be (batch, D, L) like u");
  TORCH_CHECK(chunk >= 1, "selective_scan: chunk must be >= 1");
  for (const auto* t : {&u, &delta, &A, &Bt, &Ct, &Dskip, &z}) {
    if (!t->defined()) continue;
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

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

std::string selective_scan_isa() { return use_avx2() ? "avx2+fma" : "baseline"; }

std::vector<at::Tensor> selective_scan_fwd_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                               const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& h0,
                                               const std::optional<at::Tensor>& Dskip,
                                               const std::optional<at::Tensor>& z, int64_t chunk) {
  const at::Tensor Ds = Dskip.value_or(at::Tensor()), zs = z.value_or(at::Tensor());
  check(u, delta, A, Bt, Ct, Ds, zs, chunk);
  const int64_t b = u.size(0), D = u.size(1), L = u.size(2), N = A.size(1);
  TORCH_CHECK(h0.dim() == 3 && h0.size(0) == b && h0.size(1) == D && h0.size(2) == N && h0.is_contiguous() &&
                  h0.scalar_type() == u.scalar_type(),
              "selective_scan: h0 must be a contiguous (batch, D, N) tensor of the inputs' dtype");
  const int64_t Np = padded(N, u.scalar_type()), nc = (L + chunk - 1) / chunk;
  const auto Ap = pad_states(A, Np), Bp = pad_states(Bt, Np), Cp = pad_states(Ct, Np), hp = pad_states(h0, Np);
  auto y = at::empty({b, D, L}, u.options());
  auto hlast = at::empty({b, D, Np}, u.options());
  auto starts = at::empty({b, D, nc, Np}, u.options());
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_fwd_cpu", [&] {
    Problem<scalar_t> p{};
    p.u = u.data_ptr<scalar_t>(), p.dl = delta.data_ptr<scalar_t>(), p.A = Ap.data_ptr<scalar_t>();
    p.Bt = Bp.data_ptr<scalar_t>(), p.Ct = Cp.data_ptr<scalar_t>(), p.h0 = hp.data_ptr<scalar_t>();
    p.Dskip = ptr_or_null<scalar_t>(Ds), p.z = ptr_or_null<scalar_t>(zs);
    p.D = D, p.L = L, p.N = Np, p.chunk = chunk, p.nc = nc;
    p.y = y.data_ptr<scalar_t>(), p.hlast = hlast.data_ptr<scalar_t>(), p.starts = starts.data_ptr<scalar_t>();
    at::parallel_for(0, b * D, ssmkit::grain_for(L * Np), [&](int64_t r0, int64_t r1) {
      (avx2 ? forward_rows_avx2<scalar_t> : forward_rows_base<scalar_t>)(p, r0, r1);
    });
  });
  return {y, unpad(hlast, N), starts};
}

std::vector<at::Tensor> selective_scan_bwd_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                               const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& starts,
                                               const std::optional<at::Tensor>& Dskip,
                                               const std::optional<at::Tensor>& z, const at::Tensor& gy,
                                               const at::Tensor& gh, int64_t chunk) {
  const at::Tensor Ds = Dskip.value_or(at::Tensor()), zs = z.value_or(at::Tensor());
  check(u, delta, A, Bt, Ct, Ds, zs, chunk);
  const int64_t b = u.size(0), D = u.size(1), L = u.size(2), N = A.size(1);
  const int64_t nc = (L + chunk - 1) / chunk, Np = padded(N, u.scalar_type());
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
  auto dD = Ds.defined() ? at::empty({b, D}, u.options()) : at::Tensor();
  auto dz = zs.defined() ? at::empty_like(u) : at::Tensor();
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_bwd_cpu", [&] {
    Problem<scalar_t> p{};
    p.u = u.data_ptr<scalar_t>(), p.dl = delta.data_ptr<scalar_t>(), p.A = Ap.data_ptr<scalar_t>();
    p.Bt = Bp.data_ptr<scalar_t>(), p.Ct = Cp.data_ptr<scalar_t>();
    p.Dskip = ptr_or_null<scalar_t>(Ds), p.z = ptr_or_null<scalar_t>(zs);
    p.D = D, p.L = L, p.N = Np, p.chunk = chunk, p.nc = nc;
    p.starts = starts.data_ptr<scalar_t>(), p.gy = gyc.data_ptr<scalar_t>(), p.gh = dh.data_ptr<scalar_t>();
    p.du = du.data_ptr<scalar_t>(), p.ddl = ddl.data_ptr<scalar_t>(), p.dA = dA.data_ptr<scalar_t>();
    p.dD = ptr_or_null<scalar_t>(dD), p.dz = ptr_or_null<scalar_t>(dz);
    scalar_t *pdB = dBt.data_ptr<scalar_t>(), *pdC = dCt.data_ptr<scalar_t>();
    at::parallel_for(0, b * groups, ssmkit::grain_for(per * L * Np), [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t bi = k / groups, g = k % groups;
        const int64_t d0 = g * per, d1 = std::min(D, d0 + per);
        if (d0 >= d1) continue;
        const int64_t off = (g * b + bi) * L * Np;
        (avx2 ? backward_task_avx2<scalar_t> : backward_task_base<scalar_t>)(p, bi, d0, d1, pdB + off, pdC + off);
      }
    });
  });
  return {du, ddl, unpad(dA.sum(0), N), unpad(dBt.sum(0), N), unpad(dCt.sum(0), N), unpad(dh, N),
          dD.defined() ? dD.sum(0) : dD, dz};
}
