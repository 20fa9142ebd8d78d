// llm-int8's CPU kernels around the integer GEMM, as one torch library (``llm_int8_cpu``):
//
//   quantize_rows  steps 1-2 of LLM.int8(): the outlier dims O, each row's range over the other
//                  columns, and the codes, written once into the buffer the GEMM reads
//                  (float32 for fbgemm, int8 for oneDNN's s8 kernel);
//   epilogue       step 4 in one pass: the pair-bounded weight's sparse fix (FBGEMM_PAIRS), the
//                  zero-point correction, s_w then s_x, the outlier / float-column products, the
//                  bias and the cast to the output dtype.
//
// Each equals, bit for bit, the PyTorch sequence it replaces (kernels/quantize.py and
// kernels/epilogue.py), which stays the reference and the fallback. That fixes every rounding:
// products and sums are rounded one by one, in the order of that sequence (the build passes
// -ffp-contract=off so the compiler fuses nothing); the one fused multiply-add is the zero-point
// correction, whose operands are integers, so that it is the exact value rounded once.
// Built with -march=native on the machine that runs it (the build cache is keyed by CPU flags);
// the AVX2 paths are taken where the compiler targets AVX2 + FMA + F16C, portable loops elsewhere.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LLM_INT8_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__)
// 16 lanes where the compiler targets AVX-512 (F + BW): the same operations per element as the
// 8-lane loops (which then take the remainders), so the same bits, at half the instructions
#define LLM_INT8_AVX512 1
#endif
#endif

namespace {

constexpr float kInt8Max = 127.0f;

// calls f with a value of the C++ type of a float32 / bf16 / fp16 tensor (float64 is the caller's to round)
template <typename F>
void dispatch_float(at::ScalarType st, const char* what, F&& f) {
  switch (st) {
    case at::kFloat:
      f(float{});
      break;
    case at::kBFloat16:
      f(c10::BFloat16{});
      break;
    case at::kHalf:
      f(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, what, ": expected float32, bfloat16 or float16, got ", st);
  }
}

inline float to_f32(float v) { return v; }
inline float to_f32(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_f32(c10::Half v) { return static_cast<float>(v); }

inline void store_scalar(float v, float* p) { *p = v; }
inline void store_scalar(float v, c10::BFloat16* p) { *p = c10::BFloat16(v); }  // round to nearest even
inline void store_scalar(float v, c10::Half* p) { *p = c10::Half(v); }
inline void store_scalar(float v, int8_t* p) { *p = static_cast<int8_t>(v); }  // v: an integer in [-127, 127]

#ifdef LLM_INT8_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {  // bf16 -> float32 is exact: the bits shifted up
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline void store8(__m256 v, float* p) { _mm256_storeu_ps(p, v); }
inline void store8(__m256 v, c10::BFloat16* p) {
  // round to nearest even as c10::BFloat16 does: add 0x7fff plus the lowest kept bit, then truncate
  __m256i bits = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  __m256i is_num = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_ORD_Q));
  rounded = _mm256_blendv_epi8(_mm256_set1_epi32(0x7fc0), rounded, is_num);  // NaN -> 0x7fc0, as c10
  __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
inline void store8(__m256 v, c10::Half* p) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
inline void store8(__m256 v, int8_t* p) {  // v: integers in [-127, 127]
  __m256i i32 = _mm256_cvtps_epi32(v);
  __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(i16, i16));
}

inline __m256 round_half_even(__m256 v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
#endif

#ifdef LLM_INT8_AVX512
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline void store16(__m512 v, float* p) { _mm512_storeu_ps(p, v); }
inline void store16(__m512 v, c10::BFloat16* p) {  // as store8: c10's round to nearest even, NaN -> 0x7fc0
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  rounded = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), _mm512_set1_epi32(0x7fc0), rounded);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));  // each lane < 2**16
}
inline void store16(__m512 v, c10::Half* p) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
inline void store16(__m512 v, int8_t* p) {  // v: integers in [-127, 127]
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
}
inline __m512 abs16(__m512 v) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff))); }
inline __m512 andnot16(__m512 mask, __m512 v) {
  return _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_castps_si512(mask), _mm512_castps_si512(v)));
}
#endif

// ---- steps 1-2: outlier dims, row ranges, codes -------------------------------------------------

// max |X[:, k]| per column, NaN where the column holds one (as X.amax(0) / X.amin(0) propagate it).
// Threads split the columns, so each owns its slice over all rows and nothing is merged.
#ifdef LLM_INT8_AVX512
// Columns [k, k + 64) over all rows, the maxima in four registers (stored once, not per row); a NaN
// is remembered in a lane mask, since max drops a NaN operand.
template <typename T>
void column_absmax_block64(const T* X, int64_t M, int64_t K, int64_t k, float* amax) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  __mmask16 nan[4] = {0, 0, 0, 0};
  for (int64_t m = 0; m < M; ++m) {
    const T* row = X + m * K + k;
    for (int i = 0; i < 4; ++i) {
      __m512 a = abs16(load16(row + 16 * i));
      nan[i] |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
      acc[i] = _mm512_max_ps(acc[i], a);
    }
  }
  for (int i = 0; i < 4; ++i) _mm512_storeu_ps(amax + k + 16 * i, _mm512_mask_blend_ps(nan[i], acc[i], _mm512_set1_ps(NAN)));
}
#endif

template <typename T>
void column_absmax(const T* X, int64_t M, int64_t K, float* amax) {
  at::parallel_for(0, K, 512, [&](int64_t k0, int64_t k1) {
    int64_t kb = k0;
#ifdef LLM_INT8_AVX512
    for (; kb + 64 <= k1; kb += 64) column_absmax_block64(X, M, K, kb, amax);
#endif
    for (int64_t k = kb; k < k1; ++k) amax[k] = 0.0f;
    for (int64_t m = 0; m < M && kb < k1; ++m) {
      const T* row = X + m * K;
      int64_t k = kb;
#ifdef LLM_INT8_AVX2
      const __m256 sign = _mm256_set1_ps(-0.0f);
      for (; k + 8 <= k1; k += 8) {
        __m256 a = _mm256_andnot_ps(sign, load8(row + k));
        __m256 cur = _mm256_loadu_ps(amax + k);
        // max_ps drops a NaN operand; OR-ing in the unordered mask (all ones: a NaN) keeps it
        __m256 nan = _mm256_cmp_ps(cur, a, _CMP_UNORD_Q);
        _mm256_storeu_ps(amax + k, _mm256_or_ps(_mm256_max_ps(cur, a), nan));
      }
#endif
      for (; k < k1; ++k) {
        float a = std::fabs(to_f32(row[k]));
        float cur = amax[k];
        amax[k] = (std::isnan(a) || std::isnan(cur)) ? std::numeric_limits<float>::quiet_NaN() : std::max(cur, a);
      }
    }
  });
}

struct RowParams {
  bool zeropoint;
  float scale_mul;  // zeropoint: nd; absmax: 127 / absmax (0 for an all-zero row)
  float zp;         // zeropoint only
  float absmax;     // absmax only
  bool tiny;        // absmax: 127 / absmax overflowed, divide instead
};

// The row's parameters from its range over the regular columns, as primitives.zeropoint_params
// and kernels/quantize.py compute them (same operations, same roundings).
RowParams row_params(float hi, float lo, bool zeropoint, float* s_x, float* zp_out) {
  RowParams p{zeropoint, 0.0f, 0.0f, 0.0f, false};
  if (zeropoint) {
    hi = std::max(hi, 0.0f);
    lo = std::min(lo, 0.0f);
    double width = static_cast<double>(hi) - static_cast<double>(lo);
    // torch evaluates 254 / width as reciprocal(width) * 254, in float64
    double nd = width > 0 ? (1.0 / width) * 254.0 : 1.0;
    nd = std::min(nd, static_cast<double>(FLT_MAX));
    p.scale_mul = static_cast<float>(nd);
    float scaled_lo = p.scale_mul * lo;
    p.zp = -std::nearbyint(scaled_lo) - kInt8Max;
    *s_x = 1.0f / p.scale_mul;
    *zp_out = p.zp;
  } else {
    float absmax = std::max(hi, -lo);
    // torch evaluates 127 / absmax as reciprocal(absmax) * 127
    float inv = absmax > 0 ? (1.0f / absmax) * kInt8Max : 0.0f;
    p.tiny = std::isinf(inv);
    p.scale_mul = inv;
    p.absmax = absmax;
    *s_x = absmax / kInt8Max;
  }
  return p;
}

