// xordelta.cpp -- see xordelta.hpp.
#include "modelstore/xordelta.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <queue>
#include <stdexcept>
#include <vector>

#include "modelstore/splithuff.hpp"

namespace modelstore {
namespace xordelta {
namespace {

constexpr size_t kPlaneHeader = 6;  // method, constant, u32 size
constexpr int kSyms = 288;          // 256 literals (0 unused) + 32 zero-run classes
constexpr int kMaxLen = 12;         // code length limit: 4096-entry decode table
constexpr size_t kLengths = kSyms / 2;
enum Method : uint8_t { kRaw = 0, kSplit = 1, kConst = 2, kZrh = 3 };

void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
uint32_t get_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// XOR src into dst, 8 bytes at a time (vectorised by the compiler).
void xor_bytes(uint8_t* __restrict dst, const uint8_t* __restrict src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t a, b;
        std::memcpy(&a, dst + i, 8);
        std::memcpy(&b, src + i, 8);
        a ^= b;
        std::memcpy(dst + i, &a, 8);
    }
    for (; i < n; i++) dst[i] ^= src[i];
}

// planes[b][i] = (cur ^ base)[i*k + b]
void xor_split(const uint8_t* cur, const uint8_t* base, size_t count, int k, uint8_t* planes) {
    if (k == 4) {
        uint8_t* __restrict p0 = planes;
        uint8_t* __restrict p1 = planes + count;
        uint8_t* __restrict p2 = planes + 2 * count;
        uint8_t* __restrict p3 = planes + 3 * count;
        size_t i = 0;
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

// out[i*k + b] ^= planes[b][i]
void merge_xor(const uint8_t* planes, size_t count, int k, uint8_t* out) {
    if (k == 1) return xor_bytes(out, planes, count);
    if (k == 4) {
        const uint8_t* __restrict p0 = planes;
        const uint8_t* __restrict p1 = planes + count;
        const uint8_t* __restrict p2 = planes + 2 * count;
        const uint8_t* __restrict p3 = planes + 3 * count;
        for (size_t i = 0; i < count; i++) {
            uint32_t v = uint32_t(p0[i]) | uint32_t(p1[i]) << 8 | uint32_t(p2[i]) << 16 | uint32_t(p3[i]) << 24;
            uint32_t o;
            std::memcpy(&o, out + 4 * i, 4);
            o ^= v;
            std::memcpy(out + 4 * i, &o, 4);
        }
        return;
    }
    if (k == 2) {
        const uint8_t* __restrict p0 = planes;
        const uint8_t* __restrict p1 = planes + count;
        for (size_t i = 0; i < count; i++) {
            uint16_t v = uint16_t(p0[i] | p1[i] << 8);
            uint16_t o;
            std::memcpy(&o, out + 2 * i, 2);
            o = uint16_t(o ^ v);
            std::memcpy(out + 2 * i, &o, 2);
        }
        return;
    }
    for (size_t i = 0; i < count; i++)
        for (int b = 0; b < k; b++) out[i * k + b] ^= planes[size_t(b) * count + i];
}

// out[i*k + b] = planes[b][i]
void merge_write(const uint8_t* planes, size_t count, int k, uint8_t* out) {
    if (k == 1) {
        std::memcpy(out, planes, count);
        return;
    }
    if (k == 4) {
        const uint8_t* __restrict p0 = planes;
        const uint8_t* __restrict p1 = planes + count;
        const uint8_t* __restrict p2 = planes + 2 * count;
        const uint8_t* __restrict p3 = planes + 3 * count;
        for (size_t i = 0; i < count; i++) {
            uint32_t v = uint32_t(p0[i]) | uint32_t(p1[i]) << 8 | uint32_t(p2[i]) << 16 | uint32_t(p3[i]) << 24;
            std::memcpy(out + 4 * i, &v, 4);
        }
        return;
    }
    for (size_t i = 0; i < count; i++)
        for (int b = 0; b < k; b++) out[i * k + b] = planes[size_t(b) * count + i];
}

// ---- zero-run Huffman -----------------------------------------------------------------

inline int floor_log2(uint64_t v) { return 63 - __builtin_clzll(v); }

// Length of the zero run starting at p[i] (p[i] == 0), scanning 8 bytes at a time.
inline size_t zero_run(const uint8_t* p, size_t i, size_t count) {
    size_t j = i;
    while (j + 8 <= count) {
        uint64_t w;
        std::memcpy(&w, p + j, 8);
        if (w) return j + (__builtin_ctzll(w) >> 3) - i;  // little-endian: lowest byte first
        j += 8;
    }
    while (j < count && !p[j]) j++;
    return j - i;
}

// Calls f(symbol, extra_bits, extra_value) for each token of the plane.
template <class F>
void tokens(const uint8_t* p, size_t count, F&& f) {
    size_t i = 0;
    while (i < count) {
        if (p[i]) {
            f(int(p[i]), 0, uint64_t(0));
            i++;
        } else {
            size_t len = zero_run(p, i, count);
            int b = floor_log2(len);
            f(256 + b, b, uint64_t(len) - (uint64_t(1) << b));
            i += len;
        }
    }
}

// Huffman code lengths limited to kMaxLen (flatten the frequencies and retry until it fits).
void code_lengths(const uint64_t* freq_in, uint8_t* len) {
    std::vector<uint64_t> freq(freq_in, freq_in + kSyms);
    for (;;) {
        std::fill(len, len + kSyms, 0);
        struct Node {
            int left, right;  // leaves: left = -1 - symbol
        };
        std::vector<Node> nodes;
        using Item = std::pair<uint64_t, int>;
        std::priority_queue<Item, std::vector<Item>, std::greater<Item>> pq;
        for (int s = 0; s < kSyms; s++)
            if (freq[s]) {
                nodes.push_back({-1 - s, -1});
                pq.push({freq[s], int(nodes.size()) - 1});
            }
        if (nodes.empty()) return;
        if (nodes.size() == 1) {
            len[-1 - nodes[0].left] = 1;
            return;
        }
        while (pq.size() > 1) {
            auto a = pq.top();
            pq.pop();
            auto b = pq.top();
            pq.pop();
            nodes.push_back({a.second, b.second});
            pq.push({a.first + b.first, int(nodes.size()) - 1});
        }
        int maxlen = 0;
        std::vector<std::pair<int, int>> stack{{pq.top().second, 0}};
        while (!stack.empty()) {
            auto [id, depth] = stack.back();
            stack.pop_back();
            const Node& nd = nodes[id];
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
            if (f) f = (f >> 1) | 1;
    }
}

// Canonical codes, bit-reversed for LSB-first emission.
void canonical_codes(const uint8_t* len, uint16_t* code) {
    int count[kMaxLen + 1] = {};
    for (int s = 0; s < kSyms; s++) count[len[s]]++;
    count[0] = 0;
    int next[kMaxLen + 2] = {};
    int c = 0;
    for (int l = 1; l <= kMaxLen; l++) {
        c = (c + count[l - 1]) << 1;
        next[l] = c;
    }
    for (int s = 0; s < kSyms; s++) {
        int l = len[s];
        if (!l) continue;
        uint32_t v = uint32_t(next[l]++), r = 0;
        for (int b = 0; b < l; b++) r |= ((v >> b) & 1u) << (l - 1 - b);
        code[s] = uint16_t(r);
    }
}

// Four segments of a plane, each its own bit stream, decoded interleaved: one token's
// decode waits on the previous token's length, so independent streams keep the core busy.
constexpr int kSegs = 4;
constexpr size_t kSegHeader = 4 * (kSegs - 1);

void segment(size_t count, int j, size_t* start, size_t* len) {
    size_t per = (count + kSegs - 1) / kSegs;
    size_t a = std::min(count, per * size_t(j));
    *start = a;
    *len = std::min(count, a + per) - a;
}

struct ZrhPlan {
    uint8_t len[kSyms];
    size_t seg_bytes[kSegs] = {};
    size_t size = 0;  // encoded bytes, header included
};

// Size of the zero-run Huffman coding of a plane, without writing it.
ZrhPlan zrh_plan(const uint8_t* p, size_t count) {
    ZrhPlan plan;
    uint64_t freq[kSyms] = {};
    uint64_t seg_freq[kSegs][kSyms] = {};
    uint64_t extra[kSegs] = {};
    for (int j = 0; j < kSegs; j++) {
        size_t a, m;
        segment(count, j, &a, &m);
        tokens(p + a, m, [&](int s, int b, uint64_t) {
            seg_freq[j][s]++;
            extra[j] += uint64_t(b);
        });
        for (int s = 0; s < kSyms; s++) freq[s] += seg_freq[j][s];
    }
    code_lengths(freq, plan.len);
    plan.size = kLengths + kSegHeader;
    for (int j = 0; j < kSegs; j++) {
        uint64_t bits = extra[j];
        for (int s = 0; s < kSyms; s++) bits += seg_freq[j][s] * plan.len[s];
        plan.seg_bytes[j] = size_t((bits + 7) / 8);
        plan.size += plan.seg_bytes[j];
    }
    return plan;
}

size_t zrh_encode(const uint8_t* p, size_t count, const ZrhPlan& plan, uint8_t* dst) {
    for (size_t i = 0; i < kLengths; i++) dst[i] = uint8_t(plan.len[2 * i] | (plan.len[2 * i + 1] << 4));
    for (int j = 0; j < kSegs - 1; j++) put_u32(dst + kLengths + 4 * j, uint32_t(plan.seg_bytes[j]));
    uint16_t code[kSyms] = {};
    canonical_codes(plan.len, code);
    uint8_t* out = dst + kLengths + kSegHeader;
    for (int j = 0; j < kSegs; j++) {
        size_t a, m;
        segment(count, j, &a, &m);
        uint8_t* const end = out + plan.seg_bytes[j];
        uint64_t buf = 0;
        unsigned bits = 0;
        auto flush = [&]() {  // whole bytes out, never past `end` (sizes are exact)
            size_t nb = bits >> 3;
            uint8_t tmp[8];
            std::memcpy(tmp, &buf, 8);
            std::memcpy(out, tmp, std::min<size_t>(nb, size_t(end - out)));
            out += nb;
            buf = nb ? buf >> (8 * nb) : buf;  // nb <= 5: bits stay < 44
            bits &= 7u;
        };
        tokens(p + a, m, [&](int s, int b, uint64_t v) {
            buf |= uint64_t(code[s]) << bits;
            bits += plan.len[s];
            if (b) {
                flush();
                buf |= v << bits;
                bits += unsigned(b);
            }
            if (bits >= 32) flush();
        });
        flush();
        if (bits) *out++ = uint8_t(buf);
        if (out != end) throw std::logic_error("xordelta: zero-run size mismatch");
    }
    return plan.size;
}

// XOR the tokens of a zero-run Huffman plane into acc (count bytes). Runs are skipped.
void zrh_apply(const uint8_t* src, size_t size, uint8_t* acc, size_t count) {
    if (size < kLengths + kSegHeader) throw std::runtime_error("xordelta: truncated code table");
    uint8_t len[kSyms];
    for (size_t i = 0; i < kLengths; i++) {
        len[2 * i] = src[i] & 15;
        len[2 * i + 1] = src[i] >> 4;
    }
    uint64_t kraft = 0;
    int used = 0;
    for (int s = 0; s < kSyms; s++)
        if (len[s]) {
            if (len[s] > kMaxLen || s == 0) throw std::runtime_error("xordelta: bad code length");
            kraft += uint64_t(1) << (kMaxLen - len[s]);
            used++;
        }
    if (used == 0 || kraft > (uint64_t(1) << kMaxLen)) throw std::runtime_error("xordelta: bad code table");
    uint16_t code[kSyms] = {};
    canonical_codes(len, code);
    // One branch-free step per token: entry = value | code length << 8 | extra bits << 12
    // | advance << 32. A literal XORs its value and advances 1; a run of class b XORs 0
    // and advances 2^b plus its b extra bits. Length 0 marks an invalid code.
    std::vector<uint64_t> table(size_t(1) << kMaxLen, 0);
    for (int s = 0; s < kSyms; s++) {
        int l = len[s];
        if (!l) continue;
        uint64_t e = s < 256 ? (uint64_t(s) | uint64_t(l) << 8 | uint64_t(1) << 32)
                             : (uint64_t(l) << 8 | uint64_t(s - 256) << 12 | (uint64_t(1) << (s - 256)) << 32);
        for (uint32_t hi = 0; hi < (1u << (kMaxLen - l)); hi++) table[code[s] | (hi << l)] = e;
    }
    // Each segment's stream is copied with 16 bytes of zero padding: 8-byte reads never overrun.
    size_t left = size - kLengths - kSegHeader;
    size_t seg_size[kSegs];
    for (int j = 0; j < kSegs; j++) {
        seg_size[j] = j < kSegs - 1 ? get_u32(src + kLengths + 4 * j) : left;
        if (seg_size[j] > left) throw std::runtime_error("xordelta: segment overruns the plane");
        left -= seg_size[j];
    }
    std::vector<uint8_t> streams(size - kLengths - kSegHeader + 16 * kSegs, 0);
    const uint8_t* in = src + kLengths + kSegHeader;
    const uint8_t* sp[kSegs];
    uint64_t lim[kSegs], pos[kSegs] = {}, idx[kSegs], cnt[kSegs];
    uint8_t* out[kSegs];
    size_t off = 0;
    for (int j = 0; j < kSegs; j++) {
        if (seg_size[j]) std::memcpy(streams.data() + off, in, seg_size[j]);
        sp[j] = streams.data() + off;
        off += seg_size[j] + 16;
        in += seg_size[j];
        lim[j] = uint64_t(seg_size[j]) * 8;
        size_t a, m;
        segment(count, j, &a, &m);
        out[j] = acc + a;
        idx[j] = 0;
        cnt[j] = m;
    }
    const uint64_t* tb = table.data();
    const uint64_t mask = (1u << kMaxLen) - 1;
    unsigned bad = 0;
#define MS_ZRH_STEP(J)                                                                  \
    {                                                                                   \
        uint64_t buf;                                                                   \
        std::memcpy(&buf, sp[J] + (pos[J] >> 3), 8);                                    \
        buf >>= (pos[J] & 7); /* >= 57 valid bits: a code (<= 12) + extra bits (<= 31) */ \
        uint64_t e = tb[buf & mask];                                                    \
        unsigned l = (e >> 8) & 15, b = (e >> 12) & 31;                                \
        bad |= unsigned(l == 0);                                                        \
        out[J][idx[J]] ^= uint8_t(e); /* idx < cnt here; a run XORs 0 */                \
        idx[J] += (e >> 32) + ((buf >> l) & ((uint64_t(1) << b) - 1));                 \
        pos[J] += l + b;                                                                \
    }
    static_assert(kSegs == 4, "the interleaved loop below assumes 4 segments");
    while (idx[0] < cnt[0] && idx[1] < cnt[1] && idx[2] < cnt[2] && idx[3] < cnt[3]) {
        if (pos[0] > lim[0] || pos[1] > lim[1] || pos[2] > lim[2] || pos[3] > lim[3] || bad) break;
        MS_ZRH_STEP(0)
        MS_ZRH_STEP(1)
        MS_ZRH_STEP(2)
        MS_ZRH_STEP(3)
    }
    for (int j = 0; j < kSegs; j++) {
        while (idx[j] < cnt[j]) {
            if (pos[j] > lim[j] || bad) break;
            MS_ZRH_STEP(j)
        }
    }
#undef MS_ZRH_STEP
    if (bad) throw std::runtime_error("xordelta: invalid code");
    for (int j = 0; j < kSegs; j++) {
        if (idx[j] != cnt[j])
            throw std::runtime_error(idx[j] > cnt[j] ? "xordelta: zero run overruns the plane"
                                                     : "xordelta: bit stream overrun");
        if (pos[j] > lim[j] || (lim[j] - pos[j]) >= 8) throw std::runtime_error("xordelta: bit stream length mismatch");
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

struct Scratch {
    std::vector<uint8_t> acc, tmp, one;
};
thread_local Scratch scratch;  // reused per thread: fresh 4 MiB buffers cost page faults

// Decode a splithuff record (a chain's root, layout in splithuff.hpp) straight into the
// plane accumulator: raw and constant planes are copied, Huffman planes go through
// splithuff::decode as one-plane payloads. Skips splithuff's own interleave and the
// buffer it allocates for it.
void root_planes(const uint8_t* src, size_t size, int k, size_t count, uint8_t* acc, std::vector<uint8_t>& one) {
    if (size < 2 || src[0] != 1) throw std::runtime_error("splithuff: unknown payload version");
    if (src[1] != k) throw std::runtime_error("xordelta: root and links disagree on the plane count");
    if (size < 2 + size_t(k) * kPlaneHeader) throw std::runtime_error("splithuff: truncated header");
    const uint8_t* hdr = src + 2;
    const uint8_t* data = hdr + size_t(k) * kPlaneHeader;
    const uint8_t* end = src + size;
    for (int b = 0; b < k; b++) {
        uint8_t method = hdr[b * kPlaneHeader], constant = hdr[b * kPlaneHeader + 1];
        size_t psize = get_u32(hdr + b * kPlaneHeader + 2);
        if (psize > size_t(end - data)) throw std::runtime_error("splithuff: plane overruns the payload");
        uint8_t* a = acc + size_t(b) * count;
        if (method == 0) {
            if (psize != count) throw std::runtime_error("splithuff: raw plane has the wrong size");
            if (count) std::memcpy(a, data, count);
        } else if (method == 2) {
            if (psize) throw std::runtime_error("splithuff: constant plane with data");
            std::memset(a, constant, count);
        } else if (method == 1) {
            one.resize(2 + kPlaneHeader + psize);
            one[0] = 1;
            one[1] = 1;
            std::memcpy(one.data() + 2, hdr + b * kPlaneHeader, kPlaneHeader);
            std::memcpy(one.data() + 2 + kPlaneHeader, data, psize);
            splithuff::decode(one.data(), one.size(), a, count);
        } else {
            throw std::runtime_error("splithuff: unknown plane method");
        }
        data += psize;
    }
    if (data != end) throw std::runtime_error("splithuff: trailing bytes in payload");
}

}  // namespace

size_t bound(size_t n, int k) {
    return 2 + size_t(k) * kPlaneHeader + n + size_t(k) * 64;
}

size_t encode(const uint8_t* cur, const uint8_t* base, size_t n, int k, uint8_t* dst) {
    if (k < 1 || k > 8 || n % size_t(k)) throw std::invalid_argument("xordelta: n must be a multiple of k in 1..8");
    if (n / size_t(k) > 0xFFFFFFF0u) throw std::invalid_argument("xordelta: chunk too large");
    const size_t count = n / size_t(k);
    Scratch& sc = scratch;  // reused per thread: fresh multi-MiB buffers cost page faults
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
            ZrhPlan plan;
            bool sparse = zeros * 4 >= count;  // sparse enough that zero runs may pay
            if (sparse) plan = zrh_plan(p, count);
            // A byte Huffman code spends >= 1 bit a byte: below that, zero runs win outright.
            size_t sh = sparse && plan.size < count / 8 ? count : splithuff::encode(p, count, 1, tmp);
            size_t best = std::min(sh, count);
            // Prefer splithuff's faster 4-stream decoder unless zero runs save >= 3 %.
            if (sparse && plan.size < best - best / 32) {
                method = kZrh;
                size = zrh_encode(p, count, plan, out);
            }
            if (method != kZrh && sh < count) {
                method = kSplit;
                size = sh;
                std::memcpy(out, tmp, sh);
            }
        }
        if (method == kRaw && size) std::memcpy(out, p, count);
        hdr[b * kPlaneHeader] = method;
        hdr[b * kPlaneHeader + 1] = constant;
        put_u32(hdr + b * kPlaneHeader + 2, uint32_t(size));
        out += size;
    }
    return size_t(out - dst);
}

namespace {

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
    if (root && !k) {
        if (root_size < 2) throw std::runtime_error("splithuff: unknown payload version");
        k = root[1];
        if (k < 1 || k > 8 || n % size_t(k)) throw std::runtime_error("splithuff: bad plane count");
    }
    const size_t count = n / size_t(k);
    Scratch& sc = scratch;
    if (sc.acc.size() < n) sc.acc.resize(n);
    if (sc.tmp.size() < count) sc.tmp.resize(count);
    uint8_t* acc = sc.acc.data();
    if (root) root_planes(root, root_size, k, count, acc, sc.one);
    for (size_t j = 0; j < m; j++) {
        // The first link writes the accumulator (no memset, no XOR pass) unless a root did.
        const bool first = j == 0 && !root;
        const uint8_t* src = payloads[j];
        const size_t size = sizes[j];
        if (size < 2 + size_t(k) * kPlaneHeader) throw std::runtime_error("xordelta: truncated header");
        const uint8_t* hdr = src + 2;
        const uint8_t* data = hdr + size_t(k) * kPlaneHeader;
        const uint8_t* end = src + size;
        for (int b = 0; b < k; b++) {
            uint8_t method = hdr[b * kPlaneHeader], constant = hdr[b * kPlaneHeader + 1];
            size_t psize = get_u32(hdr + b * kPlaneHeader + 2);
            if (psize > size_t(end - data)) throw std::runtime_error("xordelta: plane overruns the payload");
            uint8_t* a = acc + size_t(b) * count;
            switch (method) {
                case kRaw:
                    if (psize != count) throw std::runtime_error("xordelta: raw plane has the wrong size");
                    if (first)
                        std::memcpy(a, data, count);
                    else
                        xor_bytes(a, data, count);
                    break;
                case kSplit:
                    if (first) {
                        splithuff::decode(data, psize, a, count);
                    } else {
                        splithuff::decode(data, psize, sc.tmp.data(), count);
                        xor_bytes(a, sc.tmp.data(), count);
                    }
                    break;
                case kConst:
                    if (psize) throw std::runtime_error("xordelta: constant plane with data");
                    if (first)
                        std::memset(a, constant, count);
                    else if (constant)
                        for (size_t i = 0; i < count; i++) a[i] ^= constant;
                    break;
                case kZrh:
                    if (first) std::memset(a, 0, count);
                    zrh_apply(data, psize, a, count);
                    break;
                default:
                    throw std::runtime_error("xordelta: unknown plane method");
            }
            data += psize;
        }
        if (data != end) throw std::runtime_error("xordelta: trailing bytes in payload");
    }
    if (root)
        merge_write(acc, count, k, out);
    else
        merge_xor(acc, count, k, out);
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
