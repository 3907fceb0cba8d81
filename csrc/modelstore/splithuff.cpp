// splithuff.cpp -- see splithuff.hpp.
#include "modelstore/splithuff.hpp"

#include "modelstore/huffman.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace modelstore {
namespace splithuff {
namespace {

using huffman::get_u32;

// De-interleave n/k elements of k bytes into k contiguous planes (and back). Fixed-k
// specialisations let the compiler keep the loop in registers and vectorise it.
template <int K>
void split_k(const uint8_t* src, size_t count, uint8_t* planes) {
    for (int b = 0; b < K; b++) {  // one pass per plane: contiguous writes, vectorisable loads
        uint8_t* __restrict p = planes + b * count;
        const uint8_t* __restrict q = src + b;
        for (size_t i = 0; i < count; i++) p[i] = q[i * K];
    }
}
template <>
void split_k<4>(const uint8_t* src, size_t count, uint8_t* planes) {
    uint8_t* __restrict p0 = planes;
    uint8_t* __restrict p1 = planes + count;
    uint8_t* __restrict p2 = planes + 2 * count;
    uint8_t* __restrict p3 = planes + 3 * count;
    for (size_t i = 0; i < count; i++) {
        uint32_t v;
        std::memcpy(&v, src + 4 * i, 4);
        p0[i] = uint8_t(v);
        p1[i] = uint8_t(v >> 8);
        p2[i] = uint8_t(v >> 16);
        p3[i] = uint8_t(v >> 24);
    }
}
template <>
void split_k<2>(const uint8_t* src, size_t count, uint8_t* planes) {
    uint8_t* __restrict p0 = planes;
    uint8_t* __restrict p1 = planes + count;
    for (size_t i = 0; i < count; i++) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        p0[i] = uint8_t(v);
        p1[i] = uint8_t(v >> 8);
    }
}
// Interleave back (merge) or XOR the interleaved planes into dst (X); pl[b] is plane b.
template <int K, bool X>
void merge_k(const uint8_t* const* pl, size_t count, uint8_t* dst) {
    for (size_t i = 0; i < count; i++)
        for (int b = 0; b < K; b++) {
            uint8_t v = pl[b][i];
            dst[i * K + b] = X ? uint8_t(dst[i * K + b] ^ v) : v;
        }
}
template <class W, bool X>
inline void store_word(uint8_t* p, W v) {
    if (X) {
        W o;
        std::memcpy(&o, p, sizeof o);
        v ^= o;
    }
    std::memcpy(p, &v, sizeof v);
}
template <bool X>
void merge4(const uint8_t* const* pl, size_t count, uint8_t* dst) {
    const uint8_t* __restrict p0 = pl[0];
    const uint8_t* __restrict p1 = pl[1];
    const uint8_t* __restrict p2 = pl[2];
    const uint8_t* __restrict p3 = pl[3];
    for (size_t i = 0; i < count; i++)
        store_word<uint32_t, X>(dst + 4 * i, uint32_t(p0[i]) | uint32_t(p1[i]) << 8 | uint32_t(p2[i]) << 16 |
                                                 uint32_t(p3[i]) << 24);
}
template <bool X>
void merge2(const uint8_t* const* pl, size_t count, uint8_t* dst) {
    const uint8_t* __restrict p0 = pl[0];
    const uint8_t* __restrict p1 = pl[1];
    for (size_t i = 0; i < count; i++) store_word<uint16_t, X>(dst + 2 * i, uint16_t(p0[i] | p1[i] << 8));
}
template <bool X>
void merge_ptrs(const uint8_t* const* pl, size_t count, int k, uint8_t* dst) {
    switch (k) {
        case 1:
            if (X)
                xor_bytes(dst, pl[0], count);
            else
                std::memcpy(dst, pl[0], count);
            break;
        case 2: merge2<X>(pl, count, dst); break;
        case 4: merge4<X>(pl, count, dst); break;
        case 8: merge_k<8, X>(pl, count, dst); break;
        default:
            for (size_t i = 0; i < count; i++)
                for (int b = 0; b < k; b++) {
                    uint8_t v = pl[b][i];
                    dst[i * size_t(k) + b] = X ? uint8_t(dst[i * size_t(k) + b] ^ v) : v;
                }
    }
}
template <bool X>
void merge_any(const uint8_t* planes, size_t count, int k, uint8_t* dst) {
    const uint8_t* pl[8];
    for (int b = 0; b < k; b++) pl[b] = planes + size_t(b) * count;
    merge_ptrs<X>(pl, count, k, dst);
}
void split_any(const uint8_t* src, size_t count, int k, uint8_t* planes) {
    switch (k) {
        case 2: split_k<2>(src, count, planes); break;
        case 4: split_k<4>(src, count, planes); break;
        case 8: split_k<8>(src, count, planes); break;
        default:
            for (size_t i = 0; i < count; i++)
                for (int b = 0; b < k; b++) planes[b * count + i] = src[i * k + b];
    }
}

// Byte histogram of plane `s` (stride k), with four tables to break store dependencies.
void histogram(const uint8_t* src, size_t count, int k, int s, uint64_t out[256]) {
    uint32_t h[4][256] = {};
    const uint8_t* p = src + s;
    size_t i = 0;
    // Flush partial counts every 2^31 elements so uint32 never overflows.
    while (i < count) {
        size_t end = std::min(count, i + (size_t(1) << 31));
        for (; i + 4 <= end; i += 4) {
            h[0][p[(i + 0) * k]]++;
            h[1][p[(i + 1) * k]]++;
            h[2][p[(i + 2) * k]]++;
            h[3][p[(i + 3) * k]]++;
        }
        for (; i < end; i++) h[0][p[i * k]]++;
        for (int b = 0; b < 256; b++) {
            out[b] += uint64_t(h[0][b]) + h[1][b] + h[2][b] + h[3][b];
            h[0][b] = h[1][b] = h[2][b] = h[3][b] = 0;
        }
    }
}

void decode_plane_huff(const uint8_t* src, size_t size, uint8_t* dst, size_t count) {
    if (size < kLengths + huffman::kStreamHeader) throw std::runtime_error("splithuff: truncated code table");
    uint8_t len[256];
    bool complete = huffman::unpack_lengths(src, 256, 0, len, "splithuff");
    huffman::decode_bytes(src + kLengths, size - kLengths, len, complete, dst, count, "splithuff");
}

thread_local std::vector<uint8_t> plane_scratch;  // reused: fresh multi-MiB buffers cost page faults

}  // namespace