inline float code_scalar(float v, const RowParams& p) {
  float t;
  if (p.zeropoint) {
    t = v * p.scale_mul;
    t = t + p.zp;
  } else {
    t = p.tiny ? (v / p.absmax) * kInt8Max : v * p.scale_mul;
  }
  t = std::nearbyint(t);
  return std::min(std::max(t, -kInt8Max), kInt8Max);
}

// One row: its range over the regular columns (float columns read as 0, as X_regular holds them:
// 0 is inside every range the quantizers use, so it changes nothing), then its codes.
// ``Masked``: some columns are computed in float (O or static); without, the 16-lane loops skip the mask.
template <bool Masked, typename T, typename C>
void quantize_row(const T* x, int64_t K, const float* float_mask, bool zeropoint, C* out, float* s_x, float* zp) {
  float hi = -std::numeric_limits<float>::infinity();
  float lo = std::numeric_limits<float>::infinity();
  int64_t k = 0;
#ifdef LLM_INT8_AVX512
  __m512 whi = _mm512_set1_ps(hi), wlo = _mm512_set1_ps(lo);
  for (; k + 16 <= K; k += 16) {
    __m512 v = load16(x + k);
    if constexpr (Masked) v = andnot16(_mm512_loadu_ps(float_mask + k), v);
    whi = _mm512_max_ps(whi, v);
    wlo = _mm512_min_ps(wlo, v);
  }
  hi = _mm512_reduce_max_ps(whi);  // max and min are exact in any order; no NaN reaches here (O holds them)
  lo = _mm512_reduce_min_ps(wlo);
#endif
#ifdef LLM_INT8_AVX2
  __m256 vhi = _mm256_set1_ps(hi), vlo = _mm256_set1_ps(lo);
  for (; k + 8 <= K; k += 8) {
    __m256 v = _mm256_andnot_ps(_mm256_loadu_ps(float_mask + k), load8(x + k));
    vhi = _mm256_max_ps(vhi, v);
    vlo = _mm256_min_ps(vlo, v);
  }
  alignas(32) float hs[8], ls[8];
  _mm256_store_ps(hs, vhi);
  _mm256_store_ps(ls, vlo);
  for (int i = 0; i < 8; ++i) {
    hi = std::max(hi, hs[i]);
    lo = std::min(lo, ls[i]);
  }
#endif
  for (; k < K; ++k) {
    float v = float_mask[k] != 0.0f ? 0.0f : to_f32(x[k]);
    hi = std::max(hi, v);
    lo = std::min(lo, v);
  }
  const RowParams p = row_params(hi, lo, zeropoint, s_x, zp);
  k = 0;
#ifdef LLM_INT8_AVX512
  {
    const __m512 mul = _mm512_set1_ps(p.scale_mul), zpv = _mm512_set1_ps(p.zp), amax = _mm512_set1_ps(p.absmax);
    const __m512 cmax = _mm512_set1_ps(kInt8Max), cmin = _mm512_set1_ps(-kInt8Max);
    for (; k + 16 <= K; k += 16) {
      __m512 v = load16(x + k);
      if constexpr (Masked) v = andnot16(_mm512_loadu_ps(float_mask + k), v);
      __m512 t;
      if (p.zeropoint) {
        t = _mm512_add_ps(_mm512_mul_ps(v, mul), zpv);
      } else {
        t = p.tiny ? _mm512_mul_ps(_mm512_div_ps(v, amax), cmax) : _mm512_mul_ps(v, mul);
      }
      t = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      store16(_mm512_min_ps(_mm512_max_ps(t, cmin), cmax), out + k);
    }
  }
#endif
#ifdef LLM_INT8_AVX2
  const __m256 mul = _mm256_set1_ps(p.scale_mul), zpv = _mm256_set1_ps(p.zp), amax = _mm256_set1_ps(p.absmax);
  const __m256 cmax = _mm256_set1_ps(kInt8Max), cmin = _mm256_set1_ps(-kInt8Max), c127 = _mm256_set1_ps(kInt8Max);
  for (; k + 8 <= K; k += 8) {
    __m256 v = _mm256_andnot_ps(_mm256_loadu_ps(float_mask + k), load8(x + k));
    __m256 t;
    if (p.zeropoint) {
      t = _mm256_add_ps(_mm256_mul_ps(v, mul), zpv);
    } else {
      t = p.tiny ? _mm256_mul_ps(_mm256_div_ps(v, amax), c127) : _mm256_mul_ps(v, mul);
    }
    t = _mm256_min_ps(_mm256_max_ps(round_half_even(t), cmin), cmax);
    store8(t, out + k);
  }
#endif
  for (; k < K; ++k) {
    float v = float_mask[k] != 0.0f ? 0.0f : to_f32(x[k]);
    store_scalar(code_scalar(v, p), out + k);
  }
}

template <typename T, typename C>
void quantize_all_rows(const T* X, int64_t M, int64_t K, const float* mask, bool masked, bool zeropoint, C* out,
                       float* s_x, float* zp) {
  at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
    float unused = 0.0f;
    for (int64_t m = m0; m < m1; ++m) {
      float* zp_m = zeropoint ? zp + m : &unused;
      if (masked) {
        quantize_row<true>(X + m * K, K, mask, zeropoint, out + m * K, s_x + m, zp_m);
      } else {
        quantize_row<false>(X + m * K, K, mask, zeropoint, out + m * K, s_x + m, zp_m);
      }
    }
  });
}

#ifdef LLM_INT8_AVX512
// ---- steps 1-2 reading X once (AVX-512) --------------------------------------------------------
//
// The column rule needs every row before any row's range is known: O = the columns where some
// |x| >= t. The two-pass route reads X once for the column maxima and again per row. Here each row
// is read once from memory: one look finds its entries with !(|x| < t) (NaN too), adds their columns
// to the columns this thread knows to be in O, and takes the row's range over the other columns;
// a second look, while the row is in L1, writes its codes. Entries in columns of O found only later
// (by a later row, or another thread) were quantized as regular values: such rows are done again
// with the final O, which on real activations is a handful of rows at the start of each thread's
// share (outlier dims are features of the model, in most tokens). The range over the kept entries is
// the range of X_regular's row (0 added where any column is masked, as X_regular holds 0 there), so
// the bits equal the two-pass route's.

struct Columns {  // the columns computed in float: one bit per column, 16 to a word
  std::vector<uint16_t> bits;
  int64_t count = 0;
  explicit Columns(int64_t K) : bits((K + 15) / 16, 0) {}
  bool has(int64_t k) const { return (bits[k >> 4] >> (k & 15)) & 1u; }
  void add(int64_t k) {
    bits[k >> 4] |= static_cast<uint16_t>(1u << (k & 15));
    ++count;
  }
};

// The row's range over the columns not in ``cols``, finding (if ``t`` is given) the entries with
// !(|x| < t) in columns not yet in it, which join it (and ``found``).
template <typename T>
void scan_row(const T* x, int64_t K, const float* t, Columns& cols, std::vector<int64_t>* found, float* hi, float* lo) {
  __m512 whi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 wlo = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  const __m512 tv = _mm512_set1_ps(t ? *t : 0.0f);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 v = load16(x + k);
    __mmask16 known = cols.bits[k >> 4];
    if (t) {
      const __mmask16 fresh = static_cast<__mmask16>(~_mm512_cmp_ps_mask(abs16(v), tv, _CMP_LT_OQ) & ~known);
      if (fresh) {
        for (int j = 0; j < 16; ++j)
          if ((fresh >> j) & 1) {
            cols.add(k + j);
            found->push_back(k + j);
          }
        known = cols.bits[k >> 4];
      }
    }
    const __mmask16 keep = static_cast<__mmask16>(~known);
    whi = _mm512_mask_max_ps(whi, keep, whi, v);
    wlo = _mm512_mask_min_ps(wlo, keep, wlo, v);
  }
  float h = _mm512_reduce_max_ps(whi), l = _mm512_reduce_min_ps(wlo);  // exact in any order, no NaN
  for (; k < K; ++k) {
    const float v = to_f32(x[k]);
    if (t && !cols.has(k) && !(std::fabs(v) < *t)) {
      cols.add(k);
      found->push_back(k);
    }
    if (!cols.has(k)) {
      h = std::max(h, v);
      l = std::min(l, v);
    }
  }
  if (cols.count > 0) {  // X_regular holds 0 in the masked columns
    h = std::max(h, 0.0f);
    l = std::min(l, 0.0f);
  }
  *hi = h;
  *lo = l;
}

