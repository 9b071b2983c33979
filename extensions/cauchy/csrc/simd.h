// Small SIMD helpers shared by the CPU kernels of the selective scan and the causal convolution: 32-byte vectors
// (GCC/Clang vector extensions), a vectorised exp, and the run-time choice between the AVX2+FMA and the
// baseline x86-64 variants of an entry point.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace ssmkit_simd {

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
// The sum of a vector's lanes by halving (log2(width) shuffles and adds, not width - 1 scalar adds).
typedef int32_t vmask8 __attribute__((vector_size(32)));
typedef int64_t vmask4 __attribute__((vector_size(32)));
#if defined(__clang__)
#define SSMKIT_SHUFFLE(v, mask_t, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define SSMKIT_SHUFFLE(v, mask_t, ...) __builtin_shuffle(v, mask_t{__VA_ARGS__})
#endif
SSMKIT_INLINE float hsum(vec<float> v) {
  v += SSMKIT_SHUFFLE(v, vmask8, 4, 5, 6, 7, 0, 1, 2, 3);
  v += SSMKIT_SHUFFLE(v, vmask8, 2, 3, 0, 1, 6, 7, 4, 5);
  v += SSMKIT_SHUFFLE(v, vmask8, 1, 0, 3, 2, 5, 4, 7, 6);
  return v[0];
}
SSMKIT_INLINE double hsum(vec<double> v) {
  v += SSMKIT_SHUFFLE(v, vmask4, 2, 3, 0, 1);
  v += SSMKIT_SHUFFLE(v, vmask4, 1, 0, 3, 2);
  return v[0];
}

// e^x for 8 floats without a library call: x = k ln2 + r with |r| <= ln2/2, e^r by the degree-6 polynomial of
// Cephes' expf, 2^k from the exponent bits. x is clamped to [-87, 88]: e^-87 ~ 1.6e-38 stands in for smaller
// decays (a state that has long vanished; no denormals). Relative error ~1e-7 (tested against float64 in
// tests/ops/test_selective_scan.py).
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

// Entry points are compiled twice on x86-64: once with SSMKIT_AVX2 (AVX2+FMA) and once for the baseline;
// `use_avx2()` picks one per call (the wheel's build must run on any x86-64, so -march=native is not an option).
// SSMKIT_SIMD_BASELINE=1 forces the baseline variant (the tests run both).
#if defined(__x86_64__) && defined(__GNUC__)
#define SSMKIT_AVX2 __attribute__((target("avx2,fma")))
inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
#define SSMKIT_AVX2
inline bool cpu_has_avx2() { return false; }
#endif

// Defines NAME_avx2 (compiled for AVX2+FMA) and NAME_base (baseline) for a template<T> function NAME whose body is
// SSMKIT_INLINE: both call it with the same arguments, and the caller picks one with use_avx2().
#define SSMKIT_VARIANTS(NAME, PARAMS, ARGS)     \
  template <typename T>                         \
  SSMKIT_AVX2 void NAME##_avx2 PARAMS {         \
    NAME ARGS;                                  \
  }                                             \
  template <typename T>                         \
  void NAME##_base PARAMS {                     \
    NAME ARGS;                                  \
  }

inline bool use_avx2() {
  const char* off = std::getenv("SSMKIT_SIMD_BASELINE");
  return cpu_has_avx2() && !(off != nullptr && off[0] == '1');
}


}  // namespace ssmkit_simd
