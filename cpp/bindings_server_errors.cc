// adrank._core's set_server_error_log: a Python callable as the process's ServerError sink
// (server_errors.h), called with (model, version, tenant, request_id, message) for each call answered
// INTERNAL. It runs on the core's worker that answered, with the GIL taken for the call only; an exception it
// raises is reported as unraisable (it must not reach the worker). None removes the sink.
#include <pybind11/pybind11.h>

#include <memory>
#include <utility>

#include "bindings_common.h"
#include "server_errors.h"

namespace py = pybind11;

namespace adrank {
namespace {

// The callable, released with the GIL on whichever thread drops the last sink holding it.
struct PyLog {
  explicit PyLog(py::object f) : fn(std::move(f)) {}
  ~PyLog() {
    if (!Py_IsInitialized() || PythonFinalizing()) {
      fn.release();  // the interpreter is going away: leak the reference rather than touch it
      return;
    }
    py::gil_scoped_acquire acquire;
    fn = py::object();
  }
  py::object fn;
};

}  // namespace

void BindServerErrors(py::module_& m) {
  m.def(
      "set_server_error_log",
      [](py::object log) {
        if (log.is_none()) {
          py::gil_scoped_release release;  // the old sink's release takes the GIL itself
          SetServerErrorSink(nullptr);
          return;
        }
        auto held = std::make_shared<PyLog>(std::move(log));
        py::gil_scoped_release release;
        SetServerErrorSink([held](const ServerError& error) {
          if (!Py_IsInitialized() || PythonFinalizing()) return;
          py::gil_scoped_acquire acquire;
          try {
            held->fn(error.model, error.version, error.tenant, error.request_id, error.message);
          } catch (py::error_already_set& raised) {
            raised.discard_as_unraisable("adrank server error log");
          }
        });
      },
      py::arg("log"),
      "Calls log(model, version, tenant, request_id, message) for each call answered INTERNAL (None: stop).");
}

}  // namespace adrank