// The row's codes, masked columns as 0 (their code is then the zero point, or 0).
template <typename T, typename C>
void code_row(const T* x, int64_t K, const Columns& cols, const RowParams& p, C* out) {
  const __m512 mul = _mm512_set1_ps(p.scale_mul), zpv = _mm512_set1_ps(p.zp), amax = _mm512_set1_ps(p.absmax);
  const __m512 cmax = _mm512_set1_ps(kInt8Max), cmin = _mm512_set1_ps(-kInt8Max);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 v = _mm512_maskz_mov_ps(static_cast<__mmask16>(~cols.bits[k >> 4]), load16(x + k));
    __m512 t;
    if (p.zeropoint) {
      t = _mm512_add_ps(_mm512_mul_ps(v, mul), zpv);
    } else {
      t = p.tiny ? _mm512_mul_ps(_mm512_div_ps(v, amax), cmax) : _mm512_mul_ps(v, mul);
    }
    t = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    store16(_mm512_min_ps(_mm512_max_ps(t, cmin), cmax), out + k);
  }
  for (; k < K; ++k) store_scalar(code_scalar(cols.has(k) ? 0.0f : to_f32(x[k]), p), out + k);
}

struct RowsDone {  // what one thread's share of the rows was quantized with
  int64_t m0, m1;
  std::vector<int64_t> count;  // per row: the columns masked when it was coded
};

// Quantizes every row; returns the sorted indices of O. ``base``: the static columns.
template <typename T, typename C>
std::vector<int64_t> quantize_once(const T* X, int64_t M, int64_t K, float t, const Columns& base, bool zeropoint,
                                   C* out, float* s_x, float* zp) {
  std::mutex lock;
  std::vector<int64_t> outliers;
  std::vector<RowsDone> done;
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    Columns cols = base;
    std::vector<int64_t> found;
    RowsDone rows{m0, m1, std::vector<int64_t>(m1 - m0)};
    float unused = 0.0f;
    for (int64_t m = m0; m < m1; ++m) {
      float hi, lo;
      scan_row(X + m * K, K, &t, cols, &found, &hi, &lo);
      const RowParams p = row_params(hi, lo, zeropoint, s_x + m, zeropoint ? zp + m : &unused);
      code_row(X + m * K, K, cols, p, out + m * K);
      rows.count[m - m0] = cols.count;
    }
    std::lock_guard<std::mutex> guard(lock);
    outliers.insert(outliers.end(), found.begin(), found.end());
    done.push_back(std::move(rows));
  });
  std::sort(outliers.begin(), outliers.end());
  outliers.erase(std::unique(outliers.begin(), outliers.end()), outliers.end());
  Columns final_cols = base;
  for (int64_t k : outliers) final_cols.add(k);
  std::vector<int64_t> stale;  // rows coded before some column of O was known to their thread
  for (const RowsDone& rows : done)
    for (int64_t m = rows.m0; m < rows.m1; ++m)
      if (rows.count[m - rows.m0] < final_cols.count) stale.push_back(m);
  at::parallel_for(0, static_cast<int64_t>(stale.size()), 16, [&](int64_t i0, int64_t i1) {
    Columns cols = final_cols;
    float unused = 0.0f;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = stale[i];
      float hi, lo;
      scan_row<T>(X + m * K, K, nullptr, cols, nullptr, &hi, &lo);
      const RowParams p = row_params(hi, lo, zeropoint, s_x + m, zeropoint ? zp + m : &unused);
      code_row(X + m * K, K, cols, p, out + m * K);
    }
  });
  return outliers;
}
#endif

#ifdef LLM_INT8_AVX512
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows_once(const at::Tensor& X, double threshold,
                                                                  const c10::optional<at::Tensor>& static_idx,
                                                                  bool zeropoint, at::Tensor& codes) {
  const int64_t M = X.size(0), K = X.size(1);
  Columns base(K);
  if (static_idx.has_value()) {
    const at::Tensor s = static_idx->contiguous();
    TORCH_CHECK(s.scalar_type() == at::kLong, "quantize_rows: static_idx must be int64");
    const int64_t* sp = s.data_ptr<int64_t>();
    for (int64_t i = 0; i < s.numel(); ++i) {
      TORCH_CHECK(sp[i] >= 0 && sp[i] < K, "quantize_rows: static_idx out of range");
      if (!base.has(sp[i])) base.add(sp[i]);
    }
  }
  // !(|x| < t) per entry is !(max|x| < t) per column (NaN included); threshold 0 keeps only the
  // non-finite entries, which are the ones not below +inf
  const float t = threshold > 0 ? static_cast<float>(threshold) : std::numeric_limits<float>::infinity();
  at::Tensor s_x = at::empty({M}, X.options().dtype(at::kFloat));
  at::Tensor zp = at::empty({zeropoint ? M : 0}, X.options().dtype(at::kFloat));
  std::vector<int64_t> outliers;
  dispatch_float(X.scalar_type(), "quantize_rows", [&](auto tag) {
    using T = decltype(tag);
    if (codes.scalar_type() == at::kFloat) {
      outliers = quantize_once(X.data_ptr<T>(), M, K, t, base, zeropoint, codes.data_ptr<float>(),
                               s_x.data_ptr<float>(), zp.data_ptr<float>());
    } else {
      outliers = quantize_once(X.data_ptr<T>(), M, K, t, base, zeropoint, codes.data_ptr<int8_t>(),
                               s_x.data_ptr<float>(), zp.data_ptr<float>());
    }
  });
  at::Tensor idx = at::empty({static_cast<int64_t>(outliers.size())}, X.options().dtype(at::kLong));
  if (!outliers.empty()) std::memcpy(idx.data_ptr<int64_t>(), outliers.data(), outliers.size() * sizeof(int64_t));
  return {s_x, zp, idx};
}
#endif

// Returns (s_x (M,), zp (M,) or (0,), the sorted indices of O). ``codes``: (M, K) float32 or int8,
// contiguous, written in place; or (M + 2, K) float32, whose last two rows get fbgemm's sentinels.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows(const at::Tensor& X, double threshold,
                                                             const c10::optional<at::Tensor>& static_idx,
                                                             bool zeropoint, at::Tensor codes) {
  TORCH_CHECK(X.dim() == 2 && X.is_contiguous() && X.device().is_cpu(), "quantize_rows: X must be a contiguous 2-D CPU tensor");
  const int64_t M = X.size(0), K = X.size(1);
  TORCH_CHECK(codes.dim() == 2 && (codes.size(0) == M || codes.size(0) == M + 2) && codes.size(1) == K &&
                  codes.is_contiguous(),
              "quantize_rows: codes must be a contiguous (M, K) or (M + 2, K) tensor");
  if (codes.size(0) == M + 2) {  // fbgemm's two sentinel rows (codes_gemm.py): -128 and 127 in column 0
    TORCH_CHECK(codes.scalar_type() == at::kFloat, "quantize_rows: sentinel rows are for float32 codes");
    float* sentinel = codes.data_ptr<float>() + M * K;
    std::fill(sentinel, sentinel + 2 * K, 0.0f);
    sentinel[0] = -128.0f;
    sentinel[K] = kInt8Max;
  }
  TORCH_CHECK(codes.scalar_type() == at::kFloat || codes.scalar_type() == at::kChar, "quantize_rows: codes must be float32 or int8");
#ifdef LLM_INT8_AVX512
  return quantize_rows_once(X, threshold, static_idx, zeropoint, codes);
#endif
  std::vector<float> amax(K);
  dispatch_float(X.scalar_type(), "quantize_rows", [&](auto tag) {
    using T = decltype(tag);
    column_absmax(X.data_ptr<T>(), M, K, amax.data());
  });
  std::vector<float> mask(K, 0.0f);  // all bits set on the columns computed in float (O and static)
  float all_ones;
  uint32_t ones = 0xffffffffu;
  std::memcpy(&all_ones, &ones, sizeof(float));
  if (static_idx.has_value()) {
    const at::Tensor s = static_idx->contiguous();
    TORCH_CHECK(s.scalar_type() == at::kLong, "quantize_rows: static_idx must be int64");
    const int64_t* sp = s.data_ptr<int64_t>();
    for (int64_t i = 0; i < s.numel(); ++i) {
      TORCH_CHECK(sp[i] >= 0 && sp[i] < K, "quantize_rows: static_idx out of range");
      amax[sp[i]] = 0.0f;  // in the float part anyway, with their float weight columns
      mask[sp[i]] = all_ones;
    }
  }
  // torch compares the float32 maxima with the threshold cast to float32; "not (max < t)" makes a
  // NaN column an outlier at any threshold, and threshold 0 keeps only the non-finite columns
  const float t = static_cast<float>(threshold);
  std::vector<int64_t> outliers;
  for (int64_t k = 0; k < K; ++k) {
    bool outlier = threshold > 0 ? !(amax[k] < t) : !std::isfinite(amax[k]);
    if (outlier) {
      outliers.push_back(k);
      mask[k] = all_ones;
    }
  }
  const bool masked = !outliers.empty() || (static_idx.has_value() && static_idx->numel() > 0);
  at::Tensor s_x = at::empty({M}, X.options().dtype(at::kFloat));
  at::Tensor zp = at::empty({zeropoint ? M : 0}, X.options().dtype(at::kFloat));
  dispatch_float(X.scalar_type(), "quantize_rows", [&](auto tag) {
    using T = decltype(tag);
    if (codes.scalar_type() == at::kFloat) {
      quantize_all_rows(X.data_ptr<T>(), M, K, mask.data(), masked, zeropoint, codes.data_ptr<float>(), s_x.data_ptr<float>(),
                        zp.data_ptr<float>());
    } else {
      quantize_all_rows(X.data_ptr<T>(), M, K, mask.data(), masked, zeropoint, codes.data_ptr<int8_t>(), s_x.data_ptr<float>(),
                        zp.data_ptr<float>());
    }
  });
  at::Tensor idx = at::empty({static_cast<int64_t>(outliers.size())}, X.options().dtype(at::kLong));
  if (!outliers.empty()) std::memcpy(idx.data_ptr<int64_t>(), outliers.data(), outliers.size() * sizeof(int64_t));
  return {s_x, zp, idx};
}

