"""Known-answer chunk ids (docs/FORMAT.md §10) and the chunk-shape rule."""

import numpy as np

from modelstore import chunking, hashing


def test_known_answer_ids():
    assert hashing.hexdigest(b"") == "99aa06d3014798d86001c324468d497f"
    assert hashing.hexdigest(bytes(16)) == "e5189a9599e3f86205ea23ef06e28b2d"
    f32 = np.array([1, 2, 3, 4], dtype="<f4").tobytes()
    assert f32.hex() == "0000803f000000400000404000008040"
    assert hashing.hexdigest(f32) == "2babafcad3709c7ce3b3073547aa9dc3"
    assert hashing.digest(f32).hex() == hashing.hexdigest(f32)


def test_chunk_rule():
    assert chunking.chunk_rows((1000, 256), 4, 1 << 20) == 1024 or chunking.chunk_rows((1000, 256), 4, 1 << 20) == 1000
    assert chunking.chunk_rows((5000, 256), 4, 1 << 20) == 1024
    assert chunking.chunk_rows((10, 10**7), 4, 1 << 20) == 1  # a row larger than the target
    assert chunking.chunk_rows((), 4) == 1
    assert chunking.n_chunks((), 1) == 1
    assert chunking.n_chunks((0, 5), 1) == 0
    spans = list(chunking.chunk_spans((2500, 4), 2, 1000))
    assert spans == [(0, 8000), (8000, 8000), (16000, 4000)]
    assert list(chunking.chunk_spans((), 8, 1)) == [(0, 8)]
