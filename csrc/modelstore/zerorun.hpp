// zerorun.hpp -- zero-run Huffman coding of one byte plane (xor-planes method 3).
//
// Sparse planes (the high bytes of a checkpoint-to-checkpoint XOR) are mostly zero, and a
// byte Huffman code cannot spend under one bit a byte. Tokens are literals 1..255 and
// zero runs: symbol 256 + b is a run of L zeros with 2^b <= L < 2^(b+1), followed by b
// raw bits holding L - 2^b. Symbol 0 is unused. Layout (see xordelta.hpp): 144 bytes of
// 4-bit code lengths for 288 symbols || u32 byte sizes of segments 0..2 || 4 LSB-first
// bit streams, one per quarter of the plane, decoded interleaved.
#pragma once

#include <cstddef>
#include <cstdint>

namespace modelstore {
namespace zerorun {

constexpr int kSyms = 288;  // 256 literals (0 unused) + 32 zero-run classes

// The coding of one plane, sized before it is written.
struct Plan {
    uint8_t len[kSyms];
    size_t seg_bytes[4] = {};
    size_t size = 0;  // encoded bytes, header included
    const uint64_t* tokens = nullptr;  // the plane's tokens (a per-thread buffer)
    size_t seg_tokens[4] = {};          // end of each segment's tokens
};

// Plan the coding of a plane of `count` bytes (cost: one pass of tokenizing). The plan's
// tokens live in a per-thread buffer until the thread's next plan().
Plan plan(const uint8_t* p, size_t count);

// Write the planned coding of the same plane to dst (plan.size bytes, plus up to 8 bytes
// of slack that may be overwritten), on the thread that planned it, before its next
// plan(). Returns plan.size.
size_t encode(const uint8_t* p, size_t count, const Plan& plan, uint8_t* dst);

// XOR the coded plane (`size` bytes) into acc (count bytes); zero runs cost nothing.
// Throws std::runtime_error on corruption; never reads or writes out of bounds.
void apply(const uint8_t* src, size_t size, uint8_t* acc, size_t count);

}  // namespace zerorun
}  // namespace modelstore