// ---- step 4: one pass from the GEMM's output to the layer's output -------------------------------

// A float product A B^T added to the output: the BLAS' (M, N) ``sum`` (the default: addmm_ adds
// exactly that), or, on the bf16 route of epilogue.py, formed here from ``a`` (M, j) and ``bt`` =
// B^T (j, N): products in float32 registers, summed by multiply-adds in column order (its own
// rounding, as accurate as the BLAS', not the same bits), with no (M, N) tensor in memory.
struct Product {
  const float* sum = nullptr;
  const float* a = nullptr;
  const float* bt = nullptr;
  int64_t j = 0;
};

struct Epilogue {
  const float* C;      // (M, N) float32(X_i8 W_safe^T) or float32(C_i32); null when Ci is given
  const int32_t* Ci;   // (M, N) C_i32 as the GEMM wrote it (torch._int_mm), converted here as .float() would
  const float* zp;     // (M,) or null
  const float* r;      // (N,) weight row sums, with zp
  const float* s_w;    // (N,)
  const float* s_x;    // (M,)
  Product p[2];        // the outlier product, the float-column product (either may be absent)
  const float* bias;   // (N,) or null
  int64_t N;
};

inline float product_scalar(const Product& p, int64_t N, int64_t m, int64_t n) {
  if (p.sum) return p.sum[m * N + n];
  const float* a = p.a + m * p.j;
  float s = a[0] * p.bt[n];
  for (int64_t o = 1; o < p.j; ++o) s = std::fma(a[o], p.bt[o * N + n], s);
  return s;
}

// today's sequence, element by element: C + fix (both integers, exact), - zp r (addr_: the exact
// value rounded once), * s_w, * s_x, + outlier product, + float-column product, + bias
inline float c_scalar(const Epilogue& e, int64_t i) { return e.Ci ? static_cast<float>(e.Ci[i]) : e.C[i]; }

inline float finish_scalar(const Epilogue& e, int64_t m, int64_t n, float fix) {
  float t = c_scalar(e, m * e.N + n) + fix;
  if (e.zp) t = std::fma(-e.zp[m], e.r[n], t);
  t = t * e.s_w[n];
  t = t * e.s_x[m];
  for (const Product& p : e.p)
    if (p.sum || p.a) t = t + product_scalar(p, e.N, m, n);
  if (e.bias) t = t + e.bias[n];
  return t;
}

#ifdef LLM_INT8_AVX2
inline __m256 product8(const Product& p, int64_t N, int64_t m, int64_t n) {
  if (p.sum) return _mm256_loadu_ps(p.sum + m * N + n);
  const float* a = p.a + m * p.j;
  __m256 s = _mm256_mul_ps(_mm256_set1_ps(a[0]), _mm256_loadu_ps(p.bt + n));
  for (int64_t o = 1; o < p.j; ++o) s = _mm256_fmadd_ps(_mm256_set1_ps(a[o]), _mm256_loadu_ps(p.bt + o * N + n), s);
  return s;
}

// int32 -> float32 rounds to nearest even, as the scalar conversion (and torch's .float()) does
inline __m256 c8(const Epilogue& e, int64_t i) {
  if (e.Ci) return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.Ci + i)));
  return _mm256_loadu_ps(e.C + i);
}

inline __m256 finish8(const Epilogue& e, int64_t m, int64_t n, __m256 fix) {
  __m256 t = _mm256_add_ps(c8(e, m * e.N + n), fix);
  if (e.zp) t = _mm256_fmadd_ps(_mm256_set1_ps(-e.zp[m]), _mm256_loadu_ps(e.r + n), t);
  t = _mm256_mul_ps(t, _mm256_loadu_ps(e.s_w + n));
  t = _mm256_mul_ps(t, _mm256_set1_ps(e.s_x[m]));
  for (const Product& p : e.p)
    if (p.sum || p.a) t = _mm256_add_ps(t, product8(p, e.N, m, n));
  if (e.bias) t = _mm256_add_ps(t, _mm256_loadu_ps(e.bias + n));
  return t;
}

#ifdef LLM_INT8_AVX512
inline __m512 c16(const Epilogue& e, int64_t i) {
  if (e.Ci) return _mm512_cvtepi32_ps(_mm512_loadu_si512(e.Ci + i));
  return _mm512_loadu_ps(e.C + i);
}

inline __m512 product16(const Product& p, int64_t N, int64_t m, int64_t n) {
  if (p.sum) return _mm512_loadu_ps(p.sum + m * N + n);
  const float* a = p.a + m * p.j;
  __m512 s = _mm512_mul_ps(_mm512_set1_ps(a[0]), _mm512_loadu_ps(p.bt + n));
  for (int64_t o = 1; o < p.j; ++o) s = _mm512_fmadd_ps(_mm512_set1_ps(a[o]), _mm512_loadu_ps(p.bt + o * N + n), s);
  return s;
}

inline __m512 finish16(const Epilogue& e, int64_t m, int64_t n) {
  __m512 t = _mm512_add_ps(c16(e, m * e.N + n), _mm512_setzero_ps());  // + a fix of 0, as finish8 adds it
  if (e.zp) t = _mm512_fmadd_ps(_mm512_set1_ps(-e.zp[m]), _mm512_loadu_ps(e.r + n), t);
  t = _mm512_mul_ps(t, _mm512_loadu_ps(e.s_w + n));
  t = _mm512_mul_ps(t, _mm512_set1_ps(e.s_x[m]));
  for (const Product& p : e.p)
    if (p.sum || p.a) t = _mm512_add_ps(t, product16(p, e.N, m, n));
  if (e.bias) t = _mm512_add_ps(t, _mm512_loadu_ps(e.bias + n));
  return t;
}
#endif

inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

template <typename O>
void finish_rows(const Epilogue& e, int64_t m0, int64_t m1, O* out) {
  for (int64_t m = m0; m < m1; ++m) {
    int64_t n = 0;
#ifdef LLM_INT8_AVX512
    for (; n + 16 <= e.N; n += 16) store16(finish16(e, m, n), out + m * e.N + n);
#endif
#ifdef LLM_INT8_AVX2
    for (; n + 8 <= e.N; n += 8) store8(finish8(e, m, n, _mm256_setzero_ps()), out + m * e.N + n);
#endif
    for (; n < e.N; ++n) store_scalar(finish_scalar(e, m, n, 0.0f), out + m * e.N + n);
  }
}

struct SparseFix {  // W_fix (N, K) in CSR, float32 values (exact integers), and the codes A (M, K) float32
  const int64_t* crow;
  const int64_t* col;
  const float* val;
  const float* A;
  int64_t K;
  // set when a value of C reaches 2**24: C may then be rounded, and C + fix not the exact product
  // (only checked for weights whose products can get there; the caller recomputes the call exactly)
  std::atomic<int>* inexact;
};

constexpr float kExactLimit = 16777216.0f;  // 2**24: float32 holds every integer below it

inline bool row_reaches_limit(const float* c, int64_t n0, int64_t n1) {
  int64_t n = n0;
#ifdef LLM_INT8_AVX2
  const __m256 sign = _mm256_set1_ps(-0.0f), limit = _mm256_set1_ps(kExactLimit);
  __m256 any = _mm256_setzero_ps();
  for (; n + 8 <= n1; n += 8) any = _mm256_or_ps(any, _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(c + n)), limit, _CMP_GE_OQ));
  if (_mm256_movemask_ps(any)) return true;
