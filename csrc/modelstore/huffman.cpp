// huffman.cpp -- see huffman.hpp.
#include "modelstore/huffman.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace modelstore {
namespace huffman {

namespace {

// Optimal code lengths of n >= 2 weights sorted ascending (w), by the two-queue method:
// leaves and merged nodes are both taken in weight order, so no heap is needed. Writes
// depth[i] for leaf i; returns the longest.
int tree_depths(const uint64_t* w, int n, uint8_t* depth) {
    uint64_t node_w[kMaxSyms];
    int parent[2 * kMaxSyms];  // leaves 0..n-1, internal nodes n..2n-2
    int leaf = 0, next = 0;    // next leaf; next internal node not yet merged
    for (int made = 0; made < n - 1; made++) {
        int pick[2];
        uint64_t sum = 0;
        for (int& p : pick) {
            if (leaf < n && (next >= made || w[leaf] <= node_w[next])) {
                sum += w[leaf];
                p = leaf++;
            } else {
                sum += node_w[next];
                p = n + next++;
            }
        }
        node_w[made] = sum;
        parent[pick[0]] = parent[pick[1]] = n + made;
    }
    // Internal nodes were made in order, so every parent comes after its children: one
    // pass from the root down gives every depth.
    uint8_t nd[kMaxSyms];
    nd[n - 2] = 0;
    for (int i = n - 3; i >= 0; i--) nd[i] = uint8_t(nd[parent[n + i] - n] + 1);
    int maxlen = 0;
    for (int i = 0; i < n; i++) {
        depth[i] = uint8_t(nd[parent[i] - n] + 1);
        maxlen = std::max(maxlen, int(depth[i]));
    }
    return maxlen;
}

}  // namespace

void code_lengths(const uint64_t* freq_in, int nsyms, uint8_t* len) {
    if (nsyms > kMaxSyms) throw std::invalid_argument("huffman: alphabet too large");
    std::fill(len, len + nsyms, 0);
    std::pair<uint64_t, int> sym[kMaxSyms];
    int n = 0;
    for (int s = 0; s < nsyms; s++)
        if (freq_in[s]) sym[n++] = {freq_in[s], s};
    if (n == 0) return;
    if (n == 1) {
        len[sym[0].second] = 1;
        return;
    }
    std::sort(sym, sym + n);
    uint64_t w[kMaxSyms];
    uint8_t depth[kMaxSyms];
    for (int i = 0; i < n; i++) w[i] = sym[i].first;
    // Flatten and retry while too deep: near-optimal for small alphabets, and it
    // terminates (equal weights fit in ceil(log2(nsyms)) <= kMaxLen bits). Halving keeps
    // the order, so the weights stay sorted.
    while (tree_depths(w, n, depth) > kMaxLen)
        for (int i = 0; i < n; i++) w[i] = (w[i] >> 1) | 1;
    for (int i = 0; i < n; i++) len[sym[i].second] = depth[i];
}

void canonical_codes(const uint8_t* len, int nsyms, uint16_t* code) {
    int count[kMaxLen + 1] = {};
    for (int s = 0; s < nsyms; s++) count[len[s]]++;
    count[0] = 0;
    int next[kMaxLen + 2] = {};
    int c = 0;
    for (int l = 1; l <= kMaxLen; l++) {
        c = (c + count[l - 1]) << 1;
        next[l] = c;
    }
    for (int s = 0; s < nsyms; s++) {
        int l = len[s];
        if (!l) continue;
        uint32_t v = uint32_t(next[l]++), r = 0;
        for (int b = 0; b < l; b++) r |= ((v >> b) & 1u) << (l - 1 - b);
        code[s] = uint16_t(r);
    }
}

void pack_lengths(const uint8_t* len, int nsyms, uint8_t* dst) {
    for (int i = 0; i < nsyms / 2; i++) dst[i] = uint8_t(len[2 * i] | (len[2 * i + 1] << 4));
}

bool unpack_lengths(const uint8_t* src, int nsyms, int first, uint8_t* len, const char* who) {
    for (int i = 0; i < nsyms / 2; i++) {
        len[2 * i] = src[i] & 15;
        len[2 * i + 1] = src[i] >> 4;
    }
    // Kraft check: a corrupt table must not produce an ambiguous decoder.
    uint64_t kraft = 0;
    int used = 0;
    for (int s = 0; s < nsyms; s++)
        if (len[s]) {
            if (len[s] > kMaxLen || s < first) throw std::runtime_error(std::string(who) + ": bad code length");
            kraft += uint64_t(1) << (kMaxLen - len[s]);
            used++;
        }
    if (used == 0 || kraft > (uint64_t(1) << kMaxLen)) throw std::runtime_error(std::string(who) + ": bad code table");
    return kraft == (uint64_t(1) << kMaxLen);
}

void segment(size_t count, int j, size_t* start, size_t* len) {
    size_t per = (count + kStreams - 1) / kStreams;
    size_t a = std::min(count, per * size_t(j));
    *start = a;
    *len = std::min(count, a + per) - a;
}

namespace {


// One segment as an LSB-first bit stream; returns bytes written.
size_t encode_stream(const uint8_t* p, size_t count, const uint8_t len[256], const uint16_t code[256], uint8_t* out) {
    BitWriter w(out);
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {  // 4 symbols <= 48 bits + < 8 pending: never overflows
        for (int j = 0; j < 4; j++) w.put(code[p[i + j]], len[p[i + j]]);
        w.flush();
    }
    for (; i < count; i++) w.put(code[p[i]], len[p[i]]);
    return size_t(w.finish() - out);
}

// 8 bytes of stream at byte `at`, zero past `avail` (safe near the end of the payload).
inline uint64_t load_safe(const uint8_t* s, size_t avail, size_t at) {
    uint64_t v = 0;
    if (at + 8 <= avail) {
        std::memcpy(&v, s + at, 8);
    } else if (at < avail) {
        std::memcpy(&v, s + at, avail - at);
    }
    return v;
}

// Entries keep the bit count in the low byte, so `buf >> (e & 63)` is one shift.
struct Tables {
    uint16_t one[1 << kMaxLen];    // length | symbol << 8; length 0: invalid code
    uint64_t multi[1 << kMaxLen];  // bits | nsyms << 8 | up to 4 symbols << 32
    bool many;                     // decode with `multi`: many windows hold several codes
};
thread_local Tables tables;  // 40 KiB, rebuilt per plane: no allocation

void build_tables(const uint8_t len[256], Tables& t) {
    uint16_t code[256] = {};
    canonical_codes(len, 256, code);
    std::memset(t.one, 0, sizeof t.one);
    for (int sym = 0; sym < 256; sym++) {
        int l = len[sym];
        if (!l) continue;
        for (uint32_t hi = 0; hi < (1u << (kMaxLen - l)); hi++) t.one[code[sym] | (hi << l)] = uint16_t(l | (sym << 8));
    }
    // A 12-bit window often holds several short codes (exponent planes average ~2-3 bits
    // a symbol), so one lookup yields up to 4 symbols. Under the code's own distribution
    // every window is equally likely, so the mean symbols per window is the mean per lookup.
    uint32_t total = 0;
    for (uint32_t w = 0; w < (1u << kMaxLen); w++) {
        unsigned bits = 0, n = 0;
        uint64_t syms = 0;
        while (n < 4) {
            uint16_t e = t.one[(w >> bits) & ((1u << kMaxLen) - 1)];
            unsigned l = e & 255;
            // bits past the window are unknown: a code must end inside it
            if (!l || bits + l > unsigned(kMaxLen)) break;
            syms |= uint64_t(e >> 8) << (8 * n);
            bits += l;
            n++;
        }
        if (n == 0) {  // an invalid window (incomplete code): never used by the fast loops
            t.multi[w] = 0;
            continue;
        }
        t.multi[w] = bits | n << 8 | syms << 32;
        total += n;
    }
    // measured (BMI2 build): multi-symbol lookups pay from ~1.6 symbols a lookup (~6 bits
    // a symbol); below, the singles loop's fixed offsets decode faster
    t.many = total * 5 >= 8u * (1u << kMaxLen);
}

struct Stream {
    const uint8_t* s;  // first byte of the stream
    size_t avail;      // bytes readable from s (to the end of the payload)
    uint64_t lim;      // bits of the stream itself
    uint64_t pos;      // bits consumed
    uint8_t* out;
    size_t i, count;   // symbols written, to write
};

// Rounds of up to 4 lookups (<= 48 bits, <= 16 symbols) that stay in bounds.
inline size_t safe_rounds(const Stream& st) {
    size_t by_out = (st.count - st.i) / 16;
    uint64_t top = st.avail >= 8 ? uint64_t(st.avail - 8) * 8 : 0;  // last safe start bit
    size_t by_in = st.pos <= top ? size_t((top - st.pos) / 48) + 1 : 0;
    return std::min(by_out, by_in);
}

// One round on a complete code: 1 load, 4 lookups. Multi: a 4-byte store per lookup (the
// bytes past its symbols are speculative: overwritten by the next lookup's store).
#define MS_HUFF_ROUND2(TAB, B, Q, O, I)                   \
    {                                                     \
        uint64_t buf;                                     \
        std::memcpy(&buf, B + (Q >> 3), 8);               \
        buf >>= (Q & 7);                                  \
        uint64_t used = 0;                                \
        for (int r = 0; r < 4; r++) {                     \
            uint64_t e = TAB[buf & mask];                 \
            uint32_t v = uint32_t(e >> 32);               \
            std::memcpy(O + I, &v, 4);                    \
            I += (e >> 8) & 7;                            \
            buf >>= (e & 63);                             \
            used += e; /* low byte: bits, <= 48 in all */ \
        }                                                 \
        Q += used & 255;                                  \
    }
// Singles: 4 symbols a round at fixed offsets.
#define MS_HUFF_ROUND1(TAB, B, Q, O, I)                   \
    {                                                     \
        uint64_t buf;                                     \
        std::memcpy(&buf, B + (Q >> 3), 8);               \
        buf >>= (Q & 7);                                  \
        uint32_t e0 = TAB[buf & mask];                    \
        buf >>= (e0 & 63);                                \
        uint32_t e1 = TAB[buf & mask];                    \
        buf >>= (e1 & 63);                                \
        uint32_t e2 = TAB[buf & mask];                    \
        buf >>= (e2 & 63);                                \
        uint32_t e3 = TAB[buf & mask];                    \
        O[I] = uint8_t(e0 >> 8);                          \
        O[I + 1] = uint8_t(e1 >> 8);                      \
        O[I + 2] = uint8_t(e2 >> 8);                      \
        O[I + 3] = uint8_t(e3 >> 8);                      \
        I += 4;                                           \
        Q += (e0 + e1 + e2 + e3) & 255; /* bits <= 48: no carry */ \
    }
#define MS_HUFF_ROUND(P, TAB, B, Q, O, I) \
    if (P) MS_HUFF_ROUND2(TAB, B, Q, O, I) else MS_HUFF_ROUND1(TAB, B, Q, O, I)

// Byte stores would force reloads of struct fields (uint8_t aliases anything): the loops
// keep each stream's state in locals.
#define MS_HUFF_LOCALS(J)                                         \
    const uint8_t* __restrict b##J = st[J].s;                     \
    uint8_t* __restrict o##J = st[J].out;                         \
    uint64_t q##J = st[J].pos;                                    \
    size_t i##J = st[J].i;
#define MS_HUFF_STORE(J) st[J].pos = q##J, st[J].i = i##J;

// Each stream alone while it is still far from its end (streams end unevenly).
template <bool P, class E>
__attribute__((always_inline)) inline void run_single(Stream& s, const E* __restrict tab) {
    const uint64_t mask = (1u << kMaxLen) - 1;
    const uint8_t* __restrict b = s.s;
    uint8_t* __restrict o = s.out;
    for (size_t n; (n = safe_rounds(s)) > 0;) {
        uint64_t q = s.pos;
        size_t i = s.i;
        for (size_t r = 0; r < n; r++) MS_HUFF_ROUND(P, tab, b, q, o, i)
        s.pos = q;
        s.i = i;
    }
}

// The 4 streams of one plane interleaved: independent dependency chains.
template <bool P, class E>
__attribute__((always_inline)) inline void run_bulk(Stream* st, const E* __restrict tab) {
    const uint64_t mask = (1u << kMaxLen) - 1;
    static_assert(kStreams == 4, "the interleaved loop below assumes 4 streams");
    for (;;) {
        size_t n = SIZE_MAX;
        for (int j = 0; j < 4; j++) n = std::min(n, safe_rounds(st[j]));
        if (n == 0) break;
        MS_HUFF_LOCALS(0) MS_HUFF_LOCALS(1) MS_HUFF_LOCALS(2) MS_HUFF_LOCALS(3)
        for (size_t r = 0; r < n; r++) {
            MS_HUFF_ROUND(P, tab, b0, q0, o0, i0)
            MS_HUFF_ROUND(P, tab, b1, q1, o1, i1)
            MS_HUFF_ROUND(P, tab, b2, q2, o2, i2)
            MS_HUFF_ROUND(P, tab, b3, q3, o3, i3)
        }
        MS_HUFF_STORE(0) MS_HUFF_STORE(1) MS_HUFF_STORE(2) MS_HUFF_STORE(3)
    }
    for (int j = 0; j < 4; j++) run_single<P>(st[j], tab);
}

#undef MS_HUFF_STORE
#undef MS_HUFF_LOCALS
#undef MS_HUFF_ROUND
#undef MS_HUFF_ROUND1
#undef MS_HUFF_ROUND2

// Symbol by symbol with every check: the ends of the streams, and incomplete codes.
void run_checked(Stream& st, const uint16_t* one, const char* who) {
    const uint64_t mask = (1u << kMaxLen) - 1;
    for (; st.i < st.count; st.i++) {
        if (st.pos > st.lim) throw std::runtime_error(std::string(who) + ": bit stream overrun");
        uint64_t buf = load_safe(st.s, st.avail, size_t(st.pos >> 3)) >> (st.pos & 7);
        uint16_t e = one[buf & mask];
        unsigned l = e & 255;
        if (!l) throw std::runtime_error(std::string(who) + ": invalid code");
        st.out[st.i] = uint8_t(e >> 8);
        st.pos += l;
    }
}

}  // namespace

size_t encode_bytes(const uint8_t* src, size_t count, const uint8_t len[256], uint8_t* dst) {
    uint16_t code[256] = {};
    canonical_codes(len, 256, code);
    uint8_t* out = dst + kStreamHeader;
    for (int j = 0; j < kStreams; j++) {
        size_t a, m;
        segment(count, j, &a, &m);
        size_t w = encode_stream(src + a, m, len, code, out);
        if (j < kStreams - 1) put_u32(dst + 4 * j, uint32_t(w));
        out += w;
    }
    return size_t(out - dst);
}

namespace {

// Splits a job into its streams (checked) and builds its tables.
void prepare(const Job& job, Stream* st, Tables& t) {
    if (job.size < kStreamHeader) throw std::runtime_error(std::string(job.who) + ": truncated stream sizes");
    const uint8_t* data = job.src + kStreamHeader;
    const uint8_t* const end = job.src + job.size;
    size_t left = job.size - kStreamHeader;
    for (int j = 0; j < kStreams; j++) {
        size_t w = j < kStreams - 1 ? get_u32(job.src + 4 * j) : left;
        if (w > left) throw std::runtime_error(std::string(job.who) + ": segment overruns the plane");
        size_t a, m;
        segment(job.count, j, &a, &m);
        st[j] = Stream{data, size_t(end - data), uint64_t(w) * 8, 0, job.dst + a, 0, m};
        data += w;
        left -= w;
    }
    build_tables(job.len, t);
}

// The end of each stream, checked: an incomplete code (only in corrupt data) has invalid
// windows, so it is decoded here entirely.
void finish(const Job& job, Stream* st, const Tables& t) {
    for (int j = 0; j < kStreams; j++) {
        run_checked(st[j], t.one, job.who);
        // The stream must end in its last byte: overruns read into the next stream.
        if (st[j].pos > st[j].lim || st[j].lim - st[j].pos >= 8)
            throw std::runtime_error(std::string(job.who) + ": bit stream length mismatch");
    }
}

}  // namespace

namespace {

// The fast loops, compiled twice (they are always inlined): for any x86-64, and with
// BMI2, whose one-uop variable shifts (shrx) decode ~15% faster. noipa: specialised for
// the thread-local `tables`, GCC re-derived its address (a __tls_get_addr call) inside
// the loops instead of keeping it in a register.
__attribute__((noipa)) void run_fast(Stream* st, const Tables& t) {
    if (t.many)
        run_bulk<true>(st, t.multi);
    else
        run_bulk<false>(st, t.one);
}
#ifdef MODELSTORE_X86_TARGETS
__attribute__((target("bmi2"), noipa)) void run_fast_bmi2(Stream* st, const Tables& t) {
    if (t.many)
        run_bulk<true>(st, t.multi);
    else
        run_bulk<false>(st, t.one);
}
#endif

}  // namespace

void decode_bytes(const Job* jobs, size_t n) {
    Stream st[kStreams];
    Tables& t = opaque(tables);
#ifdef MODELSTORE_X86_TARGETS
    const bool bmi2 = cpu_has_bmi2();
#endif
    for (size_t j = 0; j < n; j++) {
        prepare(jobs[j], st, t);
        if (jobs[j].complete) {
#ifdef MODELSTORE_X86_TARGETS
            if (bmi2)
                run_fast_bmi2(st, t);
            else
#endif
                run_fast(st, t);
        }
        finish(jobs[j], st, t);
    }
}

void decode_bytes(const uint8_t* src, size_t size, const uint8_t len[256], bool complete, uint8_t* dst,
                  size_t count, const char* who) {
    Job job{src, size, len, complete, dst, count, who};
    decode_bytes(&job, 1);
}

}  // namespace huffman
}  // namespace modelstore
