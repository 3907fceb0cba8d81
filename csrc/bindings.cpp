// bindings.cpp -- the only file that includes pybind11: exposes csrc/modelstore/kernels.hpp as
// the extension module modelstore._native. Python callers should use modelstore.kernels, which
// wraps the returned tuples into the Stats/Delta named tuples.
//
//   chunk_stats(buf, code) -> (n, n_nan, n_inf, sum, sumsq, min, max)
//   chunk_delta(a, b, code, atol=0.0, rtol=0.0)
//       -> (n, sum_d2, sum_a2, sum_b2, sum_ab, max_abs, sum_abs, n_changed, n_changed_tol, n_nonfinite)
//   stats_many(bufs, code, threads=0) -> list of stats tuples
//   delta_many(pairs, code, atol=0.0, rtol=0.0, threads=0) -> list of delta tuples
//
// Buffers: any C-contiguous object with the buffer protocol, read as raw bytes. Bad lengths,
// unequal lengths, unknown codes and non-contiguous buffers raise ValueError. The GIL is
// released around all loops. The *_many functions cut every item into fixed segments of
// kernels::kSegment elements (so one big item is split too), run the segments on a pool of
// std::threads and merge each item's partials in segment order: the result is bit-identical
// to the single-item functions for any thread count.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "modelstore/kernels.hpp"
#include "modelstore/splithuff.hpp"
#include "modelstore/xordelta.hpp"

namespace py = pybind11;
namespace mk = modelstore::kernels;

namespace {

// RAII view on a C-contiguous buffer (raw bytes, any format).
class ByteView {
public:
    explicit ByteView(py::handle obj) {
        if (!PyObject_CheckBuffer(obj.ptr()))
            throw py::type_error(std::string("expected a bytes-like object (buffer protocol), got ") +
                                 Py_TYPE(obj.ptr())->tp_name);
        if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) {
            // e.g. a strided numpy view or memoryview: not raw contiguous bytes.
            std::string msg = "expected a C-contiguous buffer";
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            if (value) {
                PyObject* s = PyObject_Str(value);
                if (s) {
                    const char* c = PyUnicode_AsUTF8(s);
                    if (c) msg += std::string(": ") + c;
                    Py_DECREF(s);
                }
            }
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            PyErr_Clear();
            throw py::value_error(msg);
        }
        owned_ = true;
    }
    ~ByteView() {
        if (owned_) PyBuffer_Release(&view_);
    }
    ByteView(const ByteView&) = delete;
    ByteView& operator=(const ByteView&) = delete;

    const std::uint8_t* data() const { return static_cast<const std::uint8_t*>(view_.buf); }
    std::size_t size() const { return static_cast<std::size_t>(view_.len); }

private:
    Py_buffer view_{};
    bool owned_ = false;
};

py::tuple to_tuple(const mk::Stats& s) {
    return py::make_tuple(s.n, s.n_nan, s.n_inf, s.sum, s.sumsq, s.min, s.max);
}

py::tuple to_tuple(const mk::Delta& d) {
    return py::make_tuple(d.n, d.sum_d2, d.sum_a2, d.sum_b2, d.sum_ab, d.max_abs, d.sum_abs, d.n_changed,
                          d.n_changed_tol, d.n_nonfinite);
}

unsigned resolve_threads(long threads) {
    if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all CPUs)");
    if (threads == 0) {
        const unsigned hc = std::thread::hardware_concurrency();
        return hc == 0 ? 1u : hc;
    }
    return static_cast<unsigned>(std::min<long>(threads, 1024));
}

