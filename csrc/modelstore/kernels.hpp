// kernels.hpp -- chunk statistics and chunk deltas over raw little-endian buffers.
//
// Pure C++17 (no Python headers). Everything is a pure function of
// (const uint8_t* ptr, size_t nbytes, int dtype_code [, second buffer, atol, rtol]).
//
// Semantics (identical to modelstore/kernels/numpy_impl.py, the reference):
//   * every element is widened bit-exactly to double (ints/bool converted; bool: non-zero -> 1.0);
//   * stats: NaN and +-Inf are counted (n_nan, n_inf) and excluded from sum/sumsq/min/max;
//     min/max are NaN when there is no finite element;
//   * delta: a pair where either side is NaN/Inf is counted in n_nonfinite, excluded from every
//     sum and from max_abs, and counts as changed (n_changed and n_changed_tol) unless both sides
//     have identical bits. Finite pairs: d = a - b (in double); n_changed counts a != b (values:
//     -0.0 == 0.0; integers compared exactly), n_changed_tol counts |d| > atol + rtol*|b|.
//     max_abs is 0.0 when there is no finite pair.
//
// Accumulation order (fixed, so results are bit-for-bit deterministic whatever the thread
// count, the ISA or the way a buffer is split into the *_many tasks):
//   element i of a block goes to lane i % 4; a block is kBlock = 512 elements; lanes start at 0
//   each block and are reduced as (l0+l1)+(l2+l3); block sums are added to the
//   segment total with TwoSum (error-free transformation, compensation kept separately);
//   a segment is kSegment elements; segment partials are merged in order with TwoSum.
// Error bound: each lane adds at most kBlock/4 = 128 terms, so the relative error of a sum,
// measured against the sum of |terms|, is below ~(128 + 3 + a few) * 2^-53 ~ 2e-14 for any n
// (e.g. 1e8 elements), instead of the n * 2^-53 of naive summation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>

#include "modelstore/dtype.hpp"

namespace modelstore {
namespace kernels {

constexpr int kKernelAbi = 1;
constexpr std::size_t kLanes = 4;
constexpr std::size_t kBlock = 512;            // elements per block (multiple of kLanes)
constexpr std::size_t kSegment = 1u << 19;     // elements per segment (multiple of kBlock)
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Stats {
    std::uint64_t n = 0, n_nan = 0, n_inf = 0;
    double sum = 0.0, sumsq = 0.0, min = 0.0, max = 0.0;
};

struct Delta {
    std::uint64_t n = 0;
    double sum_d2 = 0.0, sum_a2 = 0.0, sum_b2 = 0.0, sum_ab = 0.0, max_abs = 0.0, sum_abs = 0.0;
    std::uint64_t n_changed = 0, n_changed_tol = 0, n_nonfinite = 0;
};

// A compensated double: value = hi + lo.
struct CSum {
    double hi = 0.0, lo = 0.0;
    void add(double x) {  // TwoSum
        const double s = hi + x;
        const double bp = s - hi;
        const double err = (hi - (s - bp)) + (x - bp);
        hi = s;
        lo += err;
    }
    void add(const CSum& o) {
        add(o.hi);
        lo += o.lo;
    }
    // hi is +-Inf/NaN after an overflow: the compensation is then meaningless (NaN).
    double value() const { return (hi - hi == 0.0) ? hi + lo : hi; }
};

// Partial results of a range of elements; merged in order into a final Stats/Delta.
struct StatsPartial {
    std::uint64_t n = 0, n_nan = 0, n_inf = 0;
    CSum sum, sumsq;
    double min = kInf, max = -kInf;
    void merge(const StatsPartial& o);
    Stats finish() const;
};

struct DeltaPartial {
    std::uint64_t n = 0, n_changed = 0, n_changed_tol = 0, n_nonfinite = 0;
    CSum sum_d2, sum_a2, sum_b2, sum_ab, sum_abs;
    double max_abs = 0.0;
    void merge(const DeltaPartial& o);
    Delta finish() const;
};

// Validation; throws std::invalid_argument (-> Python ValueError) with a clear message.
std::size_t checked_itemsize(int code);                     // unknown code
std::size_t checked_count(std::size_t nbytes, int code);     // nbytes % itemsize != 0
inline std::size_t num_segments(std::size_t n_elems) { return (n_elems + kSegment - 1) / kSegment; }

// Elements [seg*kSegment, min(n_elems, (seg+1)*kSegment)) of a buffer of n_elems elements.
// No validation (callers validate first); safe to call from any thread.
StatsPartial stats_segment(const std::uint8_t* p, std::size_t n_elems, int code, std::size_t seg);
DeltaPartial delta_segment(const std::uint8_t* a, const std::uint8_t* b, std::size_t n_elems,
                           int code, double atol, double rtol, std::size_t seg);

// Whole buffers (validating; sequential over the segments).
Stats chunk_stats(const std::uint8_t* p, std::size_t nbytes, int code);
Delta chunk_delta(const std::uint8_t* a, std::size_t a_nbytes, const std::uint8_t* b,
                  std::size_t b_nbytes, int code, double atol, double rtol);

// Which compiled variant of the hot loops runs: "avx2", "sse2", "neon", "scalar", ...
const char* simd_info();
// Force a variant ("auto", "baseline"/"sse2", "avx2"), for tests and benchmarks; process-wide,
// not synchronised with running kernels. Returns false if unknown/unsupported here.
// All variants give bit-identical results.
bool set_simd(const char* name);

}  // namespace kernels
}  // namespace modelstore