#endif
  for (; n < n1; ++n)
    if (std::fabs(c[n]) >= kExactLimit) return true;
  return false;
}

// The codes of rows [m0, m0 + rows) transposed to At (K, R): row k holds A[m0.., k], zero-padded to R.
void transpose_codes(const SparseFix& f, int64_t m0, int rows, int R, std::vector<float>& At) {
  if (rows < R) {
    At.assign(static_cast<size_t>(f.K) * R, 0.0f);  // the lanes past the last row must hold 0
  } else {
    At.resize(static_cast<size_t>(f.K) * R);  // every element written below
  }
  int i = 0;
#ifdef LLM_INT8_AVX2
  for (; i + 8 <= rows; i += 8) {  // 8 x 8 tiles: 8 rows' codes k..k+7 in, 8 k's rows out
    const float* a = f.A + (m0 + i) * f.K;
    int64_t k = 0;
    for (; k + 8 <= f.K; k += 8) {
      __m256 tile[8];
      for (int r = 0; r < 8; ++r) tile[r] = _mm256_loadu_ps(a + r * f.K + k);
      transpose8(tile);
      for (int c = 0; c < 8; ++c) _mm256_storeu_ps(At.data() + (k + c) * R + i, tile[c]);
    }
    for (; k < f.K; ++k)
      for (int r = 0; r < 8; ++r) At[k * R + i + r] = a[r * f.K + k];
  }
#endif
  for (; i < rows; ++i) {
    const float* a = f.A + (m0 + i) * f.K;
    for (int64_t k = 0; k < f.K; ++k) At[k * R + i] = a[k];
  }
}

// fix[m][n] = sum_k W_fix[n, k] A[m, k]: integers below 2**24 (the weight is ``always_exact``), so
// exact in float32 in any order.
inline float fix_scalar(const SparseFix& f, const float* At, int R, int i, int64_t n) {
  float s = 0.0f;
  for (int64_t p = f.crow[n]; p < f.crow[n + 1]; ++p) s = s + f.val[p] * At[f.col[p] * R + i];
  return s;
}

#ifdef LLM_INT8_AVX2
// Output columns per chunk: as wide as the chunk's sums (rows x columns floats) allow within about
// 192 KiB, so that each row of C and of the output is read and written in long runs (runs of 1 KiB
// over 64 rows at once defeated the prefetcher: the finishing pass took 3x as long as without fix).
int64_t fix_columns(int rows, int64_t N) {
  const int64_t budget = (192 * 1024 / 4) / rows;
  return std::max<int64_t>(8, std::min(N, budget / 8 * 8));
}

// The sums of W_fix over rows [m0, m0 + 8V) for columns [n0, n0 + cols), written row-major to F
// (F[i * stride + n - n0]). Each nonzero of W_fix is V multiply-adds with the transposed
// codes (V independent chains hide the instruction's latency; a column's nonzeros are read once
// per 8V rows); 8 columns at a time are transposed back to rows in 8 x 8 tiles.
template <int V>
void fix_sums(const SparseFix& f, const float* At, int64_t n0, int64_t cols, int rows, int64_t stride, float* F) {
  constexpr int R = 8 * V;
  alignas(32) float sums[8][R];  // sums[j][i]: fix[m0 + i][n + j]
  for (int64_t n = n0; n < n0 + cols; n += 8) {
    const int width = static_cast<int>(std::min<int64_t>(8, n0 + cols - n));
    for (int j = 0; j < width; ++j) {
      __m256 acc[V];
      for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
      for (int64_t p = f.crow[n + j]; p < f.crow[n + j + 1]; ++p) {
        const __m256 w = _mm256_set1_ps(f.val[p]);
        const float* a = At + f.col[p] * R;
        for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(a + 8 * v), acc[v]);
      }
      for (int v = 0; v < V; ++v) _mm256_store_ps(&sums[j][8 * v], acc[v]);
    }
    float* dst = F + (n - n0);
    if (width < 8) {
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < width; ++j) dst[i * stride + j] = sums[j][i];
      continue;
    }
    for (int g = 0; g * 8 < rows; ++g) {
      __m256 tile[8];
      for (int j = 0; j < 8; ++j) tile[j] = _mm256_load_ps(&sums[j][8 * g]);
      transpose8(tile);  // tile[i] lane j: fix[m0 + 8g + i][n + j]
      for (int i = 0; i < 8 && 8 * g + i < rows; ++i) _mm256_storeu_ps(dst + (8 * g + i) * stride, tile[i]);
    }
  }
}

// Rows [m0, m0 + rows), rows <= 8V: the fix per chunk of columns, then each row finished along the
// chunk (C, the products and the output are read and written row by row, as the prefetcher likes).
template <int V, typename O>
void finish_block_with_fix(const Epilogue& e, const SparseFix& f, int64_t m0, int rows, O* out, std::vector<float>& At,
                           std::vector<float>& F) {
  transpose_codes(f, m0, rows, 8 * V, At);
  const int64_t chunk = fix_columns(8 * V, e.N);
  F.resize(static_cast<size_t>(8 * V) * chunk);
  for (int64_t n0 = 0; n0 < e.N; n0 += chunk) {
    const int64_t cols = std::min(chunk, e.N - n0);
    fix_sums<V>(f, At.data(), n0, cols, rows, chunk, F.data());
    for (int i = 0; i < rows; ++i) {
      const int64_t m = m0 + i;
      if (f.inexact && row_reaches_limit(e.C + m * e.N, n0, n0 + cols)) f.inexact->store(1, std::memory_order_relaxed);
      const float* fix = F.data() + i * chunk - n0;
      int64_t n = n0;
      for (; n + 8 <= n0 + cols; n += 8) store8(finish8(e, m, n, _mm256_loadu_ps(fix + n)), out + m * e.N + n);
      for (; n < n0 + cols; ++n) store_scalar(finish_scalar(e, m, n, fix[n]), out + m * e.N + n);
    }
  }
}
#endif

template <typename O>
void finish_block_with_fix_scalar(const Epilogue& e, const SparseFix& f, int64_t m0, int rows, O* out, std::vector<float>& At) {
  constexpr int R = 8;
  transpose_codes(f, m0, rows, R, At);
  for (int i = 0; i < rows; ++i) {
    if (f.inexact && row_reaches_limit(e.C + (m0 + i) * e.N, 0, e.N)) f.inexact->store(1, std::memory_order_relaxed);
    for (int64_t n = 0; n < e.N; ++n)
      store_scalar(finish_scalar(e, m0 + i, n, fix_scalar(f, At.data(), R, i, n)), out + (m0 + i) * e.N + n);
  }
}

// Rows per block: up to 64, fewer where M is small (no padded work) or K is large (the transposed
// codes, K x rows floats, stay within about 256 KiB, the L2 share of a core on the machines measured).
int vectors_per_block(int64_t M, int64_t K) {
  int V = 8;
  while (V > 1 && (8 * (V / 2) >= M || K * 8 * V * 4 > 256 * 1024)) V /= 2;
  return V;
}

template <typename O>
void finish_all_with_fix(const Epilogue& e, const SparseFix& f, int64_t M, O* out) {
#ifdef LLM_INT8_AVX2
  const int V = vectors_per_block(M, f.K);
  const int64_t R = 8 * V;
  at::parallel_for(0, (M + R - 1) / R, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> At, F;
    for (int64_t b = b0; b < b1; ++b) {
      const int rows = static_cast<int>(std::min<int64_t>(R, M - b * R));
      switch (V) {
        case 8: finish_block_with_fix<8>(e, f, b * R, rows, out, At, F); break;
        case 4: finish_block_with_fix<4>(e, f, b * R, rows, out, At, F); break;
        case 2: finish_block_with_fix<2>(e, f, b * R, rows, out, At, F); break;
        default: finish_block_with_fix<1>(e, f, b * R, rows, out, At, F); break;
      }
    }
  });
#else
  at::parallel_for(0, (M + 7) / 8, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> At;
    for (int64_t b = b0; b < b1; ++b)
      finish_block_with_fix_scalar(e, f, b * 8, static_cast<int>(std::min<int64_t>(8, M - b * 8)), out, At);
  });
#endif
}

const float* optional_ptr(const c10::optional<at::Tensor>& t, int64_t numel, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == numel,
              "epilogue: ", name, " must be a contiguous float32 tensor of ", numel, " elements");
  return t->data_ptr<float>();
}

