// xordelta.cpp -- see xordelta.hpp.
#include "modelstore/xordelta.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "modelstore/huffman.hpp"
#include "modelstore/splithuff.hpp"
#include "modelstore/zerorun.hpp"

#ifdef MODELSTORE_X86_TARGETS
#include <immintrin.h>
#endif

namespace modelstore {
namespace xordelta {
namespace {

constexpr size_t kPlaneHeader = 6;  // method, constant, u32 size
enum Method : uint8_t { kRaw = 0, kSplit = 1, kConst = 2, kZrh = 3, kSplitLow = 4, kValue = 5 };

using huffman::get_u32;

using splithuff::xor_bytes;

#ifdef MODELSTORE_X86_TARGETS
// xor_split for k == 4, 16 elements a step with AVX2: XOR, gather each element's bytes by
// plane within 128-bit lanes (vpshufb), then each plane's 4-byte groups across lanes
// (vpermd), so every plane gets 8 contiguous bytes per 32 input bytes. Returns the
// elements done (a multiple of 8); the caller finishes the tail.
__attribute__((target("avx2"))) size_t xor_split4_avx2(const uint8_t* cur, const uint8_t* base, size_t count,
                                                       uint8_t* p0, uint8_t* p1, uint8_t* p2, uint8_t* p3) {
    const __m256i by_plane = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                              0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i lanes = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cur + 4 * i));
        __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + 4 * i));
        __m256i x = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_xor_si256(a, b), by_plane), lanes);
        // 64-bit lanes now hold planes 0..3, 8 bytes each
        __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p0 + i), lo);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p1 + i), _mm_unpackhi_epi64(lo, lo));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p2 + i), hi);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p3 + i), _mm_unpackhi_epi64(hi, hi));
    }
    return i;
}

bool cpu_has_avx2() {
    static const bool yes = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    }();
    return yes;
}
#endif

// planes[b][i] = (cur ^ base)[i*k + b]
void xor_split(const uint8_t* cur, const uint8_t* base, size_t count, int k, uint8_t* planes) {
    if (k == 4) {
        uint8_t* __restrict p0 = planes;
        uint8_t* __restrict p1 = planes + count;
        uint8_t* __restrict p2 = planes + 2 * count;
        uint8_t* __restrict p3 = planes + 3 * count;
        size_t i = 0;
#ifdef MODELSTORE_X86_TARGETS
        if (cpu_has_avx2()) i = xor_split4_avx2(cur, base, count, p0, p1, p2, p3);  // the loops below finish
#endif
        // 8 elements a step: gather each plane's 8 bytes in a register, one 8-byte store
        // per plane instead of 32 byte stores.
        for (; i + 8 <= count; i += 8) {
            uint64_t q[4];
            for (int j = 0; j < 4; j++) {
                uint64_t a, b;
                std::memcpy(&a, cur + 4 * i + 8 * j, 8);
                std::memcpy(&b, base + 4 * i + 8 * j, 8);
                q[j] = a ^ b;  // elements 2j (low half) and 2j + 1 (high half)
            }
            uint64_t o[4] = {0, 0, 0, 0};
            for (int j = 0; j < 4; j++)
                for (int b = 0; b < 4; b++) {
                    o[b] |= ((q[j] >> (8 * b)) & 0xFF) << (16 * j);
                    o[b] |= ((q[j] >> (32 + 8 * b)) & 0xFF) << (16 * j + 8);
                }
            std::memcpy(p0 + i, &o[0], 8);
            std::memcpy(p1 + i, &o[1], 8);
            std::memcpy(p2 + i, &o[2], 8);
            std::memcpy(p3 + i, &o[3], 8);
        }
        for (; i < count; i++) {
            uint32_t a, b;
            std::memcpy(&a, cur + 4 * i, 4);
            std::memcpy(&b, base + 4 * i, 4);
            uint32_t v = a ^ b;
            p0[i] = uint8_t(v);
            p1[i] = uint8_t(v >> 8);
            p2[i] = uint8_t(v >> 16);
            p3[i] = uint8_t(v >> 24);
        }
    } else if (k == 2) {
        uint8_t* __restrict p0 = planes;
        uint8_t* __restrict p1 = planes + count;
        for (size_t i = 0; i < count; i++) {
            uint16_t a, b;
            std::memcpy(&a, cur + 2 * i, 2);
            std::memcpy(&b, base + 2 * i, 2);
            uint16_t v = uint16_t(a ^ b);
            p0[i] = uint8_t(v);
            p1[i] = uint8_t(v >> 8);
        }
    } else if (k == 1) {
        for (size_t i = 0; i < count; i++) planes[i] = cur[i] ^ base[i];
    } else if (k == 8) {
        for (size_t i = 0; i < count; i++) {
            uint64_t a, b;
            std::memcpy(&a, cur + 8 * i, 8);
            std::memcpy(&b, base + 8 * i, 8);
            uint64_t v = a ^ b;
            for (int j = 0; j < 8; j++) planes[size_t(j) * count + i] = uint8_t(v >> (8 * j));
        }
    } else {
        for (int b = 0; b < k; b++) {
            uint8_t* __restrict p = planes + size_t(b) * count;
            for (size_t i = 0; i < count; i++) p[i] = cur[i * k + b] ^ base[i * k + b];
        }
    }
}