bool plane_histogram(const uint8_t* plane, size_t count, uint64_t freq[256]) {
    std::fill(freq, freq + 256, 0);
    // Decide from a strided sample first: a near-random plane (mantissa bytes) is stored
    // raw without a full histogram.
    constexpr size_t kSampleStride = 16;
    if (count >= 64 * 1024) {
        histogram(plane, count / kSampleStride, int(kSampleStride), 0, freq);
        uint8_t slen[256];
        huffman::code_lengths(freq, 256, slen);
        uint64_t sbits = 0, sn = 0;
        for (int b = 0; b < 256; b++) {
            sbits += freq[b] * slen[b];
            sn += freq[b];
        }
        bool many = false;
        for (int b = 0, d = 0; b < 256; b++) d += freq[b] != 0, many = d > 1;
        if (many && sbits * 33 > sn * 8 * 32) return false;  // the sample saves < 3 %
        std::fill(freq, freq + 256, 0);
    }
    histogram(plane, count, 1, 0, freq);
    return true;
}

size_t encode_huffman_plane(const uint8_t* plane, size_t count, const uint8_t len[256], uint8_t* dst) {
    huffman::pack_lengths(len, 256, dst);
    return kLengths + huffman::encode_bytes(plane, count, len, dst + kLengths);
}

