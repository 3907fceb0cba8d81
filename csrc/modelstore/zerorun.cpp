// zerorun.cpp -- see zerorun.hpp.
#include "modelstore/zerorun.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "modelstore/huffman.hpp"

namespace modelstore {
namespace zerorun {
namespace {

using huffman::kMaxLen;
using huffman::kStreamHeader;
using huffman::kStreams;
constexpr size_t kLengths = kSyms / 2;

using huffman::get_u32;
using huffman::put_u32;

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

inline uint64_t load8(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

// 8 bytes at byte `at`, zero past `avail`.
inline uint64_t load_safe(const uint8_t* s, size_t avail, size_t at) {
    uint64_t v = 0;
    if (at + 8 <= avail)
        std::memcpy(&v, s + at, 8);
    else if (at < avail)
        std::memcpy(&v, s + at, avail - at);
    return v;
}

}  // namespace

namespace {

// tokens() for plan(), branch-light: a plane of sparse nonzero bytes costs a mispredicted
// branch per byte when scanned byte by byte. Nonzero bytes are found 64 at a time as a bit
// mask; each emits the zero run before it (when there is one: written always, kept
// conditionally) and itself. Tokens go to tok (symbol | extra bits << 9 | extra value <<
// 16), their counts to sf, their extra bits to *extra; returns the number of tokens.
size_t tokenize(const uint8_t* p, size_t m, uint64_t* tok, uint64_t* sf, uint64_t* extra) {
    constexpr uint64_t lo7 = 0x7F7F7F7F7F7F7F7Full, hi = 0x8080808080808080ull;
    size_t nt = 0, run_start = 0;
    uint64_t ex = 0;
    for (size_t base = 0; base < m; base += 64) {
        const size_t n = std::min<size_t>(64, m - base);
        uint64_t mask = 0;
        if (n == 64) {
            for (int w = 0; w < 8; w++) {
                uint64_t x = load8(p + base + 8 * size_t(w));
                uint64_t nz = (((x & lo7) + lo7) | x) & hi;  // 0x80 in each nonzero byte
                mask |= (((nz >> 7) * 0x0102040810204080ull) >> 56) << (8 * w);  // byte i -> bit i
            }
        } else {
            for (size_t j = 0; j < n; j++) mask |= uint64_t(p[base + j] != 0) << j;
        }
        while (mask) {
            const size_t pos = base + size_t(__builtin_ctzll(mask));
            mask &= mask - 1;
            const uint64_t len = pos - run_start;
            const int b = floor_log2(len | 1);
            const size_t has = len != 0;
            tok[nt] = uint64_t(256 + b) | uint64_t(b) << 9 | (len - (uint64_t(1) << b)) << 16;
            sf[256 + b] += has;
            ex += has * uint64_t(b);
            nt += has;
            const uint8_t v = p[pos];
            tok[nt++] = v;
            sf[v]++;
            run_start = pos + 1;
        }
    }
    if (run_start < m) {
        const uint64_t len = m - run_start;
        const int b = floor_log2(len);
        tok[nt++] = uint64_t(256 + b) | uint64_t(b) << 9 | (len - (uint64_t(1) << b)) << 16;
        sf[256 + b]++;
        ex += uint64_t(b);
    }
    *extra += ex;
    return nt;
}

// A plane's tokens as plan() found them, for encode() to emit without scanning again:
// symbol | extra bits << 9 | extra value << 16. Reused per thread.
thread_local std::vector<uint64_t> token_buf;

}  // namespace

Plan plan(const uint8_t* p, size_t count) {
    Plan out;
    static_assert(kStreams == 4, "Plan holds 4 segments");
    uint64_t freq[kSyms] = {};
    uint64_t seg_freq[kStreams][kSyms] = {};
    uint64_t extra[kStreams] = {};
    // Tokens are kept for encode() when the plane is at most kKeepTokens bytes (a token
    // covers >= 1 byte: 8 bytes of buffer per byte at worst); a larger plane (a chunk of
    // one huge row) is tokenized again by encode(), so memory stays bounded.
    constexpr size_t kKeepTokens = size_t(4) << 20;
    const bool keep = count <= kKeepTokens;
    std::vector<uint64_t>& buf = huffman::opaque(token_buf);
    if (keep && buf.size() < count) buf.resize(count);
    // through a plain pointer: GCC re-derives a thread-local's address per access
    uint64_t* const tok = keep ? buf.data() : nullptr;
    size_t nt = 0;
    for (int j = 0; j < kStreams; j++) {
        size_t a, m;
        huffman::segment(count, j, &a, &m);
        uint64_t* sf = seg_freq[j];
        uint64_t ex = 0;
        if (keep)
            nt += tokenize(p + a, m, tok + nt, sf, &ex);
        else
            tokens(p + a, m, [&](int s, int b, uint64_t) {
                sf[s]++;
                ex += uint64_t(b);
            });
        extra[j] = ex;
        out.seg_tokens[j] = nt;
        for (int s = 0; s < kSyms; s++) freq[s] += sf[s];
    }
    out.tokens = tok;
    huffman::code_lengths(freq, kSyms, out.len);
    out.size = kLengths + kStreamHeader;
    for (int j = 0; j < kStreams; j++) {
        uint64_t bits = extra[j];
        const uint64_t* sf = seg_freq[j];
        for (int s = 0; s < kSyms; s++) bits += sf[s] * out.len[s];
        out.seg_bytes[j] = size_t((bits + 7) / 8);
        out.size += out.seg_bytes[j];
    }
    return out;
}

size_t encode(const uint8_t* p, size_t count, const Plan& plan, uint8_t* dst) {
    huffman::pack_lengths(plan.len, kSyms, dst);
    for (int j = 0; j < kStreams - 1; j++) put_u32(dst + kLengths + 4 * j, uint32_t(plan.seg_bytes[j]));
    uint16_t code[kSyms] = {};
    huffman::canonical_codes(plan.len, kSyms, code);
    uint8_t* out = dst + kLengths + kStreamHeader;
    size_t t = 0;
    for (int j = 0; j < kStreams; j++) {
        uint8_t* const end = out + plan.seg_bytes[j];
        huffman::BitWriter w(out);
        // a code (<= 12 bits) and its extra bits (<= 31); a token is <= 43 bits, so
        // flushing past 20 pending bits never overflows the 64-bit buffer
        auto put = [&](unsigned s, unsigned b, uint64_t v) {
            const unsigned l = plan.len[s];
            w.put(code[s] | v << l, l + b);
            if (w.bits > 20) w.flush();
        };
        if (plan.tokens) {
            for (const size_t stop = plan.seg_tokens[j]; t < stop; t++) {
                const uint64_t tk = plan.tokens[t];
                put(unsigned(tk & 511), unsigned(tk >> 9) & 31, tk >> 16);
            }
        } else {
            size_t a, m;
            huffman::segment(count, j, &a, &m);
            tokens(p + a, m, [&](int s, int b, uint64_t v) { put(unsigned(s), unsigned(b), v); });
        }
        out = w.finish();
        if (out != end) throw std::logic_error("zerorun: size mismatch");
    }
    if (token_buf.capacity() > (size_t(4) << 20)) std::vector<uint64_t>().swap(token_buf);
    return plan.size;
}

namespace {

// apply()'s body, compiled twice (it is always inlined): for any x86-64, and with BMI2,
// whose one-uop variable shifts (shrx, bzhi) run its token loop faster.
__attribute__((always_inline)) inline void apply_impl(const uint8_t* src, size_t size, uint8_t* acc, size_t count) {
    if (size < kLengths + kStreamHeader) throw std::runtime_error("xordelta: truncated code table");
    uint8_t len[kSyms];
    huffman::unpack_lengths(src, kSyms, 1, len, "xordelta");
    uint16_t code[kSyms] = {};
    huffman::canonical_codes(len, kSyms, code);
    // One branch-free step per token: entry = value | code length << 8 | extra bits << 12
    // | advance << 32. A literal XORs its value and advances 1; a run of class b XORs 0
    // and advances 2^b plus its b extra bits. Length 0 marks an invalid code.
    thread_local std::vector<uint64_t> table_buf(size_t(1) << kMaxLen);
    uint64_t* const table = table_buf.data();
    std::memset(table, 0, sizeof(uint64_t) << kMaxLen);
    for (int s = 0; s < kSyms; s++) {
        int l = len[s];
        if (!l) continue;
        uint64_t e = s < 256 ? (uint64_t(s) | uint64_t(l) << 8 | uint64_t(1) << 32)
                             : (uint64_t(l) << 8 | uint64_t(s - 256) << 12 | (uint64_t(1) << (s - 256)) << 32);
        for (uint32_t hi = 0; hi < (1u << (kMaxLen - l)); hi++) table[code[s] | (hi << l)] = e;
    }
    // Streams are read in place: a step reads 8 bytes at pos / 8, so the interleaved loop
    // runs while every stream is >= 8 bytes from the end of the payload (reading into the
    // next stream is harmless: the exact-end check below catches an overrun).
    const uint8_t* const end = src + size;
    const uint8_t* in = src + kLengths + kStreamHeader;
    size_t left = size_t(end - in);
    const uint8_t* sp[kStreams];
    size_t avail[kStreams];
    uint64_t lim[kStreams], top[kStreams], pos[kStreams] = {}, idx[kStreams] = {}, cnt[kStreams];  // bits, bytes
    uint8_t* out[kStreams];
    for (int j = 0; j < kStreams; j++) {
        size_t w = j < kStreams - 1 ? get_u32(src + kLengths + 4 * j) : left;
        if (w > left) throw std::runtime_error("xordelta: segment overruns the plane");
        sp[j] = in;
        avail[j] = size_t(end - in);
        top[j] = avail[j] >= 8 ? uint64_t(avail[j] - 8) * 8 : 0;
        lim[j] = uint64_t(w) * 8;
        size_t a, m;
        huffman::segment(count, j, &a, &m);
        out[j] = acc + a;
        cnt[j] = m;
        in += w;
        left -= w;
    }
    const uint64_t mask = (1u << kMaxLen) - 1;
    unsigned bad = 0;
    // One branch-free step per token. The interleaved loop keeps each stream's state in
    // locals: its byte stores would otherwise force reloads (uint8_t aliases anything).
#define MS_ZRH_STEP(S, P, O, X, LOAD)                                                   \
    {                                                                                   \
        uint64_t buf = LOAD;                                                            \
        buf >>= (P & 7); /* >= 57 valid bits: a code (<= 12) + extra bits (<= 31) */    \
        uint64_t e = table[buf & mask];                                                 \
        unsigned l = (e >> 8) & 15, b = (e >> 12) & 31;                                \
        bad |= unsigned(l == 0);                                                        \
        O[X] ^= uint8_t(e); /* X < count here; a run XORs 0 */                         \
        X += (e >> 32) + ((buf >> l) & ((uint64_t(1) << b) - 1));                       \
        P += l + b;                                                                     \
    }
    static_assert(kStreams == 4, "the interleaved loop below assumes 4 streams");
    {
        const uint8_t* __restrict s0 = sp[0];
        const uint8_t* __restrict s1 = sp[1];
        const uint8_t* __restrict s2 = sp[2];
        const uint8_t* __restrict s3 = sp[3];
        uint8_t* __restrict o0 = out[0];
        uint8_t* __restrict o1 = out[1];
        uint8_t* __restrict o2 = out[2];
        uint8_t* __restrict o3 = out[3];
        uint64_t p0 = 0, p1 = 0, p2 = 0, p3 = 0, x0 = 0, x1 = 0, x2 = 0, x3 = 0;
        const uint64_t c0 = cnt[0], c1 = cnt[1], c2 = cnt[2], c3 = cnt[3];
        const uint64_t t0 = top[0], t1 = top[1], t2 = top[2], t3 = top[3];
        while (x0 < c0 && x1 < c1 && x2 < c2 && x3 < c3 && p0 <= t0 && p1 <= t1 && p2 <= t2 && p3 <= t3 && !bad) {
            MS_ZRH_STEP(s0, p0, o0, x0, load8(s0 + (p0 >> 3)))
            MS_ZRH_STEP(s1, p1, o1, x1, load8(s1 + (p1 >> 3)))
            MS_ZRH_STEP(s2, p2, o2, x2, load8(s2 + (p2 >> 3)))
            MS_ZRH_STEP(s3, p3, o3, x3, load8(s3 + (p3 >> 3)))
        }
        pos[0] = p0, pos[1] = p1, pos[2] = p2, pos[3] = p3;
        idx[0] = x0, idx[1] = x1, idx[2] = x2, idx[3] = x3;
    }
    for (int j = 0; j < kStreams; j++) {
        uint64_t p = pos[j], x = idx[j];
        uint8_t* o = out[j];
        while (x < cnt[j] && !bad && p <= lim[j]) MS_ZRH_STEP(sp[j], p, o, x, load_safe(sp[j], avail[j], size_t(p >> 3)))
        pos[j] = p;
        idx[j] = x;
    }
#undef MS_ZRH_STEP
    if (bad) throw std::runtime_error("xordelta: invalid code");
    for (int j = 0; j < kStreams; j++) {
        if (idx[j] != cnt[j])
            throw std::runtime_error(idx[j] > cnt[j] ? "xordelta: zero run overruns the plane"
                                                     : "xordelta: bit stream overrun");
        if (pos[j] > lim[j] || (lim[j] - pos[j]) >= 8) throw std::runtime_error("xordelta: bit stream length mismatch");
    }
}

void apply_base(const uint8_t* src, size_t size, uint8_t* acc, size_t count) { apply_impl(src, size, acc, count); }
#ifdef MODELSTORE_X86_TARGETS
__attribute__((target("bmi2"))) void apply_bmi2(const uint8_t* src, size_t size, uint8_t* acc, size_t count) {
    apply_impl(src, size, acc, count);
}
#endif

}  // namespace

void apply(const uint8_t* src, size_t size, uint8_t* acc, size_t count) {
#ifdef MODELSTORE_X86_TARGETS
    if (huffman::cpu_has_bmi2()) return apply_bmi2(src, size, acc, count);
#endif
    apply_base(src, size, acc, count);
}

}  // namespace zerorun
}  // namespace modelstore