// dst[i] = src[i*K + b]: plane b of the elements themselves (a strided gather the
// compiler vectorizes for a constant stride).
template <int K>
void gather_plane(const uint8_t* __restrict src, size_t count, int b, uint8_t* __restrict dst) {
    const uint8_t* s = src + b;
    for (size_t i = 0; i < count; i++) dst[i] = s[i * K];
}
void value_plane(const uint8_t* src, size_t count, int k, int b, uint8_t* dst) {
    switch (k) {
        case 1: std::memcpy(dst, src, count); break;
        case 2: gather_plane<2>(src, count, b, dst); break;
        case 4: gather_plane<4>(src, count, b, dst); break;
        case 8: gather_plane<8>(src, count, b, dst); break;
        default:
            for (size_t i = 0; i < count; i++) dst[i] = src[i * size_t(k) + size_t(b)];
    }
}

// Zero bytes of a plane and whether all its bytes are equal, 8 bytes at a time.
void scan_plane(const uint8_t* p, size_t count, size_t* zeros, bool* same) {
    constexpr uint64_t lo7 = 0x7F7F7F7F7F7F7F7Full;
    const uint64_t rep = count ? uint64_t(p[0]) * 0x0101010101010101ull : 0;
    uint64_t z = 0, diff = 0;
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        uint64_t nz = ((w & lo7) + lo7) | w;  // high bit of each byte: byte != 0
        z += (((~nz & ~lo7) >> 7) * 0x0101010101010101ull) >> 56;  // sum of the 0/1 bytes (no popcnt needed)
        diff |= w ^ rep;
    }
    for (; i < count; i++) {
        z += p[i] == 0;
        diff |= p[i] ^ p[0];
    }
    *zeros = size_t(z);
    *same = count > 0 && diff == 0;
}

// Bytes holding the low `low` bits (2 or 4) of `count` elements, packed LSB first.
inline size_t low_bytes(size_t count, int low) { return (count * size_t(low) + 7) / 8; }

// dst = the low `low` bits of each byte of p, packed LSB first (element i at bit i * low).
void pack_low(const uint8_t* p, size_t count, int low, uint8_t* dst) {
    size_t i = 0;
    if (low == 4) {
        for (; i + 8 <= count; i += 8) {  // 8 bytes -> 8 nibbles
            uint64_t x;
            std::memcpy(&x, p + i, 8);
            x &= 0x0F0F0F0F0F0F0F0Full;
            x = (x | x >> 4) & 0x00FF00FF00FF00FFull;
            x = (x | x >> 8) & 0x0000FFFF0000FFFFull;
            uint32_t v = uint32_t(x | x >> 16);
            std::memcpy(dst + i / 2, &v, 4);
        }
    } else {
        for (; i + 8 <= count; i += 8) {  // 8 bytes -> 8 2-bit fields
            uint64_t x;
            std::memcpy(&x, p + i, 8);
            x &= 0x0303030303030303ull;
            x = (x | x >> 6) & 0x000F000F000F000Full;
            x = (x | x >> 12) & 0x000000FF000000FFull;
            uint16_t v = uint16_t(x | x >> 24);
            std::memcpy(dst + i / 4, &v, 2);
        }
    }
    const unsigned mask = (1u << low) - 1;
    for (size_t j = i; j < count; j++) {
        const size_t bit = j * size_t(low);
        if (bit % 8 == 0) dst[bit / 8] = 0;
        dst[bit / 8] = uint8_t(dst[bit / 8] | (p[j] & mask) << (bit % 8));
    }
}