size_t bound(size_t n, int k) { return 2 + size_t(k) * (kPlaneHeader + kLengths + 64) + n; }

void xor_bytes(uint8_t* __restrict dst, const uint8_t* __restrict src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {  // 8 bytes at a time (vectorised by the compiler)
        uint64_t a, b;
        std::memcpy(&a, dst + i, 8);
        std::memcpy(&b, src + i, 8);
        a ^= b;
        std::memcpy(dst + i, &a, 8);
    }
    for (; i < n; i++) dst[i] ^= src[i];
}

void split(const uint8_t* src, size_t count, int k, uint8_t* planes) { split_any(src, count, k, planes); }
void merge(const uint8_t* planes, size_t count, int k, uint8_t* dst, bool xor_into) {
    if (xor_into)
        merge_any<true>(planes, count, k, dst);
    else
        merge_any<false>(planes, count, k, dst);
}

size_t encode(const uint8_t* src, size_t n, int k, uint8_t* dst) {
    if (k < 1 || k > 8 || n % size_t(k)) throw std::invalid_argument("splithuff: n must be a multiple of k in 1..8");
    if (n / size_t(k) > 0xFFFFFFF0u) throw std::invalid_argument("splithuff: chunk too large");
    const size_t count = n / size_t(k);
    std::vector<uint8_t>& planes = huffman::opaque(plane_scratch);  // every byte is written by split()
    if (k > 1) {
        if (planes.size() < n) planes.resize(n);
        split_any(src, count, k, planes.data());
    }
    const uint8_t* base = k > 1 ? planes.data() : src;
    dst[0] = 1;
    dst[1] = uint8_t(k);
    uint8_t* hdr = dst + 2;
    uint8_t* out = hdr + size_t(k) * kPlaneHeader;
    for (int s = 0; s < k; s++) {
        const uint8_t* plane = base + size_t(s) * count;
        uint64_t freq[256];
        if (!plane_histogram(plane, count, freq)) {  // near-random (mantissa bytes): raw
            std::memcpy(out, plane, count);
            put_plane_header(hdr, s, kRaw, 0, count);
            out += count;
            continue;
        }
        int distinct = 0, only = 0;
        for (int b = 0; b < 256; b++)
            if (freq[b]) {
                distinct++;
                only = b;
            }
        uint8_t method = kRaw, constant = 0;
        size_t size = count;
        if (count == 0) {
            size = 0;
        } else if (distinct == 1) {
            method = kConst;
            constant = uint8_t(only);
            size = 0;
        } else {
            uint8_t len[256];
            huffman::code_lengths(freq, 256, len);
            uint64_t bits = 0;
            for (int b = 0; b < 256; b++) bits += freq[b] * len[b];
            size_t huff = kLengths + 16 + size_t((bits + 7) / 8);
            if (huff < count - count / 32) {  // keep Huffman only when it saves >= ~3 %
                method = kHuffman;
                size = encode_huffman_plane(plane, count, len, out);
            }
        }
        if (method == kRaw && size) std::memcpy(out, plane, count);
        put_plane_header(hdr, s, method, constant, size);
        out += size;
    }
    trim_scratch(planes);
    return size_t(out - dst);
}

void decode_plane(uint8_t method, uint8_t constant, const uint8_t* data, size_t size, uint8_t* dst, size_t count,
                  bool xor_into, uint8_t* tmp) {
    switch (method) {
        case kRaw:
            if (size != count) throw std::runtime_error("splithuff: raw plane has the wrong size");
            if (!count) return;
            if (xor_into)
                xor_bytes(dst, data, count);
            else
                std::memcpy(dst, data, count);
            return;
        case kHuffman:
            if (xor_into) {
                decode_plane_huff(data, size, tmp, count);
                xor_bytes(dst, tmp, count);
            } else {
                decode_plane_huff(data, size, dst, count);
            }
            return;
        case kConst:
            if (size) throw std::runtime_error("splithuff: constant plane with data");
            if (!xor_into)
                std::memset(dst, constant, count);
            else if (constant)
                for (size_t i = 0; i < count; i++) dst[i] ^= constant;
            return;
        default:
            throw std::runtime_error("splithuff: unknown plane method");
    }
}

