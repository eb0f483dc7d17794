// adrank._core's Python backends: a Python callable run by the core's workers on each batch, with the
// batch's pooled buffers as numpy views (valid only during the call) and its returned outputs checked and
// copied by the core (batch.h CopyIntoOutput). The worker takes the GIL for the call alone. Binding only.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "batch.h"
#include "bindings_common.h"

namespace py = pybind11;

namespace adrank {
namespace {

// ---- Python backends ------------------------------------------------------------------------

// What a Python backend receives: views over the pooled buffers, valid only during the call.
struct PyBatch {
  py::dict inputs;
  py::dict outputs;
  py::object row_request_index = py::none();
  int64_t rows = 0;
  int64_t real_rows = 0;
  int64_t num_requests = 0;
  int instance = 0;
};

py::array View(const BatchTensor& tensor) {
  // A base object stops numpy from copying; the memory belongs to the pool's lease.
  return py::array(NumpyDType(tensor.spec->dtype), tensor.shape, tensor.data, py::none());
}

// Copies what a backend returned (a dict by name, or a sequence in output order) into io.outputs.
Status CopyReturned(const py::handle& returned, BatchIO& io) {
  for (size_t i = 0; i < io.outputs.size(); ++i) {
    BatchTensor& out = io.outputs[i];
    const std::string& name = out.spec->name;
    py::object value;
    if (py::isinstance<py::dict>(returned)) {
      auto d = py::reinterpret_borrow<py::dict>(returned);
      if (!d.contains(name)) return Internal("backend returned no output '" + name + "'");
      value = d[py::str(name)];
    } else {
      auto seq = py::reinterpret_borrow<py::sequence>(returned);
      if (static_cast<size_t>(py::len(seq)) != io.outputs.size()) {
        return Internal("backend returned " + std::to_string(py::len(seq)) + " outputs, expected " +
                        std::to_string(io.outputs.size()));
      }
      value = seq[i];
    }
    py::array array = py::array::ensure(value, py::array::c_style);
    if (!array) {
      PyErr_Clear();
      return Internal("backend output '" + name + "' is not an array");
    }
    const std::optional<DType> dtype = DTypeOf(array.dtype());
    if (!dtype) {
      return Internal("backend output '" + name + "' has dtype " + py::str(array.dtype()).cast<std::string>() +
                      ", which the core does not take");
    }
    const Status copied = CopyIntoOutput(out, *dtype, array.data(), static_cast<size_t>(array.nbytes()));
    if (!copied.ok()) return copied;
  }
  return Status::Ok();
}

// Holds a Python callable so that it is released with the GIL, whichever thread drops it.
struct PyCallable {
  explicit PyCallable(py::object f) : fn(std::move(f)) {}
  ~PyCallable() {
    py::gil_scoped_acquire acquire;
    fn = py::object();
  }
  py::object fn;
};

// Keeps a core worker's Python thread state from one batch to the next. On a thread Python did not start,
// each gil_scoped_acquire otherwise creates a thread state and deletes it on release (Python 3.11 maps and
// unmaps its frame stack each time): ~80 us per batch measured here, more than the rest of the wrapper.
// The state is deleted when the thread exits, unless the interpreter is already going away.
class KeptThreadState {
 public:
  void Keep(py::gil_scoped_acquire& acquire) {
    if (kept_) return;
    acquire.inc_ref();
    kept_ = true;
  }
  ~KeptThreadState() {
    if (!kept_ || !Py_IsInitialized() || PythonFinalizing()) return;
    py::gil_scoped_acquire acquire;  // finds the kept state
    acquire.dec_ref();               // back to this scope's count: its end deletes the state
  }

 private:
  bool kept_ = false;
};

}  // namespace

Backend MakeBackend(py::object fn) {
  auto callable = std::make_shared<PyCallable>(std::move(fn));
  return [callable](BatchIO& io) -> Status {
    thread_local KeptThreadState kept;
    py::gil_scoped_acquire acquire;
    kept.Keep(acquire);
    try {
      PyBatch batch;
      for (const BatchTensor& t : io.inputs) batch.inputs[py::str(t.spec->name)] = View(t);
      for (const BatchTensor& t : io.outputs) batch.outputs[py::str(t.spec->name)] = View(t);
      if (io.row_request_index) {
        batch.row_request_index = py::array_t<int64_t>({io.rows}, io.row_request_index, py::none());
      }
      batch.rows = io.rows;
      batch.real_rows = io.real_rows;
      batch.num_requests = io.num_requests;
      batch.instance = io.instance;
      py::object returned = callable->fn(py::cast(std::move(batch)));
      if (returned.is_none()) return Status::Ok();
      return CopyReturned(returned, io);
    } catch (py::error_already_set& e) {
      return Internal(std::string("backend raised ") + e.what());
    }
  };
}

void BindBackend(py::module_& m) {
  py::class_<PyBatch>(m, "Batch")
      .def_readonly("inputs", &PyBatch::inputs)
      .def_readonly("outputs", &PyBatch::outputs)
      .def_readonly("row_request_index", &PyBatch::row_request_index)
      .def_readonly("rows", &PyBatch::rows)
      .def_readonly("real_rows", &PyBatch::real_rows)
      .def_readonly("num_requests", &PyBatch::num_requests)
      .def_readonly("instance", &PyBatch::instance);
}

}  // namespace adrank