// The inverse, in place: d[i] = d[i] << low | (element i's low bits), for d[i] < 2^(8 - low).
void widen_low(uint8_t* d, const uint8_t* packed, int low, size_t count) {
    size_t i = 0;
    if (low == 4) {
        for (; i + 8 <= count; i += 8) {
            uint32_t v;
            std::memcpy(&v, packed + i / 2, 4);
            uint64_t x = v, w;
            x = (x | x << 16) & 0x0000FFFF0000FFFFull;
            x = (x | x << 8) & 0x00FF00FF00FF00FFull;
            x = (x | x << 4) & 0x0F0F0F0F0F0F0F0Full;
            std::memcpy(&w, d + i, 8);
            w = ((w << 4) & 0xF0F0F0F0F0F0F0F0ull) | x;
            std::memcpy(d + i, &w, 8);
        }
    } else {
        for (; i + 8 <= count; i += 8) {
            uint16_t v;
            std::memcpy(&v, packed + i / 4, 2);
            uint64_t x = v, w;
            x = (x | x << 24) & 0x000000FF000000FFull;
            x = (x | x << 12) & 0x000F000F000F000Full;
            x = (x | x << 6) & 0x0303030303030303ull;
            std::memcpy(&w, d + i, 8);
            w = ((w << 2) & 0xFCFCFCFCFCFCFCFCull) | x;
            std::memcpy(d + i, &w, 8);
        }
    }
    const unsigned mask = (1u << low) - 1;
    for (; i < count; i++) {
        const size_t bit = i * size_t(low);
        d[i] = uint8_t(d[i] << low | ((packed[bit / 8] >> (bit % 8)) & mask));
    }
}

// How a dense plane is Huffman-coded: whole bytes (low == 0: method kSplit), or the high
// 8 - low bits of each byte with the low bits stored raw (kSplitLow). `size` is the
// plane's coded size; `count` when no Huffman coding saves >= 3 %.
struct HuffChoice {
    size_t size;
    int low = 0;
    uint8_t len[256] = {};
};

// Near-random low bits cost the same raw as Huffman-coded, and a code over the high bits
// alone is short enough for multi-symbol lookups: it decodes 1.5-2.5x faster (measured on
// checkpoint deltas). So the split with the most raw bits is taken unless it is larger
// than the smallest coding by over 1 % of the plane.
HuffChoice choose_huffman(const uint8_t* p, size_t count) {
    HuffChoice best;
    best.size = count;
    uint64_t freq[256];
    if (!splithuff::plane_histogram(p, count, freq)) return best;
    constexpr int kLows[3] = {4, 2, 0};
    HuffChoice cand[3];
    size_t smallest = SIZE_MAX;
    for (int c = 0; c < 3; c++) {
        const int low = kLows[c];
        uint64_t f[256] = {};
        for (int b = 0; b < 256; b++) f[b >> low] += freq[b];
        huffman::code_lengths(f, 256 >> low, cand[c].len);  // the longer symbols stay 0 (unused)
        uint64_t bits = 0;
        for (int b = 0; b < (256 >> low); b++) bits += f[b] * cand[c].len[b];
        // + the stream sizes, padding of 4 streams, and the low bits or the kSplit wrapper
        cand[c].size = splithuff::kLengths + huffman::kStreamHeader + size_t((bits + 7) / 8) + 3 +
                       (low ? low_bytes(count, low) : 2 + kPlaneHeader);
        cand[c].low = low;
        smallest = std::min(smallest, cand[c].size);
    }
    for (const HuffChoice& c : cand)
        if (c.size <= smallest + count / 100) {
            best = c;
            break;
        }
    if (best.size >= count - count / 32) best.size = count;  // saves < 3 %: raw
    return best;
}

// Writes the chosen coding of plane p to out; returns its size.
size_t encode_huffman(const uint8_t* p, size_t count, const HuffChoice& h, uint8_t* tmp, uint8_t* out) {
    if (h.low == 0) {  // a one-plane splithuff payload
        out[0] = 1;
        out[1] = 1;
        size_t inner = splithuff::encode_huffman_plane(p, count, h.len, out + 2 + kPlaneHeader);
        splithuff::put_plane_header(out + 2, 0, splithuff::kHuffman, 0, inner);
        return 2 + kPlaneHeader + inner;
    }
    const int low = h.low;
    for (size_t i = 0; i < count; i++) tmp[i] = uint8_t(p[i] >> low);
    size_t n = splithuff::encode_huffman_plane(tmp, count, h.len, out);
    pack_low(p, count, low, out + n);
    return n + low_bytes(count, low);
}