void decode_huffman(const HuffPlane* planes, size_t n) {
    std::vector<uint8_t> lens(n * 256);
    std::vector<huffman::Job> jobs(n);
    for (size_t j = 0; j < n; j++) {
        const HuffPlane& p = planes[j];
        if (p.size < kLengths + huffman::kStreamHeader) throw std::runtime_error("splithuff: truncated code table");
        uint8_t* len = lens.data() + j * 256;
        bool complete = huffman::unpack_lengths(p.data, 256, 0, len, "splithuff");
        jobs[j] = huffman::Job{p.data + kLengths, p.size - kLengths, len, complete, p.dst, p.count, "splithuff"};
    }
    huffman::decode_bytes(jobs.data(), n);
}

namespace {

// Parse a payload and decode its planes: plane s ends up at pl[s], which is the payload
// itself for a raw plane when `in_place` (no copy) and planes + s * count otherwise.
void decode_planes_into(const uint8_t* src, size_t size, int k, size_t count, uint8_t* planes, bool in_place,
                        const uint8_t** pl) {
    if (size < 2 || src[0] != 1) throw std::runtime_error("splithuff: unknown payload version");
    if (src[1] != k) throw std::runtime_error("splithuff: bad plane count");
    if (size < 2 + size_t(k) * kPlaneHeader) throw std::runtime_error("splithuff: truncated header");
    const uint8_t* hdr = src + 2;
    const uint8_t* data = hdr + size_t(k) * kPlaneHeader;
    const uint8_t* end = src + size;
    HuffPlane huff[8];
    size_t nh = 0;
    for (int s = 0; s < k; s++) {
        size_t psize = get_u32(hdr + s * kPlaneHeader + 2);
        if (psize > size_t(end - data)) throw std::runtime_error("splithuff: plane overruns the payload");
        uint8_t* dst = planes + size_t(s) * count;
        pl[s] = dst;
        const uint8_t method = hdr[s * kPlaneHeader];
        if (method == kHuffman) {
            huff[nh++] = HuffPlane{data, psize, dst, count};
        } else if (method == kRaw && in_place) {
            if (psize != count) throw std::runtime_error("splithuff: raw plane has the wrong size");
            pl[s] = data;
        } else {
            decode_plane(method, hdr[s * kPlaneHeader + 1], data, psize, dst, count, false, nullptr);
        }
        data += psize;
    }
    if (data != end) throw std::runtime_error("splithuff: trailing bytes in payload");
    decode_huffman(huff, nh);
}

}  // namespace

void decode_planes(const uint8_t* src, size_t size, int k, size_t count, uint8_t* planes) {
    const uint8_t* pl[8];
    decode_planes_into(src, size, k, count, planes, false, pl);
}

void decode(const uint8_t* src, size_t size, uint8_t* dst, size_t n) {
    if (size < 2 || src[0] != 1) throw std::runtime_error("splithuff: unknown payload version");
    const int k = src[1];
    if (k < 1 || k > 8 || n % size_t(k)) throw std::runtime_error("splithuff: bad plane count");
    const size_t count = n / size_t(k);
    if (k == 1) return decode_planes(src, size, 1, count, dst);
    std::vector<uint8_t>& planes = huffman::opaque(plane_scratch);  // decoded planes, merged once
    if (planes.size() < n) planes.resize(n);
    // raw planes (the mantissa bytes) are merged straight from the payload
    const uint8_t* pl[8];
    decode_planes_into(src, size, k, count, planes.data(), true, pl);
    merge_ptrs<false>(pl, count, k, dst);
    trim_scratch(planes);
}

}  // namespace splithuff
}  // namespace modelstore