// ``products``: per product its (M, N) sum, or with ``factors`` its A (M, j) and B^T (j, N) in turn.
Product product_at(at::TensorList products, bool factors, size_t i, int64_t M, int64_t N) {
  Product p;
  if (!factors) {
    if (i < products.size()) p.sum = optional_ptr(products[i], M * N, "a product");
    return p;
  }
  if (2 * i + 1 >= products.size()) return p;
  const at::Tensor& a = products[2 * i];
  const at::Tensor& bt = products[2 * i + 1];
  TORCH_CHECK(a.dim() == 2 && bt.dim() == 2 && a.size(0) == M && bt.size(1) == N && a.size(1) == bt.size(0) &&
                  a.size(1) > 0,
              "epilogue: a product's factors must be A (M, j) and B^T (j, N), j >= 1");
  p.j = a.size(1);
  p.a = optional_ptr(a, M * p.j, "A");
  p.bt = optional_ptr(bt, p.j * N, "B^T");
  return p;
}

at::Tensor epilogue(const at::Tensor& C, const at::Tensor& s_w, const at::Tensor& s_x,
                    const c10::optional<at::Tensor>& zp, const c10::optional<at::Tensor>& row_sums,
                    const c10::optional<at::Tensor>& codes, const c10::optional<at::Tensor>& fix_crow,
                    const c10::optional<at::Tensor>& fix_col, const c10::optional<at::Tensor>& fix_val,
                    at::TensorList products, bool factors, const c10::optional<at::Tensor>& bias,
                    at::ScalarType out_dtype, const c10::optional<at::Tensor>& inexact) {
  const int64_t M = s_x.numel(), N = s_w.numel();
  const bool c_int32 = C.scalar_type() == at::kInt;
  TORCH_CHECK(C.dim() == 2 && (C.scalar_type() == at::kFloat || c_int32) && C.is_contiguous() && C.size(0) >= M &&
                  C.size(1) == N,
              "epilogue: C must be a contiguous float32 or int32 (>= M, N) tensor");
  TORCH_CHECK(products.size() <= (factors ? 4u : 2u), "epilogue: at most two products (outliers, float columns)");
  Epilogue e{c_int32 ? nullptr : C.data_ptr<float>(), c_int32 ? C.data_ptr<int32_t>() : nullptr, optional_ptr(zp, M, "zp"), optional_ptr(row_sums, N, "row_sums"),
             optional_ptr(s_w, N, "s_w"), optional_ptr(s_x, M, "s_x"),
             {product_at(products, factors, 0, M, N), product_at(products, factors, 1, M, N)},
             optional_ptr(bias, N, "bias"), N};
  TORCH_CHECK((e.zp == nullptr) == (e.r == nullptr), "epilogue: zp and row_sums come together");
  const bool with_fix = fix_crow.has_value();
  std::atomic<int> reached{0};
  SparseFix f{nullptr, nullptr, nullptr, nullptr, 0, nullptr};
  if (with_fix) {
    TORCH_CHECK(!c_int32, "epilogue: the fix adds to fbgemm's float32 output, not to int32");
    TORCH_CHECK(codes.has_value() && fix_col.has_value() && fix_val.has_value(), "epilogue: the fix needs its CSR and the codes");
    TORCH_CHECK(codes->scalar_type() == at::kFloat && codes->is_contiguous() && codes->dim() == 2 && codes->size(0) >= M,
                "epilogue: codes must be contiguous float32 (>= M, K)");
    TORCH_CHECK(fix_crow->scalar_type() == at::kLong && fix_col->scalar_type() == at::kLong &&
                    fix_val->scalar_type() == at::kFloat && fix_crow->numel() == N + 1 && fix_crow->is_contiguous() &&
                    fix_col->is_contiguous() && fix_val->is_contiguous() && fix_col->numel() == fix_val->numel(),
                "epilogue: the fix must be an (N, K) CSR matrix with int64 indices and float32 values");
    f = SparseFix{fix_crow->data_ptr<int64_t>(), fix_col->data_ptr<int64_t>(), fix_val->data_ptr<float>(),
                  codes->data_ptr<float>(), codes->size(1), inexact.has_value() ? &reached : nullptr};
  }
  at::Tensor out = at::empty({M, N}, C.options().dtype(out_dtype));
  dispatch_float(out_dtype, "epilogue", [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data_ptr<T>();
    if (with_fix) {
      finish_all_with_fix(e, f, M, o);
    } else {
      at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) { finish_rows(e, m0, m1, o); });
    }
  });
  if (inexact.has_value()) {
    TORCH_CHECK(inexact->scalar_type() == at::kInt && inexact->numel() == 1, "epilogue: inexact must be one int32");
    if (reached.load()) inexact->fill_(1);
  }
  return out;
}

// The weight-only kernel's epilogue: out = cast(float(C) * s_w + bias), C (M, N) in any float dtype,
// as C.float().mul_(s_w).add_(bias).to(out_dtype) computes it, without the float32 copies.
template <typename I, typename O>
void scale_bias_cast_rows(const I* C, const float* s_w, const float* bias, int64_t m0, int64_t m1, int64_t N, O* out) {
  for (int64_t m = m0; m < m1; ++m) {
    int64_t n = 0;
#ifdef LLM_INT8_AVX2
    for (; n + 8 <= N; n += 8) {
      __m256 t = _mm256_mul_ps(load8(C + m * N + n), _mm256_loadu_ps(s_w + n));
      if (bias) t = _mm256_add_ps(t, _mm256_loadu_ps(bias + n));
      store8(t, out + m * N + n);
    }
#endif
    for (; n < N; ++n) {
      float t = to_f32(C[m * N + n]) * s_w[n];
      if (bias) t = t + bias[n];
      store_scalar(t, out + m * N + n);
    }
  }
}

at::Tensor scale_bias_cast(const at::Tensor& C, const at::Tensor& s_w, const c10::optional<at::Tensor>& bias,
                           at::ScalarType out_dtype) {
  TORCH_CHECK(C.dim() == 2 && C.is_contiguous(), "scale_bias_cast: C must be a contiguous 2-D tensor");
  const int64_t M = C.size(0), N = C.size(1);
  const float* w = optional_ptr(s_w, N, "s_w");
  const float* b = optional_ptr(bias, N, "bias");
  at::Tensor out = at::empty({M, N}, C.options().dtype(out_dtype));
  dispatch_float(C.scalar_type(), "scale_bias_cast", [&](auto in_tag) {
    using I = decltype(in_tag);
    dispatch_float(out_dtype, "scale_bias_cast", [&](auto out_tag) {
      using O = decltype(out_tag);
      at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
        scale_bias_cast_rows(C.data_ptr<I>(), w, b, m0, m1, N, out.data_ptr<O>());
      });
    });
  });
  return out;
}

}  // namespace

// ==== the batch-invariant mode (ops/forward_invariant.py): per-token outliers ======================
//
//   quantize_rows_tokenwise  steps 1-2 with each token's own outliers: the entries of a row with
//                            |x| >= threshold (non-finite ones always) and the static float columns
//                            are left out of its range and get the code of 0; their positions come
//                            back as a CSR list (static columns not included)
//   tokenwise_float_sum      the float product of those entries, row by row: -0, then + x_k * w_k for
//                            the row's entries in increasing k, then + x_s * w_s for the static
//                            columns in their order, each product and each sum rounded as written
//
// Nothing in a row depends on another row, on M or on how rows are split between threads. Each
// equals the PyTorch sequence of kernels/quantize_tokenwise.py bit for bit (its reference).

