// dtype.hpp -- the modelstore dtype codes and bit-exact decoding of every dtype to double.
//
// Codes are shared with modelstore/dtypes.py and stored on disk: append-only, never renumber.
// No Python headers here: everything is plain C++17.
//
// Each dtype has a traits struct T with
//   using raw = <unsigned/signed integer type of the element's width>;
//   static constexpr bool may_be_nonfinite;       // false for integers and bool
//   static bool   nonfinite(raw r);               // NaN or +-Inf (bit test, no FP compare)
//   static bool   isnan(raw r);                   // NaN (only meaningful if nonfinite(r))
//   static double value(raw r);                   // exact widening to double
//   static bool   equal(raw a, raw b, double va, double vb);  // value equality, finite inputs
// All decoders are exact: every F64/F32/F16/BF16/F8 value is representable in double.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

// The kernels read raw little-endian bytes with memcpy: the host must be little-endian
// (every platform modelstore ships for; MSVC targets are all little-endian).
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "modelstore kernels read little-endian raw bytes and assume a little-endian host"
#endif

namespace modelstore {

enum DTypeCode : int {
    F64 = 0,
    F32 = 1,
    F16 = 2,
    BF16 = 3,
    F8_E4M3 = 4,  // ml_dtypes float8_e4m3fn: no Inf, NaN = 0x7F / 0xFF, max 448
    F8_E5M2 = 5,  // IEEE-like: Inf = 0x7C/0xFC, NaN = 0x7D..0x7F / 0xFD..0xFF
    I64 = 6,
    I32 = 7,
    I16 = 8,
    I8 = 9,
    U8 = 10,
    BOOL = 11,  // one byte; any non-zero byte is True (1.0)
    U16 = 12,
    U32 = 13,
    U64 = 14,
};

constexpr int kNumDTypes = 15;

// Element size in bytes, 0 for an unknown code.
inline constexpr std::size_t dtype_itemsize(int code) {
    switch (code) {
        case F64: case I64: case U64: return 8;
        case F32: case I32: case U32: return 4;
        case F16: case BF16: case I16: case U16: return 2;
        case F8_E4M3: case F8_E5M2: case I8: case U8: case BOOL: return 1;
        default: return 0;
    }
}

inline constexpr const char* dtype_name(int code) {
    switch (code) {
        case F64: return "F64";
        case F32: return "F32";
        case F16: return "F16";
        case BF16: return "BF16";
        case F8_E4M3: return "F8_E4M3";
        case F8_E5M2: return "F8_E5M2";
        case I64: return "I64";
        case I32: return "I32";
        case I16: return "I16";
        case I8: return "I8";
        case U8: return "U8";
        case BOOL: return "BOOL";
        case U16: return "U16";
        case U32: return "U32";
        case U64: return "U64";
        default: return "?";
    }
}

namespace detail {

inline double bits_to_double(std::uint64_t b) {
    double d;
    std::memcpy(&d, &b, sizeof d);
    return d;
}

inline float bits_to_float(std::uint32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
}

// IEEE binary16 -> double, exact. Integer-only and branch-free (masks instead of
// conditionals) so that the vectoriser can handle several elements at once.
inline double f16_to_double(std::uint16_t h) {
    const std::uint64_t em = h & 0x7fffu;                           // exponent + mantissa
    const std::uint64_t sign = static_cast<std::uint64_t>(h & 0x8000u) << 48;
    // normal: rebias the exponent 15 -> 1023, i.e. add 1008 to it;
    // Inf/NaN (em >= 0x7c00): exponent 31 + 1008 + 1008 = 2047, payload kept.
    const std::uint64_t special = std::uint64_t(0) - static_cast<std::uint64_t>(em >= 0x7c00u);
    const std::uint64_t normal = (em << 42) + (std::uint64_t(1008) << 52) + (special & (std::uint64_t(1008) << 52));
    // subnormal and zero (em < 0x400): em * 2^-24, via an exact int -> double conversion.
    const double sub_d = static_cast<double>(static_cast<std::int32_t>(em)) * 0x1p-24;
    std::uint64_t sub;
    std::memcpy(&sub, &sub_d, sizeof sub);
    const std::uint64_t is_sub = std::uint64_t(0) - static_cast<std::uint64_t>(em < 0x400u);
    return bits_to_double(((sub & is_sub) | (normal & ~is_sub)) | sign);
}

constexpr double pow2(int k) {
    double r = 1.0;
    for (; k > 0; --k) r *= 2.0;
    for (; k < 0; ++k) r *= 0.5;
    return r;
}

// float8_e4m3fn -> double (bias 7, no Inf, 0x7F/0xFF are NaN, max 448).
constexpr double f8e4m3_value(unsigned x) {
    const unsigned e = (x >> 3) & 0xfu, m = x & 0x7u;
    if (e == 0xfu && m == 0x7u) return std::numeric_limits<double>::quiet_NaN();
    const double mag = e == 0 ? m * pow2(-9) : (8 + m) * pow2(static_cast<int>(e) - 10);
    return (x & 0x80u) ? -mag : mag;
}

// float8_e5m2 -> double (bias 15; it is the high byte of an IEEE binary16).
constexpr double f8e5m2_value(unsigned x) {
    const unsigned e = (x >> 2) & 0x1fu, m = x & 0x3u;
    double mag = 0.0;
    if (e == 0x1fu)
        mag = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
    else
        mag = e == 0 ? m * pow2(-16) : (4 + m) * pow2(static_cast<int>(e) - 17);
    return (x & 0x80u) ? -mag : mag;
}

// 256-entry decode tables for the one-byte float types (2 KiB each, in .rodata).
struct F8Tables {
    double e4m3[256];
    double e5m2[256];
};

constexpr F8Tables make_f8_tables() {
    F8Tables t{};
    for (unsigned i = 0; i < 256; ++i) {
        t.e4m3[i] = f8e4m3_value(i);
        t.e5m2[i] = f8e5m2_value(i);
    }
    return t;
}

inline constexpr F8Tables kF8Tables = make_f8_tables();

}  // namespace detail

// ----------------------------------------------------------------------------- traits

struct TraitsF64 {
    using raw = std::uint64_t;
    static constexpr int code = F64;
    static constexpr bool may_be_nonfinite = true;
    static bool nonfinite(raw r) { return (r & 0x7fffffffffffffffull) >= 0x7ff0000000000000ull; }
    static bool isnan(raw r) { return (r & 0x7fffffffffffffffull) > 0x7ff0000000000000ull; }
    static double value(raw r) { return detail::bits_to_double(r); }
    static bool equal(raw, raw, double va, double vb) { return va == vb; }
};

struct TraitsF32 {
    using raw = std::uint32_t;
    static constexpr int code = F32;
    static constexpr bool may_be_nonfinite = true;
    static bool nonfinite(raw r) { return (r & 0x7fffffffu) >= 0x7f800000u; }
    static bool isnan(raw r) { return (r & 0x7fffffffu) > 0x7f800000u; }
    static double value(raw r) { return static_cast<double>(detail::bits_to_float(r)); }
    static bool equal(raw, raw, double va, double vb) { return va == vb; }
};

struct TraitsBF16 {
    using raw = std::uint16_t;
    static constexpr int code = BF16;
    static constexpr bool may_be_nonfinite = true;
    static bool nonfinite(raw r) { return (r & 0x7fffu) >= 0x7f80u; }
    static bool isnan(raw r) { return (r & 0x7fffu) > 0x7f80u; }
    static double value(raw r) {
        return static_cast<double>(detail::bits_to_float(static_cast<std::uint32_t>(r) << 16));
    }
    static bool equal(raw, raw, double va, double vb) { return va == vb; }
};

struct TraitsF16 {
    using raw = std::uint16_t;
    static constexpr int code = F16;
    static constexpr bool may_be_nonfinite = true;
    static bool nonfinite(raw r) { return (r & 0x7fffu) >= 0x7c00u; }
    static bool isnan(raw r) { return (r & 0x7fffu) > 0x7c00u; }
    static double value(raw r) { return detail::f16_to_double(r); }
    static bool equal(raw, raw, double va, double vb) { return va == vb; }
};

struct TraitsF8E4M3 {
    using raw = std::uint8_t;
    static constexpr int code = F8_E4M3;
    static constexpr bool may_be_nonfinite = true;
    static bool nonfinite(raw r) { return (r & 0x7fu) == 0x7fu; }
    static bool isnan(raw r) { return (r & 0x7fu) == 0x7fu; }
    static double value(raw r) { return detail::kF8Tables.e4m3[r]; }
    static bool equal(raw, raw, double va, double vb) { return va == vb; }
};

struct TraitsF8E5M2 {
    using raw = std::uint8_t;
    static constexpr int code = F8_E5M2;
    static constexpr bool may_be_nonfinite = true;
    static bool nonfinite(raw r) { return (r & 0x7fu) >= 0x7cu; }
    static bool isnan(raw r) { return (r & 0x7fu) > 0x7cu; }
    static double value(raw r) { return detail::kF8Tables.e5m2[r]; }
    static bool equal(raw, raw, double va, double vb) { return va == vb; }
};

template <class Int, int Code>
struct TraitsInt {
    using raw = Int;
    static constexpr int code = Code;
    static constexpr bool may_be_nonfinite = false;
    static bool nonfinite(raw) { return false; }
    static bool isnan(raw) { return false; }
    // Exact for |v| <= 2^53; larger I64/U64 values round to the nearest double.
    static double value(raw r) { return static_cast<double>(r); }
    // Exact integer comparison (not the rounded doubles).
    static bool equal(raw a, raw b, double, double) { return a == b; }
};

struct TraitsBool {
    using raw = std::uint8_t;
    static constexpr int code = BOOL;
    static constexpr bool may_be_nonfinite = false;
    static bool nonfinite(raw) { return false; }
    static bool isnan(raw) { return false; }
    static double value(raw r) { return r != 0 ? 1.0 : 0.0; }
    static bool equal(raw, raw, double va, double vb) { return va == vb; }
};

using TraitsI64 = TraitsInt<std::int64_t, I64>;
using TraitsI32 = TraitsInt<std::int32_t, I32>;
using TraitsI16 = TraitsInt<std::int16_t, I16>;
using TraitsI8 = TraitsInt<std::int8_t, I8>;
using TraitsU8 = TraitsInt<std::uint8_t, U8>;
using TraitsU16 = TraitsInt<std::uint16_t, U16>;
using TraitsU32 = TraitsInt<std::uint32_t, U32>;
using TraitsU64 = TraitsInt<std::uint64_t, U64>;

// Calls f(Traits{}) for the traits of `code`; returns false for an unknown code.
template <class F>
inline bool dispatch_dtype(int code, F&& f) {
    switch (code) {
        case F64: f(TraitsF64{}); return true;
        case F32: f(TraitsF32{}); return true;
        case F16: f(TraitsF16{}); return true;
        case BF16: f(TraitsBF16{}); return true;
        case F8_E4M3: f(TraitsF8E4M3{}); return true;
        case F8_E5M2: f(TraitsF8E5M2{}); return true;
        case I64: f(TraitsI64{}); return true;
        case I32: f(TraitsI32{}); return true;
        case I16: f(TraitsI16{}); return true;
        case I8: f(TraitsI8{}); return true;
        case U8: f(TraitsU8{}); return true;
        case BOOL: f(TraitsBool{}); return true;
        case U16: f(TraitsU16{}); return true;
        case U32: f(TraitsU32{}); return true;
        case U64: f(TraitsU64{}); return true;
        default: return false;
    }
}

}  // namespace modelstore