struct Scratch {
    std::vector<uint8_t> acc, tmp, base;  // base: a decoded base's planes (apply() only)
    std::vector<std::vector<uint8_t>> tmps;  // decoded Huffman planes waiting to be XORed
};
thread_local Scratch scratch;  // reused per thread: fresh 4 MiB buffers cost page faults

}  // namespace

size_t bound(size_t n, int k) {
    return 2 + size_t(k) * kPlaneHeader + n + size_t(k) * 64;
}

size_t encode(const uint8_t* cur, const uint8_t* base, size_t n, int k, uint8_t* dst, double min_gain) {
    if (k < 1 || k > 8 || n % size_t(k)) throw std::invalid_argument("xordelta: n must be a multiple of k in 1..8");
    if (n / size_t(k) > 0xFFFFFFF0u) throw std::invalid_argument("xordelta: chunk too large");
    const size_t count = n / size_t(k);
    Scratch& sc = huffman::opaque(scratch);  // reused per thread: fresh multi-MiB buffers cost page faults
    if (sc.acc.size() < n + 1) sc.acc.resize(n + 1);
    if (sc.tmp.size() < splithuff::bound(count, 1)) sc.tmp.resize(splithuff::bound(count, 1));
    uint8_t* const planes = sc.acc.data();
    uint8_t* const tmp = sc.tmp.data();
    xor_split(cur, base, count, k, planes);
    dst[0] = 1;
    dst[1] = uint8_t(k);
    uint8_t* hdr = dst + 2;
    uint8_t* out = hdr + size_t(k) * kPlaneHeader;
    for (int b = 0; b < k; b++) {
        const uint8_t* p = planes + size_t(b) * count;
        uint8_t method = kRaw, constant = 0;
        size_t size = count;
        size_t zeros = 0;
        bool same = count > 0;
        scan_plane(p, count, &zeros, &same);
        if (same) {
            method = kConst;
            constant = p[0];
            size = 0;
        } else if (count) {
            zerorun::Plan plan;
            bool sparse = zeros * 4 >= count;  // sparse enough that zero runs may pay
            if (sparse) plan = zerorun::plan(p, count);
            // A byte Huffman code spends >= 1 bit a byte: below that, zero runs win outright.
            HuffChoice h;
            if (sparse && plan.size < count / 8)
                h.size = count;
            else
                h = choose_huffman(p, count);
            size_t best = std::min(h.size, count);
            // Prefer the 4-stream Huffman decoders unless zero runs save >= 3 %.
            if (sparse && plan.size < best - best / 32) {
                method = kZrh;
                size = zerorun::encode(p, count, plan, out);
            }
            if (method != kZrh && h.size < count && double(count - h.size) >= min_gain * double(count)) {
                method = h.low ? kSplitLow : kSplit;
                constant = uint8_t(h.low);
                size = encode_huffman(p, count, h, tmp, out);
            }
        }
        if (method == kRaw && size) {
            // An incompressible plane is stored as the chunk's own bytes rather than the
            // XOR (the same size): a reader then needs no record below this one for it.
            method = kValue;
            value_plane(cur, count, k, b, out);
        }
        splithuff::put_plane_header(hdr, b, method, constant, size);
        out += size;
    }
    splithuff::trim_scratch(sc.acc);
    splithuff::trim_scratch(sc.tmp);
    return size_t(out - dst);
}