// Runs fn(task) for task in [0, n_tasks) on up to n_threads threads (the caller is one of them).
// fn must not throw. Falls back to fewer threads if threads cannot be created.
template <class F>
void parallel_tasks(std::size_t n_tasks, unsigned n_threads, std::size_t total_bytes, F&& fn) {
    // Below ~1 MiB of input the thread start-up costs more than it saves.
    constexpr std::size_t kMinParallelBytes = 1u << 20;
    std::size_t workers = std::min<std::size_t>(n_threads, n_tasks);
    if (total_bytes < kMinParallelBytes) workers = 1;
    if (workers <= 1) {
        for (std::size_t t = 0; t < n_tasks; ++t) fn(t);
        return;
    }
    std::atomic<std::size_t> next{0};
    auto worker = [&]() {
        for (;;) {
            const std::size_t t = next.fetch_add(1, std::memory_order_relaxed);
            if (t >= n_tasks) return;
            fn(t);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    for (std::size_t w = 0; w + 1 < workers; ++w) {
        try {
            pool.emplace_back(worker);
        } catch (const std::system_error&) {
            break;  // resource limit: run with the threads we have
        }
    }
    worker();
    for (auto& th : pool) th.join();
}

struct Task {
    std::size_t item, seg;
};

py::tuple py_chunk_stats(py::handle buf, int code) {
    ByteView v(buf);
    mk::Stats s;
    {
        py::gil_scoped_release nogil;
        s = mk::chunk_stats(v.data(), v.size(), code);
    }
    return to_tuple(s);
}

py::tuple py_chunk_delta(py::handle a, py::handle b, int code, double atol, double rtol) {
    ByteView va(a), vb(b);
    mk::Delta d;
    {
        py::gil_scoped_release nogil;
        d = mk::chunk_delta(va.data(), va.size(), vb.data(), vb.size(), code, atol, rtol);
    }
    return to_tuple(d);
}

py::list py_stats_many(py::sequence bufs, int code, long threads) {
    const unsigned n_threads = resolve_threads(threads);
    mk::checked_itemsize(code);
    std::vector<std::unique_ptr<ByteView>> views;
    std::vector<std::size_t> counts, first_task;
    std::vector<Task> tasks;
    std::size_t total_bytes = 0;
    const std::size_t n_items = py::len(bufs);
    views.reserve(n_items);
    for (std::size_t i = 0; i < n_items; ++i) {
        views.push_back(std::make_unique<ByteView>(bufs[i]));
        const std::size_t n = mk::checked_count(views.back()->size(), code);
        counts.push_back(n);
        first_task.push_back(tasks.size());
        for (std::size_t s = 0, ns = mk::num_segments(n); s < ns; ++s) tasks.push_back({i, s});
        total_bytes += views.back()->size();
    }
    first_task.push_back(tasks.size());
    std::vector<mk::StatsPartial> parts(tasks.size());
    std::vector<mk::Stats> out(n_items);
    {
        py::gil_scoped_release nogil;
        parallel_tasks(tasks.size(), n_threads, total_bytes, [&](std::size_t t) {
            const Task& tk = tasks[t];
            parts[t] = mk::stats_segment(views[tk.item]->data(), counts[tk.item], code, tk.seg);
        });
        for (std::size_t i = 0; i < n_items; ++i) {
            mk::StatsPartial acc;
            for (std::size_t t = first_task[i]; t < first_task[i + 1]; ++t) acc.merge(parts[t]);
            out[i] = acc.finish();
        }
    }
    py::list result(n_items);
    for (std::size_t i = 0; i < n_items; ++i) result[i] = to_tuple(out[i]);
    return result;
}

py::list py_delta_many(py::sequence pairs, int code, double atol, double rtol, long threads) {
    const unsigned n_threads = resolve_threads(threads);
    mk::checked_itemsize(code);
    std::vector<std::unique_ptr<ByteView>> va, vb;
    std::vector<std::size_t> counts, first_task;
    std::vector<Task> tasks;
    std::size_t total_bytes = 0;
    const std::size_t n_items = py::len(pairs);
    va.reserve(n_items);
    vb.reserve(n_items);
    for (std::size_t i = 0; i < n_items; ++i) {
        py::object pair = pairs[i];
        if (!PySequence_Check(pair.ptr()) || PySequence_Size(pair.ptr()) != 2) {
            PyErr_Clear();
            throw py::value_error("delta_many: item " + std::to_string(i) + " is not an (a, b) pair");
        }
        py::sequence seq = py::reinterpret_borrow<py::sequence>(pair);
        va.push_back(std::make_unique<ByteView>(seq[0]));
        vb.push_back(std::make_unique<ByteView>(seq[1]));
        const std::size_t n = mk::checked_count(va.back()->size(), code);
        if (va.back()->size() != vb.back()->size())
            throw py::value_error("delta_many: item " + std::to_string(i) + ": buffers differ in length (" +
                                  std::to_string(va.back()->size()) + " vs " +
                                  std::to_string(vb.back()->size()) + " bytes)");
        counts.push_back(n);
        first_task.push_back(tasks.size());
        for (std::size_t s = 0, ns = mk::num_segments(n); s < ns; ++s) tasks.push_back({i, s});
        total_bytes += 2 * va.back()->size();
    }
    first_task.push_back(tasks.size());
    std::vector<mk::DeltaPartial> parts(tasks.size());
    std::vector<mk::Delta> out(n_items);
    {
        py::gil_scoped_release nogil;
        parallel_tasks(tasks.size(), n_threads, total_bytes, [&](std::size_t t) {
            const Task& tk = tasks[t];
            parts[t] = mk::delta_segment(va[tk.item]->data(), vb[tk.item]->data(), counts[tk.item], code, atol,
                                         rtol, tk.seg);
        });
        for (std::size_t i = 0; i < n_items; ++i) {
            mk::DeltaPartial acc;
            for (std::size_t t = first_task[i]; t < first_task[i + 1]; ++t) acc.merge(parts[t]);
            out[i] = acc.finish();
        }
    }
    py::list result(n_items);
    for (std::size_t i = 0; i < n_items; ++i) result[i] = to_tuple(out[i]);
    return result;
}

// -- splithuff codec: bytes in, bytes out; the GIL is released while coding -------------
py::bytes py_splithuff_encode(py::handle buf, int k) {
    ByteView v(buf);
    const std::size_t n = v.size();
    if (k < 1 || k > 8 || n % std::size_t(k)) throw py::value_error("splithuff: length must be a multiple of k in 1..8");
    const std::size_t cap = modelstore::splithuff::bound(n, k);
    PyObject* out = PyBytes_FromStringAndSize(nullptr, Py_ssize_t(cap));  // uninitialised
    if (!out) throw py::error_already_set();
    std::size_t size;
    {
        py::gil_scoped_release release;
        size = modelstore::splithuff::encode(v.data(), n, k, reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out)));
    }
    if (_PyBytes_Resize(&out, Py_ssize_t(size)) != 0) throw py::error_already_set();
    return py::reinterpret_steal<py::bytes>(out);
}

