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
//            byte i), u32 byte sizes of segments 0..2, then 4 LSB-first bit streams, one
//            per quarter of the plane (decoded interleaved)
//   method 2 constant: every byte of the plane equals `constant`; size == 0
//
// The one-plane decoder below is shared with the xor-planes delta codec (xordelta.hpp);
// the Huffman coding itself lives in huffman.hpp (shared with zerorun.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace modelstore {
namespace splithuff {

constexpr size_t kPlaneHeader = 6;  // per plane: u8 method, u8 constant, u32 size
constexpr size_t kLengths = 128;    // a Huffman plane's 256 code lengths, 4 bits each
enum PlaneMethod : uint8_t { kRaw = 0, kHuffman = 1, kConst = 2 };

// Writes plane b's header entry (shared with xordelta, whose payloads use the same header).
inline void put_plane_header(uint8_t* hdr, int b, uint8_t method, uint8_t constant, size_t size) {
    uint8_t* h = hdr + size_t(b) * kPlaneHeader;
    h[0] = method;
    h[1] = constant;
    for (int i = 0; i < 4; i++) h[2 + i] = uint8_t(size >> (8 * i));
}

// Upper bound of the encoded size of n bytes with k planes.
size_t bound(size_t n, int k);

// Encode n bytes (n % k == 0, 1 <= k <= 8) into dst (capacity >= bound(n, k)).
// Returns the encoded size.
size_t encode(const uint8_t* src, size_t n, int k, uint8_t* dst);

// A plane's byte histogram (false, freq unspecified, when a strided sample shows a byte
// Huffman code would save < 3 %: a near-random plane, stored raw without a full pass).
bool plane_histogram(const uint8_t* plane, size_t count, uint64_t freq[256]);
// A kHuffman plane's data (code lengths || streams) for the code `len`; returns its size
// (writes up to 8 bytes of slack past it).
size_t encode_huffman_plane(const uint8_t* plane, size_t count, const uint8_t len[256], uint8_t* dst);

// Decode `size` bytes of payload into exactly n bytes. Throws std::runtime_error on any
// corruption (never reads or writes out of bounds).
void decode(const uint8_t* src, size_t size, uint8_t* dst, size_t n);

// Decode `k` planes of `count` bytes each (payload as above, k checked against the
// header) into `planes` (k * count bytes, plane-major), without interleaving them.
void decode_planes(const uint8_t* src, size_t size, int k, size_t count, uint8_t* planes);

// A Huffman-coded plane (method kHuffman data) and where it decodes to.
struct HuffPlane {
    const uint8_t* data;
    size_t size;
    uint8_t* dst;
    size_t count;
};
// Decode n Huffman planes in one batch (tables in reused buffers). Same errors as decode().
void decode_huffman(const HuffPlane* planes, size_t n);

// dst ^= src, n bytes.
void xor_bytes(uint8_t* dst, const uint8_t* src, size_t n);
// Per-thread scratch buffers live between calls (fresh multi-MiB buffers cost page
// faults) unless they grew past kKeepScratch: a long-lived decode pool must not hold
// memory for the largest chunk it ever saw.
constexpr size_t kKeepScratch = size_t(32) << 20;
inline void trim_scratch(std::vector<uint8_t>& v) {
    if (v.capacity() > kKeepScratch) std::vector<uint8_t>().swap(v);
}

// De-interleave count elements of k bytes into k planes, and back (or XOR them back in).
void split(const uint8_t* src, size_t count, int k, uint8_t* planes);
void merge(const uint8_t* planes, size_t count, int k, uint8_t* dst, bool xor_into = false);

// One plane's data (`size` bytes, coded with `method`/`constant`) into dst (count bytes).
// With `xor_into`, XORs the plane into dst instead, using `tmp` (count bytes) for Huffman
// planes. Same errors as decode().
void decode_plane(uint8_t method, uint8_t constant, const uint8_t* data, size_t size, uint8_t* dst, size_t count,
                  bool xor_into, uint8_t* tmp);

}  // namespace splithuff
}  // namespace modelstore
