// splithuff.cpp -- see splithuff.hpp.
#include "modelstore/splithuff.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <queue>
#include <vector>

namespace modelstore {
namespace splithuff {
namespace {

constexpr size_t kPlaneHeader = 6;  // method, constant, u32 size
constexpr size_t kLengths = 128;    // 256 code lengths, 4 bits each

void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
uint32_t get_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

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
template <int K>
void merge_k(const uint8_t* planes, size_t count, uint8_t* dst) {
    for (size_t i = 0; i < count; i++)
        for (int b = 0; b < K; b++) dst[i * K + b] = planes[b * count + i];
}
template <>
void merge_k<4>(const uint8_t* planes, size_t count, uint8_t* dst) {
    const uint8_t* __restrict p0 = planes;
    const uint8_t* __restrict p1 = planes + count;
    const uint8_t* __restrict p2 = planes + 2 * count;
    const uint8_t* __restrict p3 = planes + 3 * count;
    for (size_t i = 0; i < count; i++) {
        uint32_t v = uint32_t(p0[i]) | uint32_t(p1[i]) << 8 | uint32_t(p2[i]) << 16 | uint32_t(p3[i]) << 24;
        std::memcpy(dst + 4 * i, &v, 4);
    }
}
template <>
void merge_k<2>(const uint8_t* planes, size_t count, uint8_t* dst) {
    const uint8_t* __restrict p0 = planes;
    const uint8_t* __restrict p1 = planes + count;
    for (size_t i = 0; i < count; i++) {
        uint16_t v = uint16_t(p0[i] | p1[i] << 8);
        std::memcpy(dst + 2 * i, &v, 2);
    }
}
void split(const uint8_t* src, size_t count, int k, uint8_t* planes) {
    switch (k) {
        case 2: split_k<2>(src, count, planes); break;
        case 4: split_k<4>(src, count, planes); break;
        case 8: split_k<8>(src, count, planes); break;
        default:
            for (size_t i = 0; i < count; i++)
                for (int b = 0; b < k; b++) planes[b * count + i] = src[i * k + b];
    }
}
void merge(const uint8_t* planes, size_t count, int k, uint8_t* dst) {
    switch (k) {
        case 2: merge_k<2>(planes, count, dst); break;
        case 4: merge_k<4>(planes, count, dst); break;
        case 8: merge_k<8>(planes, count, dst); break;
        default:
            for (size_t i = 0; i < count; i++)
                for (int b = 0; b < k; b++) dst[i * k + b] = planes[b * count + i];
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

// Huffman code lengths for the histogram, limited to kMaxLen by flattening the
// frequencies until the tree fits (cheap, and near-optimal for byte alphabets).
void code_lengths(const uint64_t freq_in[256], uint8_t len[256]) {
    std::vector<uint64_t> freq(freq_in, freq_in + 256);
    for (int attempt = 0;; attempt++) {
        std::fill(len, len + 256, 0);
        struct Node {
            uint64_t w;
            int left, right;
        };
        std::vector<Node> nodes;
        using Item = std::pair<uint64_t, int>;
        std::priority_queue<Item, std::vector<Item>, std::greater<Item>> pq;
        for (int s = 0; s < 256; s++) {
            if (freq[s]) {
                nodes.push_back({freq[s], -1 - s, -1});
                pq.push({freq[s], int(nodes.size()) - 1});
            }
        }
        if (nodes.size() == 1) {
            len[-1 - nodes[0].left] = 1;
            return;
        }
        while (pq.size() > 1) {
            auto a = pq.top();
            pq.pop();
            auto b = pq.top();
            pq.pop();
            nodes.push_back({a.first + b.first, a.second, b.second});
            pq.push({a.first + b.first, int(nodes.size()) - 1});
        }
        // Depth of every leaf, iteratively from the root.
        int maxlen = 0;
        std::vector<std::pair<int, int>> stack{{int(nodes.size()) - 1, 0}};
        while (!stack.empty()) {
            auto [idx, depth] = stack.back();
            stack.pop_back();
            const Node& nd = nodes[idx];
            if (nd.left < 0) {
                len[-1 - nd.left] = uint8_t(std::max(depth, 1));
                maxlen = std::max(maxlen, depth);
            } else {
                stack.push_back({nd.left, depth + 1});
                stack.push_back({nd.right, depth + 1});
            }
        }
        if (maxlen <= kMaxLen) return;
        for (auto& f : freq)
            if (f) f = (f >> 1) | 1;  // flatten and retry; terminates: all-equal fits in 8 bits
    }
}

// Canonical codes, bit-reversed for LSB-first emission.
void canonical_codes(const uint8_t len[256], uint16_t code[256]) {
    int count[kMaxLen + 1] = {};
    for (int s = 0; s < 256; s++) count[len[s]]++;
    count[0] = 0;
    int next[kMaxLen + 2] = {};
    int c = 0;
    for (int l = 1; l <= kMaxLen; l++) {
        c = (c + count[l - 1]) << 1;
        next[l] = c;
    }
    for (int s = 0; s < 256; s++) {
        int l = len[s];
        if (!l) continue;
        uint32_t v = uint32_t(next[l]++);
        uint32_t r = 0;
        for (int b = 0; b < l; b++) r |= ((v >> b) & 1u) << (l - 1 - b);
        code[s] = uint16_t(r);
    }
}

// One segment of a plane as an LSB-first bit stream; returns bytes written.
size_t encode_segment(const uint8_t* p, size_t count, const uint8_t len[256], const uint16_t code[256], uint8_t* out0) {
    uint8_t* out = out0;
    uint64_t buf = 0;
    unsigned bits = 0;
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {  // 4 symbols <= 48 bits: a 64-bit buffer never overflows
        for (int j = 0; j < 4; j++) {
            uint8_t sym = p[i + j];
            buf |= uint64_t(code[sym]) << bits;
            bits += len[sym];
        }
        std::memcpy(out, &buf, 8);  // dst has slack (see bound())
        out += bits >> 3;
        buf >>= (bits & ~7u);
        bits &= 7u;
    }
    for (; i < count; i++) {
        uint8_t sym = p[i];
        buf |= uint64_t(code[sym]) << bits;
        bits += len[sym];
        while (bits >= 8) {
            *out++ = uint8_t(buf);
            buf >>= 8;
            bits -= 8;
        }
    }
    if (bits) *out++ = uint8_t(buf);
    return size_t(out - out0);
}

constexpr int kSegments = 4;  // independent bit streams per plane, decoded interleaved (ILP)
constexpr size_t kSegHeader = 4 * (kSegments - 1);

size_t segment_len(size_t count, int j) {
    size_t per = (count + kSegments - 1) / kSegments;
    size_t start = std::min(count, per * size_t(j));
    return std::min(count, start + per) - start;
}

// Plane layout: 128 bytes of code lengths || u32 sizes of segments 0..2 || 4 bit streams.
size_t encode_plane_huff(const uint8_t* plane, size_t count, const uint8_t len[256], uint8_t* dst) {
    uint16_t code[256] = {};
    canonical_codes(len, code);
    for (int i = 0; i < 128; i++) dst[i] = uint8_t(len[2 * i] | (len[2 * i + 1] << 4));
    uint8_t* sizes = dst + kLengths;
    uint8_t* out = sizes + kSegHeader;
    size_t start = 0;
    for (int j = 0; j < kSegments; j++) {
        size_t m = segment_len(count, j);
        size_t w = encode_segment(plane + start, m, len, code, out);
        if (j < kSegments - 1) put_u32(sizes + 4 * j, uint32_t(w));
        out += w;
        start += m;
    }
    return size_t(out - dst);
}

struct Stream {
    std::vector<uint8_t> bytes;  // the segment's bit stream plus 16 bytes of zero padding
    size_t size = 0;
    uint64_t pos = 0;
    uint8_t* out = nullptr;
    size_t count = 0;
};

inline void decode_tail(Stream& st, size_t from, const uint16_t* table) {
    const uint64_t mask = (1u << kMaxLen) - 1;
    for (size_t i = from; i < st.count; i++) {
        if ((st.pos >> 3) > st.size + 8) throw std::runtime_error("splithuff: bit stream overrun");
        uint64_t buf;
        std::memcpy(&buf, st.bytes.data() + (st.pos >> 3), 8);
        uint16_t e = table[(buf >> (st.pos & 7)) & mask];
        unsigned l = e >> 8;
        if (!l) throw std::runtime_error("splithuff: invalid code");
        st.out[i] = uint8_t(e);
        st.pos += l;
    }
    if (st.pos > uint64_t(st.size) * 8) throw std::runtime_error("splithuff: bit stream overrun");
}

void decode_plane_huff(const uint8_t* src, size_t size, uint8_t* dst, size_t count) {
    if (size < kLengths + kSegHeader) throw std::runtime_error("splithuff: truncated code table");
    uint8_t len[256];
    for (int i = 0; i < 128; i++) {
        len[2 * i] = src[i] & 15;
        len[2 * i + 1] = src[i] >> 4;
    }
    // Kraft check: a corrupt table must not produce an ambiguous decoder.
    uint64_t kraft = 0;
    int used = 0;
    for (int i = 0; i < 256; i++)
        if (len[i]) {
            if (len[i] > kMaxLen) throw std::runtime_error("splithuff: bad code length");
            kraft += uint64_t(1) << (kMaxLen - len[i]);
            used++;
        }
    if (used == 0 || kraft > (uint64_t(1) << kMaxLen)) throw std::runtime_error("splithuff: bad code table");
    uint16_t code[256] = {};
    canonical_codes(len, code);
    // table[next 12 bits] = symbol | length << 8; length 0 marks an invalid code.
    std::vector<uint16_t> table(size_t(1) << kMaxLen, 0);
    for (int sym = 0; sym < 256; sym++) {
        int l = len[sym];
        if (!l) continue;
        for (uint32_t hi = 0; hi < (1u << (kMaxLen - l)); hi++) table[code[sym] | (hi << l)] = uint16_t(sym | (l << 8));
    }
    const uint8_t* data = src + kLengths + kSegHeader;
    size_t left = size - kLengths - kSegHeader;
    Stream st[kSegments];
    size_t start = 0;
    for (int j = 0; j < kSegments; j++) {
        size_t w = j < kSegments - 1 ? get_u32(src + kLengths + 4 * j) : left;
        if (w > left) throw std::runtime_error("splithuff: segment overruns the plane");
        st[j].bytes.assign(w + 16, 0);
        if (w) std::memcpy(st[j].bytes.data(), data, w);
        st[j].size = w;
        st[j].count = segment_len(count, j);
        st[j].out = dst + start;
        start += st[j].count;
        data += w;
        left -= w;
    }
    const uint64_t mask = (1u << kMaxLen) - 1;
    const uint16_t* tb = table.data();
    // Two-symbol table: a 12-bit window often holds two short codes (exponent planes
    // average ~3 bits a symbol), so one lookup yields 1 or 2 symbols.
    // entry = sym1 | sym2 << 8 | bits << 16 | count << 24
    std::vector<uint32_t> table2(size_t(1) << kMaxLen, 0);
    for (uint32_t w = 0; w < (1u << kMaxLen); w++) {
        uint16_t e1 = tb[w];
        unsigned l1 = e1 >> 8;
        if (!l1) continue;  // invalid code: entry 0 (0 bits) is caught below
        uint16_t e2 = tb[w >> l1];
        unsigned l2 = e2 >> 8;
        if (l2 && l1 + l2 <= unsigned(kMaxLen))
            table2[w] = uint32_t(e1 & 255) | uint32_t(e2 & 255) << 8 | (l1 + l2) << 16 | 2u << 24;
        else
            table2[w] = uint32_t(e1 & 255) | l1 << 16 | 1u << 24;
    }
    const uint32_t* t2 = table2.data();
    // Interleave the four streams: independent dependency chains. State lives in locals
    // (byte stores would otherwise force reloads of struct fields: uint8_t aliases anything).
    static_assert(kSegments == 4, "the unrolled loop below assumes 4 segments");
    const uint8_t* __restrict b0 = st[0].bytes.data();
    const uint8_t* __restrict b1 = st[1].bytes.data();
    const uint8_t* __restrict b2 = st[2].bytes.data();
    const uint8_t* __restrict b3 = st[3].bytes.data();
    uint8_t* __restrict o0 = st[0].out;
    uint8_t* __restrict o1 = st[1].out;
    uint8_t* __restrict o2 = st[2].out;
    uint8_t* __restrict o3 = st[3].out;
    const size_t c0 = st[0].count, c1 = st[1].count, c2 = st[2].count, c3 = st[3].count;
    uint64_t q0 = 0, q1 = 0, q2 = 0, q3 = 0;
    size_t i0 = 0, i1 = 0, i2 = 0, i3 = 0;
    // A round reads at most 8 bytes past pos/8 and each stream has 16 bytes of padding.
    const uint64_t lim0 = uint64_t(st[0].size) * 8, lim1 = uint64_t(st[1].size) * 8;
    const uint64_t lim2 = uint64_t(st[2].size) * 8, lim3 = uint64_t(st[3].size) * 8;
    unsigned bad = 0;
    // 4 lookups of <= 12 bits use <= 48 of the >= 57 valid bits, and write <= 8 symbols
    // (the second byte is written speculatively and overwritten when count is 1).
#define MS_DECODE(B, Q, O, I)                                   \
    {                                                           \
        uint64_t buf;                                           \
        std::memcpy(&buf, B + (Q >> 3), 8);                     \
        buf >>= (Q & 7);                                        \
        unsigned used = 0;                                      \
        for (int r = 0; r < 4; r++) {                           \
            uint32_t e = t2[buf & mask];                        \
            unsigned bits = (e >> 16) & 255;                    \
            O[I] = uint8_t(e);                                  \
            O[I + 1] = uint8_t(e >> 8);                         \
            I += e >> 24;                                       \
            bad |= unsigned(bits == 0);                         \
            buf >>= bits;                                       \
            used += bits;                                       \
        }                                                       \
        Q += used;                                              \
    }
    while (i0 + 8 <= c0 && i1 + 8 <= c1 && i2 + 8 <= c2 && i3 + 8 <= c3) {
        if (q0 > lim0 || q1 > lim1 || q2 > lim2 || q3 > lim3 || bad) break;
        MS_DECODE(b0, q0, o0, i0)
        MS_DECODE(b1, q1, o1, i1)
        MS_DECODE(b2, q2, o2, i2)
        MS_DECODE(b3, q3, o3, i3)
    }
#undef MS_DECODE
    if (bad) throw std::runtime_error("splithuff: invalid code");
    st[0].pos = q0;
    st[1].pos = q1;
    st[2].pos = q2;
    st[3].pos = q3;
    const size_t from[kSegments] = {i0, i1, i2, i3};
    for (int j = 0; j < kSegments; j++) decode_tail(st[j], from[j], tb);
}

}  // namespace

size_t bound(size_t n, int k) { return 2 + size_t(k) * (kPlaneHeader + kLengths + 64) + n; }

size_t encode(const uint8_t* src, size_t n, int k, uint8_t* dst) {
    if (k < 1 || k > 8 || n % size_t(k)) throw std::invalid_argument("splithuff: n must be a multiple of k in 1..8");
    if (n / size_t(k) > 0xFFFFFFF0u) throw std::invalid_argument("splithuff: chunk too large");
    const size_t count = n / size_t(k);
    std::unique_ptr<uint8_t[]> planes;  // uninitialised: every byte is written by split()
    if (k > 1) {
        planes.reset(new uint8_t[n]);
        split(src, count, k, planes.get());
    }
    const uint8_t* base = k > 1 ? planes.get() : src;
    dst[0] = 1;
    dst[1] = uint8_t(k);
    uint8_t* hdr = dst + 2;
    uint8_t* out = hdr + size_t(k) * kPlaneHeader;
    for (int s = 0; s < k; s++) {
        const uint8_t* plane = base + size_t(s) * count;
        uint64_t freq[256] = {};
        // Decide from a strided sample first: a near-random plane (mantissa bytes) is
        // stored raw without a full histogram.
        constexpr size_t kSampleStride = 16;
        if (count >= 64 * 1024) {
            histogram(plane, count / kSampleStride, int(kSampleStride), 0, freq);
            uint8_t slen[256];
            code_lengths(freq, slen);
            uint64_t sbits = 0, sn = 0;
            for (int b = 0; b < 256; b++) {
                sbits += freq[b] * slen[b];
                sn += freq[b];
            }
            bool many = false;
            for (int b = 0, d = 0; b < 256; b++) d += freq[b] != 0, many = d > 1;
            if (many && sbits * 33 > sn * 8 * 32) {  // sample saves < 3 %: raw plane
                std::memcpy(out, plane, count);
                hdr[s * kPlaneHeader] = 0;
                hdr[s * kPlaneHeader + 1] = 0;
                put_u32(hdr + s * kPlaneHeader + 2, uint32_t(count));
                out += count;
                continue;
            }
            std::fill(freq, freq + 256, 0);
        }
        histogram(plane, count, 1, 0, freq);
        int distinct = 0, only = 0;
        for (int b = 0; b < 256; b++)
            if (freq[b]) {
                distinct++;
                only = b;
            }
        uint8_t method = 0, constant = 0;
        size_t size = count;
        if (count == 0) {
            method = 0;
            size = 0;
        } else if (distinct == 1) {
            method = 2;
            constant = uint8_t(only);
            size = 0;
        } else {
            uint8_t len[256];
            code_lengths(freq, len);
            uint64_t bits = 0;
            for (int b = 0; b < 256; b++) bits += freq[b] * len[b];
            size_t huff = kLengths + 16 + size_t((bits + 7) / 8);
            if (huff < count - count / 32) {  // keep Huffman only when it saves >= ~3 %
                method = 1;
                size = encode_plane_huff(plane, count, len, out);
            }
        }
        if (method == 0 && size) std::memcpy(out, plane, count);
        hdr[s * kPlaneHeader] = method;
        hdr[s * kPlaneHeader + 1] = constant;
        put_u32(hdr + s * kPlaneHeader + 2, uint32_t(size));
        out += size;
    }
    return size_t(out - dst);
}

void decode(const uint8_t* src, size_t size, uint8_t* dst, size_t n) {
    if (size < 2 || src[0] != 1) throw std::runtime_error("splithuff: unknown payload version");
    const int k = src[1];
    if (k < 1 || k > 8 || n % size_t(k)) throw std::runtime_error("splithuff: bad plane count");
    const size_t count = n / size_t(k);
    const uint8_t* hdr = src + 2;
    if (size < 2 + size_t(k) * kPlaneHeader) throw std::runtime_error("splithuff: truncated header");
    const uint8_t* data = hdr + size_t(k) * kPlaneHeader;
    const uint8_t* end = src + size;
    std::unique_ptr<uint8_t[]> planes;  // every plane byte is written below before merge()
    if (k > 1) planes.reset(new uint8_t[n]);
    uint8_t* base = k > 1 ? planes.get() : dst;
    for (int s = 0; s < k; s++) {
        uint8_t method = hdr[s * kPlaneHeader];
        uint8_t constant = hdr[s * kPlaneHeader + 1];
        size_t psize = get_u32(hdr + s * kPlaneHeader + 2);
        if (psize > size_t(end - data)) throw std::runtime_error("splithuff: plane overruns the payload");
        uint8_t* o = base + size_t(s) * count;
        if (method == 0) {
            if (psize != count) throw std::runtime_error("splithuff: raw plane has the wrong size");
            if (count) std::memcpy(o, data, count);
        } else if (method == 1) {
            decode_plane_huff(data, psize, o, count);
        } else if (method == 2) {
            if (psize) throw std::runtime_error("splithuff: constant plane with data");
            std::memset(o, constant, count);
        } else {
            throw std::runtime_error("splithuff: unknown plane method");
        }
        data += psize;
    }
    if (data != end) throw std::runtime_error("splithuff: trailing bytes in payload");
    if (k > 1) merge(planes.get(), count, k, dst);
}

}  // namespace splithuff
}  // namespace modelstore