void py_splithuff_decode(py::handle payload, py::handle out) {
    ByteView src(payload);
    Py_buffer dst;
    if (PyObject_GetBuffer(out.ptr(), &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Clear();
        throw py::type_error("splithuff_decode: `out` must be a writable C-contiguous buffer");
    }
    std::string err;
    {
        py::gil_scoped_release release;
        try {
            modelstore::splithuff::decode(src.data(), src.size(), static_cast<uint8_t*>(dst.buf),
                                          std::size_t(dst.len));
        } catch (const std::exception& e) {
            err = e.what();
        }
    }
    PyBuffer_Release(&dst);
    if (!err.empty()) throw py::value_error(err);
}

// -- xordelta codec: (chunk XOR base) in byte planes; many links applied in one call --------
py::bytes py_xordelta_encode(py::handle buf, py::handle base, int k, double min_gain) {
    ByteView v(buf), b(base);
    const std::size_t n = v.size();
    if (b.size() != n) throw py::value_error("xordelta: chunk and base differ in length");
    if (k < 1 || k > 8 || n % std::size_t(k)) throw py::value_error("xordelta: length must be a multiple of k in 1..8");
    const std::size_t cap = modelstore::xordelta::bound(n, k);
    PyObject* out = PyBytes_FromStringAndSize(nullptr, Py_ssize_t(cap));
    if (!out) throw py::error_already_set();
    std::size_t size;
    {
        py::gil_scoped_release release;
        size = modelstore::xordelta::encode(v.data(), b.data(), n, k, reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out)),
                                           min_gain);
    }
    if (_PyBytes_Resize(&out, Py_ssize_t(size)) != 0) throw py::error_already_set();
    return py::reinterpret_steal<py::bytes>(out);
}

