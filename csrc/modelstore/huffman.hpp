// huffman.hpp -- canonical Huffman coding shared by splithuff (byte planes) and the
// zero-run coder of xor-planes deltas (zerorun.hpp).
//
// Codes are length-limited to kMaxLen bits so one 4096-entry table lookup decodes a
// symbol; code lengths travel as nibbles (symbol 2i in the low nibble of byte i). A plane
// is coded as kStreams independent LSB-first bit streams, one per consecutive segment,
// which the decoder runs interleaved: each symbol's lookup waits on the previous one's
// length, so independent streams keep the core's load ports busy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace modelstore {
namespace huffman {

constexpr int kMaxLen = 12;  // code length limit: decode tables have 4096 entries
constexpr int kStreams = 4;  // bit streams (segments) per coded plane
constexpr int kMaxSyms = 512;  // largest alphabet code_lengths takes
constexpr size_t kStreamHeader = 4 * (kStreams - 1);  // u32 byte sizes of streams 0..2

// Little-endian u32 fields of the payload headers.
inline void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline uint32_t get_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// A thread-local buffer's address as an opaque value: in a shared library GCC otherwise
// re-derives it (a __tls_get_addr call) at uses inside hot loops.
template <class T>
inline T& opaque(T& ref) {
    T* p = &ref;
#if defined(__GNUC__)
    asm("" : "+r"(p));
#endif
    return *p;
}

// x86-64 with GCC/Clang: hot loops are also compiled for BMI2 (one-uop variable shifts:
// the bit-stream decoders) or AVX2 (xor-planes' byte split) with function target
// attributes, and pick that copy at run time (the build stays portable).
#if defined(__x86_64__) && defined(__GNUC__)
#define MODELSTORE_X86_TARGETS 1
inline bool cpu_has_bmi2() {
    static const bool yes = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("bmi2") != 0;
    }();
    return yes;
}
#endif

// Code lengths for the frequencies (0 = unused symbol), limited to kMaxLen.
void code_lengths(const uint64_t* freq, int nsyms, uint8_t* len);
// Canonical codes of the lengths, bit-reversed for LSB-first emission.
void canonical_codes(const uint8_t* len, int nsyms, uint16_t* code);
// Lengths as nibbles: nsyms / 2 bytes.
void pack_lengths(const uint8_t* len, int nsyms, uint8_t* dst);
// The inverse, checked (at least one code, lengths <= kMaxLen, Kraft sum <= 1, symbols
// below `first` unused): throws std::runtime_error prefixed with `who`. Returns whether
// the code is complete (every kMaxLen-bit window decodes), which lets decoders drop
// per-symbol validity checks.
bool unpack_lengths(const uint8_t* src, int nsyms, int first, uint8_t* len, const char* who);

// Segment j of a plane of `count` symbols: [start, start + len).
void segment(size_t count, int j, size_t* start, size_t* len);

// Byte alphabet, kStreams streams: u32 sizes of streams 0..2 || the streams. Writes at
// most 8 bytes past the returned size (dst slack). Returns bytes written.
size_t encode_bytes(const uint8_t* src, size_t count, const uint8_t len[256], uint8_t* dst);
// The inverse: `size` bytes of streams (header included) into dst (count bytes). Throws
// std::runtime_error prefixed with `who` on corruption; never reads or writes out of
// bounds. `complete` as returned by unpack_lengths.
void decode_bytes(const uint8_t* src, size_t size, const uint8_t len[256], bool complete, uint8_t* dst,
                  size_t count, const char* who);

// A plane to decode with decode_bytes; `len` must stay valid during the call.
struct Job {
    const uint8_t* src;
    size_t size;
    const uint8_t* len;
    bool complete;
    uint8_t* dst;
    size_t count;
    const char* who;
};
// Several planes in one call (tables are rebuilt per plane in a reused buffer). Same
// errors as above; earlier jobs have written their dst when a later one throws.
void decode_bytes(const Job* jobs, size_t n);

// LSB-first bit writer for up to 64 buffered bits.
struct BitWriter {
    uint8_t* out;
    uint64_t buf = 0;
    unsigned bits = 0;
    explicit BitWriter(uint8_t* o) : out(o) {}
    void put(uint64_t v, unsigned n) {  // v < 2^n, bits + n <= 64
        buf |= v << bits;
        bits += n;
    }
    // Whole bytes out; stores 8 bytes at `out` (callers leave 8 bytes of slack).
    void flush() {
        for (int i = 0; i < 8; i++) out[i] = uint8_t(buf >> (8 * i));
        const unsigned nb = bits >> 3;
        out += nb;
        buf = nb == 8 ? 0 : buf >> (8 * nb);
        bits &= 7u;
    }
    // Flush and pad to a byte; returns the end of the written bytes.
    uint8_t* finish() {
        flush();
        if (bits) *out++ = uint8_t(buf);
        buf = 0;
        bits = 0;
        return out;
    }
};

}  // namespace huffman
}  // namespace modelstore
