// xordelta.hpp -- XOR-delta codec for a chunk against its base chunk, in the byte-plane domain.
//
// Between two checkpoints a trained weight keeps its sign, exponent and top mantissa bits,
// so (this XOR base), split into byte planes, has high planes that are mostly zero and low
// planes that are close to random. Each plane is coded on its own with whichever is
// smallest: raw, constant, splithuff (byte Huffman, 4 interleaved streams: fast for dense
// planes), split Huffman (the high bits coded, the low bits raw: faster still) or zero-run
// Huffman (literals 1..255 plus zero-run-length tokens: well below one bit per byte on
// sparse planes, where a byte Huffman code cannot go under one bit); an incompressible
// plane is stored as the chunk's own bytes (a value), which ends the chain for that plane.
// Decoding XORs any number of links (per plane, down to the first value) into one
// accumulator in the plane domain and merges it into the output once, so a chain of deltas
// costs one merge, not one per link; per plane, the raw and decoded planes of all links XOR
// in one cache-blocked pass. The Huffman coding is huffman.hpp's (shared with splithuff),
// the zero-run coder is zerorun.hpp.
//
// Payload layout (little-endian):
//   u8 version (=1) || u8 k || k x { u8 method, u8 constant, u32 size } || plane data...
//   method 0 raw: `size` == count bytes, the XOR plane as is
//   method 1 splithuff: a splithuff payload (k = 1) of the plane, `size` bytes
//   method 2 constant: every byte of the XOR plane equals `constant`; size == 0
//   method 3 zero-run Huffman: 144 bytes of 4-bit code lengths for 288 symbols (symbol 2i
//            in the low nibble of byte i; lengths <= 12, canonical codes) || u32 byte sizes
//            of segments 0..2 || 4 LSB-first bit streams, one per segment (segment j holds
//            elements [j*s, min(count, (j+1)*s)), s = ceil(count / 4); decoded interleaved).
//            A stream is tokens until its segment is full, padded to a byte. Symbol 1..255
//            is a literal byte; symbol 256 + b is a run of L zero bytes with 2^b <= L <
//            2^(b+1), followed by b raw bits holding L - 2^b. Symbol 0 is unused.
//   method 5 value: `size` == count bytes, plane b of this chunk itself (not the XOR): how
//            an incompressible plane is stored (the same size as raw), so a reader takes
//            the plane from the topmost link that has it as a value and skips the planes
//            below (on a long chain, most of the bytes it would otherwise XOR through).
//   method 4 split Huffman: `constant` holds L (2 or 4). The high 8 - L bits of each byte
//            as a method-1 Huffman plane (128 bytes of code lengths, only symbols below
//            2^(8 - L) used || u32 sizes of streams 0..2 || 4 streams) || the low L bits of
//            each byte, packed LSB first (byte i's at bit i * L; ceil(count * L / 8) bytes).
//            For dense planes whose low bits are near random: the short code over the high
//            bits decodes several symbols a lookup.
#pragma once

#include <cstddef>
#include <cstdint>

namespace modelstore {
namespace xordelta {

// Upper bound of the encoded size of n bytes with k planes.
size_t bound(size_t n, int k);

// Encode (cur XOR base), n bytes each (n % k == 0, 1 <= k <= 8), into dst (capacity >=
// bound(n, k)). A plane is Huffman-coded only when that saves at least `min_gain` of it
// (a Huffman plane decodes ~10x slower than a raw one). Returns the encoded size.
size_t encode(const uint8_t* cur, const uint8_t* base, size_t n, int k, uint8_t* dst, double min_gain = 0.0);

// Apply m payloads, the links of a chain top first, to out (n bytes, holding the decoded
// base): a plane XORs in, or, stored as a value (method 5), replaces the plane of the
// base and of every link below it, which are then not read. Throws std::runtime_error on any
// corruption, before `out` is modified (never reads or writes out of bounds).
void apply(const uint8_t* const* payloads, const size_t* sizes, size_t m, uint8_t* out, size_t n);

// A whole chain into out (n bytes): its root, a splithuff payload, decoded straight into
// the plane accumulator, then the m links (top first) applied, then one interleave. Same errors as
// apply(); `out` is written only on success.
void decode_chain(const uint8_t* root, size_t root_size, const uint8_t* const* payloads, const size_t* sizes,
                  size_t m, uint8_t* out, size_t n);

}  // namespace xordelta
}  // namespace modelstore