namespace {

inline float all_ones_float() {
  float f;
  const uint32_t ones = 0xffffffffu;
  std::memcpy(&f, &ones, sizeof(float));
  return f;
}

// The row's float mask (all bits set where the entry is computed in float) and its outlier entries.
// Outlier: "not (|x| < t)", so NaN and +-Inf always are; t = +Inf (threshold 0) keeps only those.
template <typename T>
void row_float_mask(const T* x, int64_t K, float t, const float* static_mask, float* mask, std::vector<int64_t>& entries) {
  int64_t k = 0;
#ifdef LLM_INT8_AVX2
  const __m256 sign = _mm256_set1_ps(-0.0f), tv = _mm256_set1_ps(t);
  for (; k + 8 <= K; k += 8) {
    const __m256 st = _mm256_loadu_ps(static_mask + k);
    const __m256 out = _mm256_andnot_ps(st, _mm256_cmp_ps(_mm256_andnot_ps(sign, load8(x + k)), tv, _CMP_NLT_UQ));
    _mm256_storeu_ps(mask + k, _mm256_or_ps(out, st));
    for (int bits = _mm256_movemask_ps(out); bits; bits &= bits - 1) entries.push_back(k + __builtin_ctz(bits));
  }
#endif
  const float ones = all_ones_float();
  for (; k < K; ++k) {
    const bool is_static = static_mask[k] != 0.0f;
    const bool outlier = !is_static && !(std::fabs(to_f32(x[k])) < t);
    mask[k] = (outlier || is_static) ? ones : 0.0f;
    if (outlier) entries.push_back(k);
  }
}

// The codes of one row for a range given by the caller (statistics reduced across ranks).
template <typename T, typename C>
void quantize_row_given_range(const T* x, int64_t K, const float* mask, bool zeropoint, float hi, float lo, C* out,
                              float* s_x, float* zp) {
  const RowParams p = row_params(hi, lo, zeropoint, s_x, zp);
  for (int64_t k = 0; k < K; ++k) {
    const float v = mask[k] != 0.0f ? 0.0f : to_f32(x[k]);
    store_scalar(code_scalar(v, p), out + k);
  }
}

template <typename T, typename C>
void quantize_rows_tokenwise_typed(const T* X, int64_t M, int64_t K, float t, const float* static_mask, bool zeropoint,
                                   const float* hi, const float* lo, C* out, float* s_x, float* zp,
                                   std::vector<std::vector<int64_t>>& entries) {
  at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
    std::vector<float> mask(K);
    float unused = 0.0f;
    for (int64_t m = m0; m < m1; ++m) {
      row_float_mask(X + m * K, K, t, static_mask, mask.data(), entries[m]);
      float* zpm = zeropoint ? zp + m : &unused;
      if (hi) {
        quantize_row_given_range(X + m * K, K, mask.data(), zeropoint, hi[m], lo[m], out + m * K, s_x + m, zpm);
      } else {
        quantize_row<true>(X + m * K, K, mask.data(), zeropoint, out + m * K, s_x + m, zpm);
      }
    }
  });
}

// Returns (s_x (M,), zp (M,) or (0,), crow (M + 1,), cols): row m's outlier entries are
// cols[crow[m]:crow[m + 1]], increasing. ``codes``: (>= M, K) float32 or int8, its first M rows written.
// ``hi`` / ``lo``: optional (M,) ranges to quantize with instead of each row's own.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_rows_tokenwise(
    const at::Tensor& X, double threshold, const c10::optional<at::Tensor>& static_idx, bool zeropoint, at::Tensor codes,
    const c10::optional<at::Tensor>& hi, const c10::optional<at::Tensor>& lo) {
  TORCH_CHECK(X.dim() == 2 && X.is_contiguous() && X.device().is_cpu(),
              "quantize_rows_tokenwise: X must be a contiguous 2-D CPU tensor");
  const int64_t M = X.size(0), K = X.size(1);
  TORCH_CHECK(codes.dim() == 2 && codes.size(0) >= M && codes.size(1) == K && codes.is_contiguous() &&
                  (codes.scalar_type() == at::kFloat || codes.scalar_type() == at::kChar),
              "quantize_rows_tokenwise: codes must be a contiguous float32 or int8 (>= M, K) tensor");
  TORCH_CHECK(hi.has_value() == lo.has_value(), "quantize_rows_tokenwise: hi and lo come together");
  std::vector<float> static_mask(K, 0.0f);
  if (static_idx.has_value()) {
    const at::Tensor s = static_idx->contiguous();
    TORCH_CHECK(s.scalar_type() == at::kLong, "quantize_rows_tokenwise: static_idx must be int64");
    const int64_t* sp = s.data_ptr<int64_t>();
    for (int64_t i = 0; i < s.numel(); ++i) {
      TORCH_CHECK(sp[i] >= 0 && sp[i] < K, "quantize_rows_tokenwise: static_idx out of range");
      static_mask[sp[i]] = all_ones_float();
    }
  }
  const float* hp = optional_ptr(hi, M, "hi");
  const float* lp = optional_ptr(lo, M, "lo");
  // torch compares float32 values with the threshold cast to float32 (quantize_tokenwise.py does the same)
  const float t = threshold > 0 ? static_cast<float>(threshold) : std::numeric_limits<float>::infinity();
  at::Tensor s_x = at::empty({M}, X.options().dtype(at::kFloat));
  at::Tensor zp = at::empty({zeropoint ? M : 0}, X.options().dtype(at::kFloat));
  std::vector<std::vector<int64_t>> entries(M);
  dispatch_float(X.scalar_type(), "quantize_rows_tokenwise", [&](auto tag) {
    using T = decltype(tag);
    if (codes.scalar_type() == at::kFloat) {
      quantize_rows_tokenwise_typed(X.data_ptr<T>(), M, K, t, static_mask.data(), zeropoint, hp, lp,
                                    codes.data_ptr<float>(), s_x.data_ptr<float>(), zp.data_ptr<float>(), entries);
    } else {
      quantize_rows_tokenwise_typed(X.data_ptr<T>(), M, K, t, static_mask.data(), zeropoint, hp, lp,
                                    codes.data_ptr<int8_t>(), s_x.data_ptr<float>(), zp.data_ptr<float>(), entries);
    }
  });
  at::Tensor crow = at::empty({M + 1}, X.options().dtype(at::kLong));
  int64_t* cp = crow.data_ptr<int64_t>();
  cp[0] = 0;
  for (int64_t m = 0; m < M; ++m) cp[m + 1] = cp[m] + static_cast<int64_t>(entries[m].size());
  at::Tensor cols = at::empty({cp[M]}, X.options().dtype(at::kLong));
  int64_t* colp = cols.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m) std::copy(entries[m].begin(), entries[m].end(), colp + cp[m]);
  return {s_x, zp, crow, cols};
}

// acc[n] = acc[n] + x * w[n], the product rounded, then the sum (no fused multiply-add)
inline void axpy_rounded(float x, const float* w, int64_t N, float* acc) {
  int64_t n = 0;
#ifdef LLM_INT8_AVX2
  const __m256 xv = _mm256_set1_ps(x);
  for (; n + 8 <= N; n += 8)
    _mm256_storeu_ps(acc + n, _mm256_add_ps(_mm256_loadu_ps(acc + n), _mm256_mul_ps(xv, _mm256_loadu_ps(w + n))));
#endif
  for (; n < N; ++n) {
    const float p = x * w[n];
    acc[n] = acc[n] + p;
  }
}

// The sparse entries of the batch-invariant route, checked once for both of its ops: row m's entries
// are cols[crow[m]:crow[m + 1]], each a column of U (``pos``: its index there), then the static columns S.
struct TokenEntries {
  const int64_t* cp;
  const int64_t* colp;
  std::vector<int64_t> pos;
  int64_t n_static;
  const int64_t* sp;
  const float* wst;
};

TokenEntries check_entries(const char* who, int64_t M, int64_t K, int64_t N, const at::Tensor& crow,
                           const at::Tensor& cols, const at::Tensor& U, const c10::optional<at::Tensor>& S,
                           const c10::optional<at::Tensor>& WST) {
  TORCH_CHECK(S.has_value() == WST.has_value(), who, ": S and WST come together");
  TokenEntries t{nullptr, nullptr, std::vector<int64_t>(K, -1), S.has_value() ? S->numel() : 0, nullptr, nullptr};
  t.sp = t.n_static ? S->data_ptr<int64_t>() : nullptr;
  t.wst = t.n_static ? optional_ptr(WST, t.n_static * N, "WST") : nullptr;
  const int64_t* up = U.data_ptr<int64_t>();
  for (int64_t j = 0; j < U.numel(); ++j) {
    TORCH_CHECK(up[j] >= 0 && up[j] < K, who, ": U out of range");
    t.pos[up[j]] = j;
  }
  for (int64_t s = 0; s < t.n_static; ++s) TORCH_CHECK(t.sp[s] >= 0 && t.sp[s] < K, who, ": S out of range");
  t.cp = crow.data_ptr<int64_t>();
  t.colp = cols.data_ptr<int64_t>();
  TORCH_CHECK(t.cp[0] == 0 && t.cp[M] == cols.numel(), who, ": crow must index cols");
  for (int64_t i = 0; i < cols.numel(); ++i)
    TORCH_CHECK(t.colp[i] >= 0 && t.colp[i] < K && t.pos[t.colp[i]] >= 0, who, ": an entry's column is not in U");
  return t;
}

