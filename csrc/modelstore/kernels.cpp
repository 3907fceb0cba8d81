// kernels.cpp -- see kernels.hpp for the semantics and the (fixed) accumulation order.
//
// One templated loop per dtype (traits from dtype.hpp). Each block of kBlock elements first
// runs a branch-free vector loop over 4 double lanes (GCC vector extensions; no NaN/Inf test
// inside). NaN/Inf inputs show up as a non-finite sum of squares, and only then is the block
// redone by a scalar loop that tests every element (by its bits) and feeds exactly the same
// lanes in the same order, so the result never depends on which path a block took.
// Tails (< 4 elements) always take the scalar loop. Counts are exact integers; max_abs and
// min/max are exact; the float sums follow the order documented in kernels.hpp.
#include "modelstore/kernels.hpp"

// Vector types only travel between always-inline functions, never across an ABI boundary.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// No fused multiply-add: GCC contracts a*b+c into an FMA by default (also in C++17 mode)
// whenever the target has FMA (aarch64, or the AVX-512 functions below), which would make
// the results depend on the CPU. Every product is rounded, then added, on every target.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

// On x86-64 with GCC/Clang the hot loops are compiled twice: for the baseline ISA (SSE2,
// 2 doubles per vector) and for AVX2 (4 doubles per vector; a function target attribute,
// no FMA), chosen at run time from CPUID; the build itself stays portable (no
// -march=native). Both use the same lanes in the same order: bit-identical results.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(MODELSTORE_NO_VECTOR_EXT) && \
    !defined(MODELSTORE_NO_AVX2)
#define MS_X86_DISPATCH 1
#include <atomic>
#else
#define MS_X86_DISPATCH 0
#endif

