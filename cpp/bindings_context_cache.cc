// adrank._core's ContextCache binding (cpp/context_cache.h): a batch's lookups and inserts in one call each,
// over the rows of a numpy array, with the GIL released while the cache is read or written. Binding only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bindings_common.h"
#include "context_cache.h"

namespace py = pybind11;

namespace adrank {
namespace {

// Views of the keys' bytes; valid while the caller's list of bytes objects lives (the whole call).
std::vector<std::string_view> KeyViews(const std::vector<py::bytes>& keys) {
  std::vector<std::string_view> views;
  views.reserve(keys.size());
  for (const py::bytes& key : keys) {
    char* data = nullptr;
    Py_ssize_t size = 0;
    PyBytes_AsStringAndSize(key.ptr(), &data, &size);
    views.emplace_back(data, static_cast<size_t>(size));
  }
  return views;
}

// The bytes of each of the array's rows: one row per key, C-contiguous.
size_t RowBytes(const py::array& rows, size_t keys, const char* what) {
  if (!(rows.flags() & py::array::c_style)) {
    throw StatusError(InvalidArgument(std::string(what) + ": the array must be C-contiguous"));
  }
  if (rows.ndim() < 1 || static_cast<size_t>(rows.shape(0)) != keys) {
    throw StatusError(
        InvalidArgument(std::string(what) + ": one row per key is needed (" + std::to_string(keys) + " keys)"));
  }
  return keys == 0 ? 0 : static_cast<size_t>(rows.nbytes()) / keys;
}

py::dict StatsDict(const ContextCacheStats& s) {
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["insertions"] = s.insertions;
  d["evictions"] = s.evictions;
  d["bytes"] = s.bytes;
  d["entries"] = s.entries;
  d["max_bytes"] = s.max_bytes;
  return d;
}

// Fills out[i] for every key found; returns the indices of the keys not found, ascending.
py::array_t<int64_t> LookupRows(ContextCache& cache, const std::vector<py::bytes>& keys, py::array out) {
  const std::vector<std::string_view> views = KeyViews(keys);
  const size_t row_bytes = RowBytes(out, views.size(), "lookup: out");
  if (!out.writeable()) throw StatusError(InvalidArgument("lookup: out must be writeable"));
  auto* base = static_cast<uint8_t*>(out.mutable_data());
  std::vector<int64_t> misses;
  {
    py::gil_scoped_release release;
    for (size_t i = 0; i < views.size(); ++i) {
      if (!cache.Lookup(views[i], base + i * row_bytes, row_bytes)) misses.push_back(static_cast<int64_t>(i));
    }
  }
  return py::array_t<int64_t>(static_cast<py::ssize_t>(misses.size()), misses.data());
}

void InsertRows(ContextCache& cache, const std::vector<py::bytes>& keys, const py::array& values) {
  const std::vector<std::string_view> views = KeyViews(keys);
  const size_t row_bytes = RowBytes(values, views.size(), "insert: values");
  const auto* base = static_cast<const uint8_t*>(values.data());
  py::gil_scoped_release release;
  for (size_t i = 0; i < views.size(); ++i) cache.Insert(views[i], base + i * row_bytes, row_bytes);
}

}  // namespace

void BindContextCache(py::module_& m) {
  py::class_<ContextCache, std::shared_ptr<ContextCache>>(m, "ContextCache")
      .def(py::init([](size_t max_bytes) {
             ContextCacheOptions options;
             options.max_bytes = max_bytes;
             return std::make_shared<ContextCache>(options);
           }),
           py::arg("max_bytes") = ContextCacheOptions().max_bytes)
      .def("lookup", &LookupRows, py::arg("keys"), py::arg("out"),
           "Copies the cached row of each key found into out[i] (out: one C-contiguous row per key); returns the "
           "indices of the keys not found.")
      .def("insert", &InsertRows, py::arg("keys"), py::arg("values"),
           "Stores values[i] (one C-contiguous row per key) for each key, evicting the least recently used.")
      .def("clear", &ContextCache::Clear, py::call_guard<py::gil_scoped_release>())
      .def("stats", [](const ContextCache& c) { return StatsDict(c.stats()); })
      .def_property_readonly("max_bytes", &ContextCache::max_bytes)
      .def_property_readonly_static("entry_overhead_bytes",
                                    [](const py::object&) { return ContextCache::kEntryOverheadBytes; });
}

}  // namespace adrank