// (M, N) float32: row m holds -0 + sum over its entries k (increasing) of X[m, k] * WUT[pos(k)], then
// + X[m, S[s]] * WST[s] for each static column s. ``U`` (|U|,): the sorted columns that hold any
// entry, with ``WUT`` (|U|, N) their dequantized weight columns (W_i8[:, U] * s_w, transposed).
at::Tensor tokenwise_float_sum(const at::Tensor& X, const at::Tensor& crow, const at::Tensor& cols, const at::Tensor& U,
                               const at::Tensor& WUT, const c10::optional<at::Tensor>& S,
                               const c10::optional<at::Tensor>& WST) {
  TORCH_CHECK(X.dim() == 2 && X.is_contiguous(), "tokenwise_float_sum: X must be a contiguous 2-D tensor");
  const int64_t M = X.size(0), K = X.size(1), N = WUT.size(1);
  TORCH_CHECK(crow.scalar_type() == at::kLong && crow.numel() == M + 1 && cols.scalar_type() == at::kLong &&
                  U.scalar_type() == at::kLong && crow.is_contiguous() && cols.is_contiguous() && U.is_contiguous(),
              "tokenwise_float_sum: crow (M + 1,), cols and U must be contiguous int64");
  TORCH_CHECK(WUT.dim() == 2 && WUT.size(0) == U.numel() && WUT.scalar_type() == at::kFloat && WUT.is_contiguous(),
              "tokenwise_float_sum: WUT must be a contiguous float32 (|U|, N) tensor");
  const TokenEntries t = check_entries("tokenwise_float_sum", M, K, N, crow, cols, U, S, WST);
  const int64_t n_static = t.n_static;
  const int64_t *sp = t.sp, *cp = t.cp, *colp = t.colp;
  const float* wst = t.wst;
  const std::vector<int64_t>& pos = t.pos;
  const float* w = WUT.data_ptr<float>();
  // -0: the identity of float addition (x + -0 is x for every x, +0 included), so a row without
  // entries adds exactly nothing, and one with entries starts from its first product, exactly
  at::Tensor out = at::full({M, N}, -0.0, X.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  dispatch_float(X.scalar_type(), "tokenwise_float_sum", [&](auto tag) {
    using T = decltype(tag);
    const T* x = X.data_ptr<T>();
    at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        for (int64_t i = cp[m]; i < cp[m + 1]; ++i) axpy_rounded(to_f32(x[m * K + colp[i]]), w + pos[colp[i]] * N, N, o + m * N);
        for (int64_t s = 0; s < n_static; ++s) axpy_rounded(to_f32(x[m * K + sp[s]]), wst + s * N, N, o + m * N);
      }
    });
  });
  return out;
}

// The epilogue pass with each row's float part formed in a row buffer, never as an (M, N) tensor:
// row m = cast(((C - zp r) s_w s_x + F_m) + bias), F_m as tokenwise_float_sum forms it, each element by
// the epilogue's own finish8 / finish_scalar (so the bits of epilogue(..., [F]) exactly). For the GEMMs
// whose output needs no sparse fix (every kernel but FBGEMM_PAIRS' fused route).
at::Tensor epilogue_tokenwise(const at::Tensor& C, const at::Tensor& s_w, const at::Tensor& s_x,
                              const c10::optional<at::Tensor>& zp, const c10::optional<at::Tensor>& row_sums,
                              const at::Tensor& X, const at::Tensor& crow, const at::Tensor& cols, const at::Tensor& U,
                              const at::Tensor& WUT, const c10::optional<at::Tensor>& S,
                              const c10::optional<at::Tensor>& WST, const c10::optional<at::Tensor>& bias,
                              at::ScalarType out_dtype) {
  const int64_t M = s_x.numel(), N = s_w.numel(), K = X.size(1);
  TORCH_CHECK(C.dim() == 2 && C.scalar_type() == at::kFloat && C.is_contiguous() && C.size(0) >= M && C.size(1) == N,
              "epilogue_tokenwise: C must be a contiguous float32 (>= M, N) tensor");
  TORCH_CHECK(X.dim() == 2 && X.is_contiguous() && X.size(0) == M, "epilogue_tokenwise: X must be a contiguous (M, K) tensor");
  TORCH_CHECK(crow.scalar_type() == at::kLong && crow.numel() == M + 1 && cols.scalar_type() == at::kLong &&
                  U.scalar_type() == at::kLong && crow.is_contiguous() && cols.is_contiguous() && U.is_contiguous(),
              "epilogue_tokenwise: crow (M + 1,), cols and U must be contiguous int64");
  TORCH_CHECK(WUT.dim() == 2 && WUT.size(0) == U.numel() && WUT.size(1) == N && WUT.scalar_type() == at::kFloat &&
                  WUT.is_contiguous(),
              "epilogue_tokenwise: WUT must be a contiguous float32 (|U|, N) tensor");
  const float* zpp = optional_ptr(zp, M, "zp");
  const float* r = optional_ptr(row_sums, N, "row_sums");
  TORCH_CHECK((zpp == nullptr) == (r == nullptr), "epilogue_tokenwise: zp and row_sums come together");
  const TokenEntries t = check_entries("epilogue_tokenwise", M, K, N, crow, cols, U, S, WST);
  const int64_t n_static = t.n_static;
  const int64_t *sp = t.sp, *cp = t.cp, *colp = t.colp;
  const float* wst = t.wst;
  const std::vector<int64_t>& pos = t.pos;
  const float* w = WUT.data_ptr<float>();
  const float* sw = optional_ptr(s_w, N, "s_w");
  const float* sx = optional_ptr(s_x, M, "s_x");
  const float* b = optional_ptr(bias, N, "bias");
  at::Tensor out = at::empty({M, N}, C.options().dtype(out_dtype));
  dispatch_float(X.scalar_type(), "epilogue_tokenwise", [&](auto x_tag) {
    using T = decltype(x_tag);
    const T* x = X.data_ptr<T>();
    dispatch_float(out_dtype, "epilogue_tokenwise", [&](auto out_tag) {
      using O = decltype(out_tag);
      O* o = out.data_ptr<O>();
      at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
        std::vector<float> buf(N);
        for (int64_t m = m0; m < m1; ++m) {
          // row m as a one-row epilogue: its pointers offset to the row, the row's F as its one product
          Epilogue e{C.data_ptr<float>() + m * N, nullptr, zpp ? zpp + m : nullptr, r, sw, sx + m, {Product{}, Product{}}, b, N};
          if (cp[m + 1] > cp[m] || n_static) {
            std::fill(buf.begin(), buf.end(), -0.0f);
            for (int64_t i = cp[m]; i < cp[m + 1]; ++i) axpy_rounded(to_f32(x[m * K + colp[i]]), w + pos[colp[i]] * N, N, buf.data());
            for (int64_t s = 0; s < n_static; ++s) axpy_rounded(to_f32(x[m * K + sp[s]]), wst + s * N, N, buf.data());
            e.p[0].sum = buf.data();
          }
          finish_rows(e, 0, 1, o + m * N);
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_int8_cpu, m) {
  m.def("quantize_rows_tokenwise(Tensor X, float threshold, Tensor? static_idx, bool zeropoint, Tensor(a!) codes, "
        "Tensor? hi=None, Tensor? lo=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("tokenwise_float_sum(Tensor X, Tensor crow, Tensor cols, Tensor U, Tensor WUT, Tensor? S=None, "
        "Tensor? WST=None) -> Tensor");
  m.impl("quantize_rows_tokenwise", c10::DispatchKey::CPU, TORCH_FN(quantize_rows_tokenwise));
  m.def("epilogue_tokenwise(Tensor C, Tensor s_w, Tensor s_x, Tensor? zp, Tensor? row_sums, Tensor X, Tensor crow, "
        "Tensor cols, Tensor U, Tensor WUT, Tensor? S, Tensor? WST, Tensor? bias, ScalarType out_dtype) -> Tensor");
  m.impl("tokenwise_float_sum", c10::DispatchKey::CPU, TORCH_FN(tokenwise_float_sum));
  m.impl("epilogue_tokenwise", c10::DispatchKey::CPU, TORCH_FN(epilogue_tokenwise));
}

TORCH_LIBRARY(llm_int8_cpu, m) {
  m.def("quantize_rows(Tensor X, float threshold, Tensor? static_idx, bool zeropoint, Tensor(a!) codes) -> (Tensor, Tensor, Tensor)");
  m.def("epilogue(Tensor C, Tensor s_w, Tensor s_x, Tensor? zp, Tensor? row_sums, Tensor? codes, Tensor? fix_crow, "
        "Tensor? fix_col, Tensor? fix_val, Tensor[] products, bool factors, Tensor? bias, ScalarType out_dtype, "
        "Tensor(a!)? inexact=None) -> Tensor");
  m.def("scale_bias_cast(Tensor C, Tensor s_w, Tensor? bias, ScalarType out_dtype) -> Tensor");
  m.impl("quantize_rows", c10::DispatchKey::CPU, TORCH_FN(quantize_rows));
  m.impl("epilogue", c10::DispatchKey::CPU, TORCH_FN(epilogue));
  m.impl("scale_bias_cast", c10::DispatchKey::CPU, TORCH_FN(scale_bias_cast));
}