namespace {

// One coded plane of a record, after parsing: what to XOR into the accumulator.
struct Part {
    uint8_t method;  // splithuff::PlaneMethod, kZrh or kSplitLow
    uint8_t constant;  // kSplitLow: the low bits stored raw
    const uint8_t* data;
    size_t size;  // kSplitLow: of the Huffman part (code lengths || streams)
    const uint8_t* low = nullptr;  // kSplitLow: the packed low bits
};

// The k planes of a splithuff record (a chain's root) or of an xor-planes record, checked
// (header, sizes, no trailing bytes) and unwrapped: a kSplit plane is a one-plane
// splithuff payload whose own method is taken; a kSplitLow plane's parts are located.
void parse_record(const uint8_t* src, size_t size, int k, size_t count, bool root, Part* parts) {
    const char* who = root ? "splithuff" : "xordelta";
    auto fail = [&](const char* what) { throw std::runtime_error(std::string(who) + ": " + what); };
    if (size < 2 + size_t(k) * kPlaneHeader) fail("truncated header");
    const uint8_t* hdr = src + 2;
    const uint8_t* data = hdr + size_t(k) * kPlaneHeader;
    const uint8_t* end = src + size;
    for (int b = 0; b < k; b++) {
        uint8_t method = hdr[b * kPlaneHeader], constant = hdr[b * kPlaneHeader + 1];
        size_t psize = get_u32(hdr + b * kPlaneHeader + 2);
        if (psize > size_t(end - data)) fail("plane overruns the payload");
        Part part{method, constant, data, psize};
        if (!root && method == kSplit) {
            if (psize < 2 || data[0] != 1) throw std::runtime_error("splithuff: unknown payload version");
            if (data[1] != 1) throw std::runtime_error("splithuff: bad plane count");
            if (psize < 2 + kPlaneHeader) throw std::runtime_error("splithuff: truncated header");
            const size_t inner = get_u32(data + 4);
            if (inner > psize - 2 - kPlaneHeader) throw std::runtime_error("splithuff: plane overruns the payload");
            if (inner < psize - 2 - kPlaneHeader) throw std::runtime_error("splithuff: trailing bytes in payload");
            part = Part{data[2], data[3], data + 2 + kPlaneHeader, inner};
            if (part.method > kConst) throw std::runtime_error("splithuff: unknown plane method");
        } else if (!root && method == kSplitLow) {
            if (constant != 2 && constant != 4) fail("bad low-bit count");
            const size_t lb = low_bytes(count, constant);
            if (psize < splithuff::kLengths + huffman::kStreamHeader + lb) fail("truncated split plane");
            // symbols from 2^(8 - low) on must be unused: their high bits would not fit
            for (size_t i = (size_t(256) >> constant) / 2; i < splithuff::kLengths; i++)
                if (data[i]) fail("bad code length");
            part = Part{method, constant, data, psize - lb, data + psize - lb};
        } else if (method > (root ? kConst : kValue)) {
            fail("unknown plane method");
        }
        if ((part.method == kRaw || part.method == kValue) && part.size != count) fail("raw plane has the wrong size");
        if (part.method == kConst && part.size) fail("constant plane with data");
        parts[b] = part;
        data += psize;
    }
    if (data != end) fail("trailing bytes in payload");
}

// dst = (init ? dst : 0) ^ srcs[0] ^ ... ^ (c repeated), in L1-sized blocks so dst is
// read and written once however many sources there are.
void xor_many(uint8_t* dst, bool init, const uint8_t* const* srcs, size_t m, uint8_t c, size_t count) {
    constexpr size_t kBlock = 4096;
    for (size_t at = 0; at < count; at += kBlock) {
        const size_t n = std::min(kBlock, count - at);
        uint8_t* d = dst + at;
        size_t first = 0;
        if (!init) {
            if (m) {
                std::memcpy(d, srcs[0] + at, n);
                first = 1;
            } else {
                std::memset(d, 0, n);
            }
        }
        for (size_t j = first; j < m; j++) xor_bytes(d, srcs[j] + at, n);
        if (c)
            for (size_t i = 0; i < n; i++) d[i] ^= c;
    }
}

void apply_impl(const uint8_t* root, size_t root_size, const uint8_t* const* payloads, const size_t* sizes,
                size_t m, uint8_t* out, size_t n) {
    if (m == 0 && !root) return;
    int k = 0;
    for (size_t j = 0; j < m; j++) {
        if (sizes[j] < 2 || payloads[j][0] != 1) throw std::runtime_error("xordelta: unknown payload version");
        int kj = payloads[j][1];
        if (kj < 1 || kj > 8 || n % size_t(kj)) throw std::runtime_error("xordelta: bad plane count");
        if (k && kj != k) throw std::runtime_error("xordelta: links disagree on the plane count");
        k = kj;
    }
    if (root) {
        if (root_size < 2 || root[0] != 1) throw std::runtime_error("splithuff: unknown payload version");
        if (!k) k = root[1];
        if (root[1] != k) throw std::runtime_error("xordelta: root and links disagree on the plane count");
        if (k < 1 || k > 8 || n % size_t(k)) throw std::runtime_error("splithuff: bad plane count");
    }
    const size_t count = n / size_t(k);
    // Every record is parsed and checked before any decoding.
    const size_t nrec = m + (root ? 1 : 0);
    std::vector<Part> parts(nrec * size_t(k));
    if (root) parse_record(root, root_size, k, count, true, parts.data() + m * size_t(k));
    for (size_t j = 0; j < m; j++) parse_record(payloads[j], sizes[j], k, count, false, parts.data() + j * size_t(k));

    Scratch& sc = huffman::opaque(scratch);
    if (sc.acc.size() < n) sc.acc.resize(n);
    uint8_t* acc = sc.acc.data();
    // Plane b of every record: Huffman planes decode (the first straight into the
    // accumulator, the others into buffers; all planes of all records in one batch), then
    // raw planes, decoded planes and constants XOR in one blocked pass; zero-run planes
    // XOR last, touching only their nonzero bytes.
    std::vector<splithuff::HuffPlane> huff;
    std::vector<std::pair<uint8_t*, const Part*>> widen;  // kSplitLow planes: low bits to add back
    std::vector<std::vector<const uint8_t*>> srcs;
    srcs.resize(size_t(k));
    std::vector<uint8_t> consts(size_t(k), 0), filled(size_t(k), 0);
    // Links come top first. Plane b's value is fixed by its first kValue link (or the
    // root): the records below it are not read for that plane.
    std::vector<size_t> top(size_t(k), nrec);
    bool any_value = false, all_value = true;
    for (int b = 0; b < k; b++) {
        for (size_t r = 0; r < m && top[size_t(b)] == nrec; r++)
            if (parts[r * size_t(k) + size_t(b)].method == kValue) top[size_t(b)] = r;
        if (root && top[size_t(b)] == nrec) top[size_t(b)] = m;
        any_value |= top[size_t(b)] < nrec;
        all_value &= top[size_t(b)] < nrec;
    }
    // Without a root, `out` holds the decoded base: it is XORed into (no value planes),
    // else its planes join as raw sources where no link gives the value.
    const bool xor_merge = !root && !any_value;
    if (!root && any_value && !all_value) {
        if (sc.base.size() < n) sc.base.resize(n);
        splithuff::split(out, count, k, sc.base.data());
        for (int b = 0; b < k; b++)
            if (top[size_t(b)] == nrec) srcs[size_t(b)].push_back(sc.base.data() + size_t(b) * count);
    }
    size_t tmps = 0;
    for (int b = 0; b < k; b++) {
        uint8_t* a = acc + size_t(b) * count;
        for (size_t r = 0; r < nrec && r <= top[size_t(b)]; r++) {
            const Part& p = parts[r * size_t(k) + size_t(b)];
            if (p.method == kRaw || p.method == kValue) {
                srcs[b].push_back(p.data);
            } else if (p.method == kConst) {
                consts[b] ^= p.constant;
            } else if (p.method == kSplit || p.method == kSplitLow) {
                uint8_t* dst = a;
                if (filled[b]) {
                    if (sc.tmps.size() <= tmps) sc.tmps.emplace_back();
                    if (sc.tmps[tmps].size() < count) sc.tmps[tmps].resize(count);
                    dst = sc.tmps[tmps++].data();
                    srcs[b].push_back(dst);
                }
                huff.push_back(splithuff::HuffPlane{p.data, p.size, dst, count});
                if (p.method == kSplitLow) widen.push_back({dst, &p});
                filled[b] = 1;
            }
        }
    }
    splithuff::decode_huffman(huff.data(), huff.size());
    for (const auto& w : widen) widen_low(w.first, w.second->low, w.second->constant, count);
    for (int b = 0; b < k; b++) {
        uint8_t* a = acc + size_t(b) * count;
        xor_many(a, filled[b], srcs[b].data(), srcs[b].size(), consts[b], count);
        for (size_t r = 0; r < nrec && r <= top[size_t(b)]; r++) {
            const Part& p = parts[r * size_t(k) + size_t(b)];
            if (p.method == kZrh) zerorun::apply(p.data, p.size, a, count);
        }
    }
    splithuff::merge(acc, count, k, out, xor_merge);
    splithuff::trim_scratch(sc.acc);
    splithuff::trim_scratch(sc.base);
    for (auto& t : sc.tmps) splithuff::trim_scratch(t);
}

}  // namespace

void apply(const uint8_t* const* payloads, const size_t* sizes, size_t m, uint8_t* out, size_t n) {
    apply_impl(nullptr, 0, payloads, sizes, m, out, n);
}

void decode_chain(const uint8_t* root, size_t root_size, const uint8_t* const* payloads, const size_t* sizes,
                  size_t m, uint8_t* out, size_t n) {
    apply_impl(root, root_size, payloads, sizes, m, out, n);
}

}  // namespace xordelta
}  // namespace modelstore
