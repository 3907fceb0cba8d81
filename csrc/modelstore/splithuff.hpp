// splithuff.hpp -- float-aware lossless chunk codec: byte-plane split + canonical Huffman.
//
// A float's high byte (sign + exponent) carries ~3 bits of information in trained weights;
// its mantissa bytes are close to random. The codec de-interleaves the k bytes of each
// element into k planes and codes each plane on its own: Huffman where that saves >= 3 %,
// a single byte where the plane is constant, raw otherwise (the idea behind ZipNN and
// DFloat11). Encoding and decoding run at several GB/s per core and hold no Python state,
// so callers release the GIL and run one chunk per thread.
//
// Payload layout (little-endian):
//   u8 version (=1) || u8 k || k x { u8 method, u8 constant, u32 size } || plane data...
//   method 0 raw: `size` bytes, the plane as is
//   method 1 huffman: 128 bytes of 4-bit code lengths (symbol 2i in the low nibble of
//            byte i), then `size - 128` bytes of LSB-first bit stream
//   method 2 constant: every byte of the plane equals `constant`; size == 0
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace modelstore {
namespace splithuff {

constexpr int kMaxLen = 12;  // code length limit: the decode table has 4096 entries

// Upper bound of the encoded size of n bytes with k planes.
size_t bound(size_t n, int k);

// Encode n bytes (n % k == 0, 1 <= k <= 8) into dst (capacity >= bound(n, k)).
// Returns the encoded size.
size_t encode(const uint8_t* src, size_t n, int k, uint8_t* dst);

// Decode `size` bytes of payload into exactly n bytes. Throws std::runtime_error on any
// corruption (never reads or writes out of bounds).
void decode(const uint8_t* src, size_t size, uint8_t* dst, size_t n);

}  // namespace splithuff
}  // namespace modelstore