void py_xordelta_apply(py::sequence payloads, py::handle out, py::object root) {
    std::unique_ptr<ByteView> root_view;
    if (!root.is_none()) root_view = std::make_unique<ByteView>(root);
    std::vector<std::unique_ptr<ByteView>> views;
    std::vector<const uint8_t*> ptrs;
    std::vector<std::size_t> sizes;
    for (py::handle p : payloads) {
        views.push_back(std::make_unique<ByteView>(p));
        ptrs.push_back(views.back()->data());
        sizes.push_back(views.back()->size());
    }
    Py_buffer dst;
    if (PyObject_GetBuffer(out.ptr(), &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Clear();
        throw py::type_error("xordelta_apply: `out` must be a writable C-contiguous buffer");
    }
    std::string err;
    {
        py::gil_scoped_release release;
        try {
            if (root_view)
                modelstore::xordelta::decode_chain(root_view->data(), root_view->size(), ptrs.data(), sizes.data(),
                                                   ptrs.size(), static_cast<uint8_t*>(dst.buf), std::size_t(dst.len));
            else
                modelstore::xordelta::apply(ptrs.data(), sizes.data(), ptrs.size(), static_cast<uint8_t*>(dst.buf),
                                            std::size_t(dst.len));
        } catch (const std::exception& e) {
            err = e.what();
        }
    }
    PyBuffer_Release(&dst);
    if (!err.empty()) throw py::value_error(err);
}

}  // namespace

#ifndef VERSION_INFO
#define VERSION_INFO "dev"
#endif

PYBIND11_MODULE(_native, m) {
    m.doc() = "modelstore native numeric kernels (see csrc/modelstore/kernels.hpp)";
    m.attr("__version__") = VERSION_INFO;
    m.attr("KERNEL_ABI") = mk::kKernelAbi;
    m.attr("SEGMENT_ELEMS") = mk::kSegment;
    m.def("simd", &mk::simd_info, "Which compiled variant of the hot loops runs (avx2, sse2, neon, ...).");
    m.def(
        "set_simd",
        [](const std::string& name) {
            if (!mk::set_simd(name.c_str()))
                throw py::value_error("unknown or unsupported SIMD variant " + name +
                                      " (auto, baseline, sse2, avx2)");
        },
        py::arg("name"),
        "Force a SIMD variant for tests/benchmarks (process-wide; results are bit-identical).");

    m.def("chunk_stats", &py_chunk_stats, py::arg("buf"), py::arg("code"),
          "(n, n_nan, n_inf, sum, sumsq, min, max) of one raw little-endian buffer.");
    m.def("chunk_delta", &py_chunk_delta, py::arg("a"), py::arg("b"), py::arg("code"), py::arg("atol") = 0.0,
          py::arg("rtol") = 0.0,
          "(n, sum_d2, sum_a2, sum_b2, sum_ab, max_abs, sum_abs, n_changed, n_changed_tol, n_nonfinite).");
    m.def("stats_many", &py_stats_many, py::arg("bufs"), py::arg("code"), py::arg("threads") = 0,
          "chunk_stats over many buffers, multithreaded (threads=0: all CPUs), GIL released.");
    m.def("delta_many", &py_delta_many, py::arg("pairs"), py::arg("code"), py::arg("atol") = 0.0,
          py::arg("rtol") = 0.0, py::arg("threads") = 0,
          "chunk_delta over many (a, b) pairs, multithreaded (threads=0: all CPUs), GIL released.");
    m.def("splithuff_encode", &py_splithuff_encode, py::arg("buf"), py::arg("k"),
          "Byte-plane split + Huffman encode of a chunk of k-byte elements (see splithuff.hpp).");
    m.def("splithuff_decode", &py_splithuff_decode, py::arg("payload"), py::arg("out"),
          "Decode a splithuff payload into the writable buffer `out` (exactly the raw size); ValueError if corrupt.");
    m.def("xordelta_encode", &py_xordelta_encode, py::arg("buf"), py::arg("base"), py::arg("k"), py::arg("min_gain") = 0.0,
          "Encode (buf XOR base) of k-byte elements as byte planes (see xordelta.hpp).");
    m.def("xordelta_apply", &py_xordelta_apply, py::arg("payloads"), py::arg("out"), py::arg("root") = py::none(),
          "XOR every xordelta payload into `out` (the decoded base, exactly the raw size); with `root` (a splithuff "
          "payload) decode root and links together into `out`. ValueError if corrupt.");
}