namespace modelstore {
namespace kernels {

// ----------------------------------------------------------------------------- partials

void StatsPartial::merge(const StatsPartial& o) {
    n += o.n;
    n_nan += o.n_nan;
    n_inf += o.n_inf;
    sum.add(o.sum);
    sumsq.add(o.sumsq);
    min = o.min < min ? o.min : min;
    max = o.max > max ? o.max : max;
}

Stats StatsPartial::finish() const {
    Stats s;
    s.n = n;
    s.n_nan = n_nan;
    s.n_inf = n_inf;
    s.sum = sum.value();
    s.sumsq = sumsq.value();
    const bool any_finite = n > n_nan + n_inf;
    s.min = any_finite ? min : std::numeric_limits<double>::quiet_NaN();
    s.max = any_finite ? max : std::numeric_limits<double>::quiet_NaN();
    return s;
}

void DeltaPartial::merge(const DeltaPartial& o) {
    n += o.n;
    n_changed += o.n_changed;
    n_changed_tol += o.n_changed_tol;
    n_nonfinite += o.n_nonfinite;
    sum_d2.add(o.sum_d2);
    sum_a2.add(o.sum_a2);
    sum_b2.add(o.sum_b2);
    sum_ab.add(o.sum_ab);
    sum_abs.add(o.sum_abs);
    max_abs = o.max_abs > max_abs ? o.max_abs : max_abs;
}

Delta DeltaPartial::finish() const {
    Delta d;
    d.n = n;
    d.sum_d2 = sum_d2.value();
    d.sum_a2 = sum_a2.value();
    d.sum_b2 = sum_b2.value();
    d.sum_ab = sum_ab.value();
    d.max_abs = max_abs;
    d.sum_abs = sum_abs.value();
    d.n_changed = n_changed;
    d.n_changed_tol = n_changed_tol;
    d.n_nonfinite = n_nonfinite;
    return d;
}

// ----------------------------------------------------------------------------- validation

std::size_t checked_itemsize(int code) {
    const std::size_t size = dtype_itemsize(code);
    if (size == 0)
        throw std::invalid_argument("unknown dtype code " + std::to_string(code) +
                                    " (valid codes are 0.." + std::to_string(kNumDTypes - 1) + ")");
    return size;
}

std::size_t checked_count(std::size_t nbytes, int code) {
    const std::size_t size = checked_itemsize(code);
    if (nbytes % size != 0)
        throw std::invalid_argument("buffer length " + std::to_string(nbytes) +
                                    " is not a multiple of the " + dtype_name(code) +
                                    " itemsize " + std::to_string(size));
    return nbytes / size;
}

// ----------------------------------------------------------------------------- loops

namespace {

template <class T>
inline typename T::raw load(const std::uint8_t* p, std::size_t i) {
    typename T::raw r;
    std::memcpy(&r, p + i * sizeof(r), sizeof(r));
    return r;
}

inline double reduce_lanes(const double* l) {
    static_assert(kLanes == 4, "the lane reduction order is part of the result");
    return (l[0] + l[1]) + (l[2] + l[3]);
}

// Lanes of one block. Element i of a block always goes to lane i % kLanes, whichever path runs.
struct StatsLanes {
    double s[kLanes], q[kLanes], mn[kLanes], mx[kLanes];
    std::uint64_t n_nan, n_inf;
    StatsLanes() : n_nan(0), n_inf(0) {
        for (std::size_t j = 0; j < kLanes; ++j) {
            s[j] = q[j] = 0.0;
            mn[j] = kInf;
            mx[j] = -kInf;
        }
    }
};

struct DeltaLanes {
    double d2[kLanes], a2[kLanes], b2[kLanes], ab[kLanes], sabs[kLanes], mx[kLanes];
    std::uint64_t chg[kLanes], tol[kLanes];
    std::uint64_t n_nonfinite;
    DeltaLanes() : n_nonfinite(0) {
        for (std::size_t j = 0; j < kLanes; ++j) {
            d2[j] = a2[j] = b2[j] = ab[j] = sabs[j] = mx[j] = 0.0;
            chg[j] = tol[j] = 0;
        }
    }
};

// ---- scalar path: the reference order. Used for block tails, for blocks that contain a
// NaN/Inf (or huge F64 values, see below) and when the compiler has no vector extensions.

template <class T>
inline void stats_elem(StatsLanes& L, std::size_t j, typename T::raw r) {
    if (T::may_be_nonfinite && T::nonfinite(r)) {
        if (T::isnan(r)) ++L.n_nan;
        else ++L.n_inf;
        return;
    }
    const double x = T::value(r);
    L.s[j] += x;
    L.q[j] += x * x;
    L.mn[j] = x < L.mn[j] ? x : L.mn[j];
    L.mx[j] = x > L.mx[j] ? x : L.mx[j];
}

template <class T>
void stats_scalar(const std::uint8_t* q, std::size_t from, std::size_t cnt, StatsLanes& L) {
    for (std::size_t i = from; i < cnt; ++i) stats_elem<T>(L, i % kLanes, load<T>(q, i));
}

template <class T>
inline void delta_elem(DeltaLanes& L, std::size_t j, typename T::raw ra, typename T::raw rb, double atol,
                       double rtol) {
    if (T::may_be_nonfinite && (T::nonfinite(ra) || T::nonfinite(rb))) {
        ++L.n_nonfinite;
        if (ra != rb) {  // identical bits (same NaN, same Inf) count as unchanged
            ++L.chg[j];
            ++L.tol[j];
        }
        return;
    }
    const double xa = T::value(ra), xb = T::value(rb);
    const double d = xa - xb;
    const double ad = std::fabs(d);
    L.d2[j] += d * d;
    L.a2[j] += xa * xa;
    L.b2[j] += xb * xb;
    L.ab[j] += xa * xb;
    L.sabs[j] += ad;
    L.mx[j] = ad > L.mx[j] ? ad : L.mx[j];
    L.chg[j] += T::equal(ra, rb, xa, xb) ? 0 : 1;
    const double lim = atol + rtol * std::fabs(xb);
    L.tol[j] += ad > lim ? 1 : 0;
}

template <class T>
void delta_scalar(const std::uint8_t* qa, const std::uint8_t* qb, std::size_t from, std::size_t cnt,
                  DeltaLanes& L, double atol, double rtol) {
    for (std::size_t i = from; i < cnt; ++i) delta_elem<T>(L, i % kLanes, load<T>(qa, i), load<T>(qb, i), atol, rtol);
}

#if defined(__GNUC__) && !defined(MODELSTORE_NO_VECTOR_EXT)
#define MS_VECTOR 1
// ---- vector path: GCC/Clang vector extensions. VW doubles per vector (2: SSE2/NEON,
// 4: AVX2), kLanes / VW vectors per accumulator, so lane j always holds the elements
// i % kLanes == j. No NaN/Inf test in the loop: a NaN/Inf input makes a sum of squares
// non-finite, and then the block is redone on the scalar path (which excludes it).
// Finite inputs give bit-identical lanes on both paths (same operations, same order).

template <int VW>
struct VT {  // VW doubles, and VW int64 for masks and counters
    typedef double d __attribute__((vector_size(8 * VW)));
    typedef std::int64_t l __attribute__((vector_size(8 * VW)));
};

#define MS_INLINE inline __attribute__((always_inline))

template <class V>
MS_INLINE V loadv(const std::uint8_t* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Exact widening of VW elements to double (the same values as T::value). Written
// element-wise on small arrays: GCC's SLP vectoriser turns these into single instructions
// (e.g. vcvtps2pd ymm, vpmovzxwd + vpslld), which __builtin_convertvector does not always do.
template <class T, int VW>
MS_INLINE typename VT<VW>::d decode(const std::uint8_t* q) {
    typedef typename T::raw raw;
    typename VT<VW>::d x;
    if constexpr (std::is_same_v<T, TraitsF64>) {
        std::memcpy(&x, q, sizeof x);
    } else if constexpr (std::is_same_v<T, TraitsF32>) {
        float f[VW];
        std::memcpy(f, q, sizeof f);
        for (int k = 0; k < VW; ++k) x[k] = f[k];
    } else if constexpr (std::is_same_v<T, TraitsBF16>) {
        std::uint16_t h[VW];
        std::uint32_t w[VW];
        float f[VW];
        std::memcpy(h, q, sizeof h);
        for (int k = 0; k < VW; ++k) w[k] = static_cast<std::uint32_t>(h[k]) << 16;
        std::memcpy(f, w, sizeof f);
        for (int k = 0; k < VW; ++k) x[k] = f[k];
    } else if constexpr (std::is_same_v<T, TraitsI32> || std::is_same_v<T, TraitsI16> ||
                         std::is_same_v<T, TraitsU16> || std::is_same_v<T, TraitsI8> ||
                         std::is_same_v<T, TraitsU8> || std::is_same_v<T, TraitsBool>) {
        raw h[VW];
        std::int32_t w[VW];
        std::memcpy(h, q, sizeof h);
        for (int k = 0; k < VW; ++k) w[k] = std::is_same_v<T, TraitsBool> ? (h[k] != 0) : static_cast<std::int32_t>(h[k]);
        for (int k = 0; k < VW; ++k) x[k] = w[k];
    } else if constexpr (std::is_same_v<T, TraitsU32>) {
        // u -> (int32)(u - 2^31) exactly, then + 2^31 (exact: the result is < 2^32).
        std::uint32_t h[VW];
        std::int32_t w[VW];
        std::memcpy(h, q, sizeof h);
        for (int k = 0; k < VW; ++k) w[k] = static_cast<std::int32_t>(h[k] ^ 0x80000000u);
        for (int k = 0; k < VW; ++k) x[k] = static_cast<double>(w[k]) + 2147483648.0;
    } else {  // F16 (branch-free bit manipulation), I64, U64 (rounded like a scalar cast), F8 (table)
        for (int k = 0; k < VW; ++k) x[k] = T::value(load<T>(q, static_cast<std::size_t>(k)));
    }
    return x;
}

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define MS_HAVE_SHUFFLEVECTOR 1
// 8 BF16 values (one 16-byte load) -> 8 / VW vectors of VW doubles: interleaving the bits
// with zeros (punpcklwd / punpckhwd, zip1 / zip2 on NEON) gives the float32 bit patterns.
template <int VW>
MS_INLINE void decode_bf16_x8(const std::uint8_t* q, typename VT<VW>::d* out) {
    typedef std::uint16_t v8us __attribute__((vector_size(16)));
    const v8us h = loadv<v8us>(q), z = {};
    const v8us l16 = __builtin_shufflevector(z, h, 0, 8, 1, 9, 2, 10, 3, 11);
    const v8us h16 = __builtin_shufflevector(z, h, 4, 12, 5, 13, 6, 14, 7, 15);
    float f[8];
    std::memcpy(f, &l16, 16);
    std::memcpy(f + 4, &h16, 16);
    for (int j = 0; j < 8 / VW; ++j)
        for (int k = 0; k < VW; ++k) out[j][k] = f[j * VW + k];
}
#else
#define MS_HAVE_SHUFFLEVECTOR 0
#endif

template <class VD>
MS_INLINE bool all_finite(const VD* acc, int nv) {
    bool ok = true;
    for (int k = 0; k < nv; ++k) {
        const VD z = acc[k] - acc[k];  // 0 for finite lanes, NaN otherwise
        for (std::size_t j = 0; j < sizeof(VD) / sizeof(double); ++j) ok &= (z[j] == 0.0);
    }
    return ok;
}

template <class T, int VW>
MS_INLINE std::size_t stats_vec(const std::uint8_t* q, std::size_t cnt, StatsLanes& L) {
    typedef typename VT<VW>::d vd;
    constexpr int NV = static_cast<int>(kLanes) / VW;
    constexpr std::size_t W = sizeof(typename T::raw);
    const std::size_t full = cnt & ~(kLanes - 1);
    vd s[NV], sq[NV], mn[NV], mx[NV];
    for (int k = 0; k < NV; ++k) {
        s[k] = sq[k] = vd{};
        mn[k] = vd{} + kInf;
        mx[k] = vd{} - kInf;
    }
    auto step = [&](int k, const vd& x) __attribute__((always_inline)) {
        s[k] += x;
        sq[k] += x * x;
        mn[k] = x < mn[k] ? x : mn[k];
        mx[k] = x > mx[k] ? x : mx[k];
    };
    std::size_t i = 0;
#if MS_HAVE_SHUFFLEVECTOR
    if constexpr (std::is_same_v<T, TraitsBF16>) {
        for (; i + 2 * kLanes <= full; i += 2 * kLanes) {  // see delta_vec
            vd x[2 * NV];
            decode_bf16_x8<VW>(q + i * W, x);
            for (int k = 0; k < 2 * NV; ++k) step(k % NV, x[k]);
        }
    }
#endif
    for (; i < full; i += kLanes) {
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k) step(k, decode<T, VW>(q + (i + k * VW) * W));
    }
    if (T::may_be_nonfinite && !all_finite(sq, NV)) return 0;  // redo on the scalar path
    std::memcpy(L.s, s, sizeof s);
    std::memcpy(L.q, sq, sizeof sq);
    std::memcpy(L.mn, mn, sizeof mn);
    std::memcpy(L.mx, mx, sizeof mx);
    return full;
}

// How the n_changed_tol test |d| > atol + rtol*|b| is evaluated in the vector loop (the
// result is the same; the cheaper forms are only used when they are exact):
enum TolMode : int {
    kTolGeneral = 0,  // atol + rtol * |b|
    kTolAtol = 1,     // rtol == 0: atol + 0*|b| == atol for finite b
    kTolChanged = 2,  // atol == rtol == 0 and values exact in double: |d| > 0 <=> a != b
};

template <class T, int VW, int Mode>
MS_INLINE std::size_t delta_vec(const std::uint8_t* qa, const std::uint8_t* qb, std::size_t cnt, DeltaLanes& L,
                                double atol, double rtol) {
    typedef typename VT<VW>::d vd;
    typedef typename VT<VW>::l vl;
    constexpr int NV = static_cast<int>(kLanes) / VW;
    constexpr std::size_t W = sizeof(typename T::raw);
    // I64/U64 are not exact in double: compare the integers themselves.
    constexpr bool raw_compare = !T::may_be_nonfinite && W == 8;
    const std::size_t full = cnt & ~(kLanes - 1);
    const vd vatol = vd{} + atol, vrtol = vd{} + rtol;
    const vl absmask = vl{} + 0x7fffffffffffffffll;
    vd d2[NV], a2[NV], b2[NV], ab[NV], sabs[NV], mx[NV];
    vl chg[NV], tol[NV];
    for (int k = 0; k < NV; ++k) {
        d2[k] = a2[k] = b2[k] = ab[k] = sabs[k] = mx[k] = vd{};
        chg[k] = tol[k] = vl{};
    }
    auto step = [&](int k, const vd& xa, const vd& xb, std::size_t off) __attribute__((always_inline)) {
        const vd d = xa - xb;
        const vd ad = (vd)((vl)d & absmask);
        d2[k] += d * d;
        a2[k] += xa * xa;
        b2[k] += xb * xb;
        ab[k] += xa * xb;
        sabs[k] += ad;
        mx[k] = ad > mx[k] ? ad : mx[k];
        if constexpr (raw_compare) chg[k] -= (vl)(loadv<vl>(qa + off) != loadv<vl>(qb + off));
        else chg[k] -= (vl)(xa != xb);  // a mask is -1 where true
        if constexpr (Mode == kTolGeneral) tol[k] -= (vl)(ad > vatol + vrtol * (vd)((vl)xb & absmask));
        else if constexpr (Mode == kTolAtol) tol[k] -= (vl)(ad > vatol);
        (void)off;
    };
    std::size_t i = 0;
#if MS_HAVE_SHUFFLEVECTOR
    if constexpr (std::is_same_v<T, TraitsBF16>) {
        // 8 elements per 16-byte load: two groups of 4 (lanes 0..3, then lanes 0..3 again).
        for (; i + 2 * kLanes <= full; i += 2 * kLanes) {
            vd xa[2 * NV], xb[2 * NV];
            decode_bf16_x8<VW>(qa + i * W, xa);
            decode_bf16_x8<VW>(qb + i * W, xb);
            for (int k = 0; k < 2 * NV; ++k) step(k % NV, xa[k], xb[k], (i + k * VW) * W);
        }
    }
#endif
    for (; i < full; i += kLanes) {
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k) {
            const std::size_t off = (i + k * VW) * W;
            step(k, decode<T, VW>(qa + off), decode<T, VW>(qb + off), off);
        }
    }
    if constexpr (Mode == kTolChanged)
        for (int k = 0; k < NV; ++k) tol[k] = chg[k];
    if (T::may_be_nonfinite) {
        vd t[NV];
        for (int k = 0; k < NV; ++k) t[k] = a2[k] + b2[k];
        if (!all_finite(t, NV)) return 0;  // redo on the scalar path
    }
    std::memcpy(L.d2, d2, sizeof d2);
    std::memcpy(L.a2, a2, sizeof a2);
    std::memcpy(L.b2, b2, sizeof b2);
    std::memcpy(L.ab, ab, sizeof ab);
    std::memcpy(L.sabs, sabs, sizeof sabs);
    std::memcpy(L.mx, mx, sizeof mx);
    std::memcpy(L.chg, chg, sizeof chg);
    std::memcpy(L.tol, tol, sizeof tol);
    return full;
}
#else
#define MS_VECTOR 0
#define MS_INLINE inline
#endif

template <class T, int VW>
MS_INLINE void stats_range_impl(const std::uint8_t* p, std::size_t begin, std::size_t end, StatsPartial& out) {
    out.n += end - begin;
    for (std::size_t b0 = begin; b0 < end; b0 += kBlock) {
        const std::size_t cnt = (end - b0) < kBlock ? (end - b0) : kBlock;
        const std::uint8_t* q = p + b0 * sizeof(typename T::raw);
        StatsLanes L;
        std::size_t done = 0;
#if MS_VECTOR
        done = stats_vec<T, VW>(q, cnt, L);
#endif
        stats_scalar<T>(q, done, cnt, L);
        out.n_nan += L.n_nan;
        out.n_inf += L.n_inf;
        out.sum.add(reduce_lanes(L.s));
        out.sumsq.add(reduce_lanes(L.q));
        for (std::size_t j = 0; j < kLanes; ++j) {
            out.min = L.mn[j] < out.min ? L.mn[j] : out.min;
            out.max = L.mx[j] > out.max ? L.mx[j] : out.max;
        }
    }
}

template <class T, int VW>
MS_INLINE void delta_range_impl(const std::uint8_t* a, const std::uint8_t* b, std::size_t begin, std::size_t end,
                                double atol, double rtol, DeltaPartial& out) {
    out.n += end - begin;
    for (std::size_t b0 = begin; b0 < end; b0 += kBlock) {
        const std::size_t cnt = (end - b0) < kBlock ? (end - b0) : kBlock;
        const std::uint8_t* qa = a + b0 * sizeof(typename T::raw);
        const std::uint8_t* qb = b + b0 * sizeof(typename T::raw);
        DeltaLanes L;
        std::size_t done = 0;
#if MS_VECTOR
        if (rtol != 0.0) done = delta_vec<T, VW, kTolGeneral>(qa, qb, cnt, L, atol, rtol);
        else if (atol != 0.0 || (!T::may_be_nonfinite && sizeof(typename T::raw) == 8))
            done = delta_vec<T, VW, kTolAtol>(qa, qb, cnt, L, atol, rtol);
        else done = delta_vec<T, VW, kTolChanged>(qa, qb, cnt, L, atol, rtol);
#endif
        delta_scalar<T>(qa, qb, done, cnt, L, atol, rtol);
        out.n_nonfinite += L.n_nonfinite;
        out.sum_d2.add(reduce_lanes(L.d2));
        out.sum_a2.add(reduce_lanes(L.a2));
        out.sum_b2.add(reduce_lanes(L.b2));
        out.sum_ab.add(reduce_lanes(L.ab));
        out.sum_abs.add(reduce_lanes(L.sabs));
        for (std::size_t j = 0; j < kLanes; ++j) {
            out.max_abs = L.mx[j] > out.max_abs ? L.mx[j] : out.max_abs;
            out.n_changed += L.chg[j];
            out.n_changed_tol += L.tol[j];
        }
    }
}

// Baseline ISA (SSE2 on x86-64, NEON on aarch64): 2 doubles per vector.
template <class T>
void stats_range_base(const std::uint8_t* p, std::size_t begin, std::size_t end, StatsPartial& out) {
    stats_range_impl<T, 2>(p, begin, end, out);
}
template <class T>
void delta_range_base(const std::uint8_t* a, const std::uint8_t* b, std::size_t begin, std::size_t end,
                      double atol, double rtol, DeltaPartial& out) {
    delta_range_impl<T, 2>(a, b, begin, end, atol, rtol, out);
}

#if MS_X86_DISPATCH
template <class T>
__attribute__((target("avx2"))) void stats_range_avx2(const std::uint8_t* p, std::size_t begin, std::size_t end,
                                                      StatsPartial& out) {
    stats_range_impl<T, 4>(p, begin, end, out);
}
template <class T>
__attribute__((target("avx2"))) void delta_range_avx2(const std::uint8_t* a, const std::uint8_t* b,
                                                      std::size_t begin, std::size_t end, double atol,
                                                      double rtol, DeltaPartial& out) {
    delta_range_impl<T, 4>(a, b, begin, end, atol, rtol, out);
}

// (An AVX-512VL variant of the same code measured no faster than AVX2 on Zen 4 once FMA
// contraction is off, so there is none.)
enum SimdLevel : int { kSimdBase = 0, kSimdAvx2 = 1 };

int cpu_simd_level() {
    static const int level = [] {
        __builtin_cpu_init();  // libgcc also checks that the OS saves the AVX state
        return __builtin_cpu_supports("avx2") ? int(kSimdAvx2) : int(kSimdBase);
    }();
    return level;
}

// -1: automatic (the best the CPU has), else a forced SimdLevel.
std::atomic<int> g_simd_level{-1};

int effective_simd_level() {
    const int level = g_simd_level.load(std::memory_order_relaxed);
    return level < 0 ? cpu_simd_level() : level;
}
#endif

template <class T>
void stats_range(const std::uint8_t* p, std::size_t begin, std::size_t end, StatsPartial& out) {
#if MS_X86_DISPATCH
    switch (effective_simd_level()) {
        case kSimdAvx2: return stats_range_avx2<T>(p, begin, end, out);
        default: break;
    }
#endif
    stats_range_base<T>(p, begin, end, out);
}

template <class T>
void delta_range(const std::uint8_t* a, const std::uint8_t* b, std::size_t begin, std::size_t end, double atol,
                 double rtol, DeltaPartial& out) {
#if MS_X86_DISPATCH
    switch (effective_simd_level()) {
        case kSimdAvx2: return delta_range_avx2<T>(a, b, begin, end, atol, rtol, out);
        default: break;
    }
#endif
    delta_range_base<T>(a, b, begin, end, atol, rtol, out);
}

inline void segment_bounds(std::size_t n_elems, std::size_t seg, std::size_t& begin, std::size_t& end) {
    begin = seg * kSegment;
    end = begin + kSegment < n_elems ? begin + kSegment : n_elems;
    if (begin > end) begin = end;
}

}  // namespace

// ----------------------------------------------------------------------------- public API

StatsPartial stats_segment(const std::uint8_t* p, std::size_t n_elems, int code, std::size_t seg) {
    StatsPartial out;
    std::size_t begin, end;
    segment_bounds(n_elems, seg, begin, end);
    if (begin == end) return out;
    dispatch_dtype(code, [&](auto traits) {
        using T = decltype(traits);
        stats_range<T>(p, begin, end, out);
    });
    return out;
}

DeltaPartial delta_segment(const std::uint8_t* a, const std::uint8_t* b, std::size_t n_elems,
                           int code, double atol, double rtol, std::size_t seg) {
    DeltaPartial out;
    std::size_t begin, end;
    segment_bounds(n_elems, seg, begin, end);
    if (begin == end) return out;
    dispatch_dtype(code, [&](auto traits) {
        using T = decltype(traits);
        delta_range<T>(a, b, begin, end, atol, rtol, out);
    });
    return out;
}

Stats chunk_stats(const std::uint8_t* p, std::size_t nbytes, int code) {
    const std::size_t n = checked_count(nbytes, code);
    StatsPartial acc;
    for (std::size_t seg = 0, ns = num_segments(n); seg < ns; ++seg) acc.merge(stats_segment(p, n, code, seg));
    return acc.finish();
}

Delta chunk_delta(const std::uint8_t* a, std::size_t a_nbytes, const std::uint8_t* b,
                  std::size_t b_nbytes, int code, double atol, double rtol) {
    const std::size_t n = checked_count(a_nbytes, code);
    if (a_nbytes != b_nbytes)
        throw std::invalid_argument("chunk_delta: buffers differ in length (" + std::to_string(a_nbytes) +
                                    " vs " + std::to_string(b_nbytes) + " bytes)");
    DeltaPartial acc;
    for (std::size_t seg = 0, ns = num_segments(n); seg < ns; ++seg)
        acc.merge(delta_segment(a, b, n, code, atol, rtol, seg));
    return acc.finish();
}

const char* simd_info() {
#if MS_X86_DISPATCH
    switch (effective_simd_level()) {
        case kSimdAvx2: return "avx2";
        default: return "sse2";
    }
#elif MS_VECTOR && defined(__aarch64__)
    return "neon";
#elif MS_VECTOR && defined(__x86_64__)
    return "sse2";
#elif MS_VECTOR
    return "vector-ext";
#else
    return "scalar";
#endif
}

bool set_simd(const char* name) {
#if MS_X86_DISPATCH
    const std::string n(name);
    if (n == "auto") g_simd_level.store(-1);
    else if (n == "sse2" || n == "baseline") g_simd_level.store(kSimdBase);
    else if (n == "avx2" && cpu_simd_level() >= kSimdAvx2) g_simd_level.store(kSimdAvx2);
    else return false;
    return true;
#else
    const std::string n(name);
    return n == "auto" || n == "baseline";
#endif
}

}  // namespace kernels
}  // namespace modelstore
