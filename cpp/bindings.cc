// adrank._core: the Python binding of the core. It only binds; the logic lives in the plain C++
// that the C++ tests use directly. This file: the module, its types and options, requests (submit,
// PendingRequest), the memory pool, completion queue, models and thread pool. One concept a file besides:
// bindings_backend.cc (Python backends), bindings_registry.cc (versions, rollout, stats),
// bindings_rank.cc (the Rank contract and the C++ front end), bindings_cuda.cc (the CUDA runtime).
//
// GIL discipline (the hot path runs without it):
//   - submit: reads the numpy buffers with the GIL, releases it for the core's Submit;
//   - wait: releases it while blocked;
//   - gather, scatter, queueing and completion run on worker threads that never take it, except to
//     call a Python backend, and then only for the call itself;
//   - completions reach asyncio through a CompletionQueue (an eventfd), not through Python calls.
// Input arrays are kept alive by the PendingRequest until the request completes: dropping a
// PendingRequest that is still running waits (without the GIL) for it to finish.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "batch.h"
#include "batcher.h"
#include "bindings_common.h"
#include "completion_queue.h"
#include "cuda_runtime.h"
#include "memory_pool.h"
#include "model_registry.h"
#include "outcome.h"
#include "request.h"
#include "status.h"
#include "tensor.h"
#include "thread_pool.h"
#include "version_stats.h"

namespace py = pybind11;

namespace adrank {

// ---- dtypes ---------------------------------------------------------------------------------

std::optional<DType> DTypeOf(const py::dtype& dt) {
  const char byteorder = dt.byteorder();
  // Non-native byte order would be read wrongly by the backend: refuse rather than guess.
  if (byteorder == '>') return std::nullopt;
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f')
    return size == 4   ? DType::kFloat32
           : size == 8 ? DType::kFloat64
           : size == 2 ? DType::kFloat16
                       : std::optional<DType>();
  if (kind == 'i') {
    switch (size) {
      case 8:
        return DType::kInt64;
      case 4:
        return DType::kInt32;
      case 2:
        return DType::kInt16;
      case 1:
        return DType::kInt8;
    }
  }
  if (kind == 'u' && size == 1) return DType::kUInt8;
  if (kind == 'b' && size == 1) return DType::kBool;
  return std::nullopt;
}

py::dtype NumpyDType(DType dtype) { return py::dtype(std::string(DTypeName(dtype))); }

DType ParseDTypeOrThrow(const std::string& name) {
  std::optional<DType> dtype = ParseDType(name);
  if (!dtype) throw py::value_error("unknown dtype '" + name + "'");
  return *dtype;
}

namespace {

// ---- outputs and results --------------------------------------------------------------------

// Owns an output's bytes; a numpy array over them keeps it alive as its base.
struct OutputBuffer {
  std::vector<uint8_t> data;
};

py::array ToNumpy(OutputTensor&& tensor) {
  py::object owner = py::cast(OutputBuffer{std::move(tensor.data)});
  auto& buffer = owner.cast<OutputBuffer&>();
  return py::array(NumpyDType(tensor.dtype), tensor.shape, buffer.data.data(), owner);
}

struct PyResult {
  py::dict outputs;
  RequestTiming timing;
};

// The request's result, set by its completion (a worker thread, no GIL) and read by the Python side.
using PendingState = Outcome<RequestResult>;

class PendingRequest {
 public:
  PendingRequest(std::shared_ptr<PendingState> state, std::shared_ptr<ModelQueue> model, uint64_t token)
      : state_(std::move(state)), model_(std::move(model)), token_(token) {}

  ~PendingRequest() {
    // The core still reads the input arrays held in keepalive_: let it finish first.
    if (!handle_ || done()) return;
    py::gil_scoped_release release;
    state_->Wait();
  }

  bool done() const { return state_->done(); }

  // Blocks (without the GIL) until done or `timeout_s` passes; raises CoreError on failure.
  py::object Wait(std::optional<double> timeout_s) {
    const Timeout timeout = ParseTimeout(timeout_s);
    bool done = true;
    {
      py::gil_scoped_release release;
      if (timeout.kind == Timeout::kNone) {
        state_->Wait();
      } else {
        done = state_->WaitFor(timeout.after);
      }
    }
    if (!done) {
      PyErr_SetString(PyExc_TimeoutError, "request not complete within the wait timeout");
      throw py::error_already_set();
    }
    return Result();
  }

  // The outcome of a finished request (converted once, then cached).
  py::object Result() {
    if (!done()) throw py::value_error("request is not complete yet");
    RequestResult& result = state_->value();
    if (!result.status.ok()) throw StatusError(result.status);
    if (!result_) {
      PyResult r;
      for (OutputTensor& out : result.outputs) {
        std::string name = out.name;
        r.outputs[py::str(name)] = ToNumpy(std::move(out));
      }
      result.outputs.clear();
      r.timing = result.timing;
      result_ = py::cast(std::move(r));
    }
    return *result_;
  }

  bool Cancel() {
    py::gil_scoped_release release;
    return model_->Cancel(handle_);
  }

  uint64_t token() const { return token_; }

  RequestHandle handle_;
  std::vector<py::object> keepalive_;

 private:
  std::shared_ptr<PendingState> state_;
  std::shared_ptr<ModelQueue> model_;
  uint64_t token_;
  std::optional<py::object> result_;
};

// ---- submit ---------------------------------------------------------------------------------

bool IsMapping(const py::handle& object) {
  if (PyDict_Check(object.ptr())) return true;
  const int is_mapping =
      PyObject_IsInstance(object.ptr(), py::module_::import("collections.abc").attr("Mapping").ptr());
  if (is_mapping < 0) throw py::error_already_set();
  return is_mapping == 1;
}

void AddViews(const py::handle& mapping, Role role, std::vector<TensorView>* views,
              std::vector<py::object>* keepalive) {
  if (mapping.is_none()) return;
  const char* where = role == Role::kContext ? "context" : "candidates";
  if (!IsMapping(mapping)) {
    throw StatusError(InvalidArgument(std::string(where) + " must be a mapping (a dict or any " +
                                      "collections.abc.Mapping) of name -> numpy array, got " +
                                      py::str(py::type::of(mapping).attr("__name__")).cast<std::string>()));
  }
  auto add = [&](const py::handle& key, const py::handle& value) {
    if (!py::isinstance<py::str>(key)) throw StatusError(InvalidArgument(std::string(where) + " keys must be str"));
    std::string name = key.cast<std::string>();
    py::array array = py::array::ensure(value, py::array::c_style);
    if (!array) {
      PyErr_Clear();
      throw StatusError(InvalidArgument("tensor '" + name + "' in " + where + " is not an array"));
    }
    std::optional<DType> dtype = DTypeOf(array.dtype());
    if (!dtype) {
      throw StatusError(InvalidArgument("tensor '" + name + "' has an unsupported dtype " +
                                        py::str(array.dtype()).cast<std::string>()));
    }
    TensorView view;
    view.name = std::move(name);
    view.dtype = *dtype;
    view.shape.assign(array.shape(), array.shape() + array.ndim());
    view.data = array.data();
    view.byte_size = static_cast<size_t>(array.nbytes());
    views->push_back(std::move(view));
    keepalive->push_back(std::move(array));
  };
  if (PyDict_Check(mapping.ptr())) {
    for (auto item : py::reinterpret_borrow<py::dict>(mapping)) add(item.first, item.second);
    return;
  }
  // Any other Mapping (a MappingProxyType, a custom class) through its own items().
  PyObject* items = PyMapping_Items(mapping.ptr());
  if (!items) throw py::error_already_set();
  for (auto item : py::reinterpret_steal<py::list>(items)) {
    if (!PyTuple_Check(item.ptr()) || PyTuple_GET_SIZE(item.ptr()) != 2) {
      throw StatusError(InvalidArgument(std::string(where) + ".items() must yield (name, array) pairs"));
    }
    add(PyTuple_GET_ITEM(item.ptr(), 0), PyTuple_GET_ITEM(item.ptr(), 1));
  }
}

std::unique_ptr<PendingRequest> Submit(const std::shared_ptr<ModelQueue>& model, const py::object& candidates,
                                       const py::object& context, std::optional<double> timeout_s, int priority,
                                       std::string tenant, std::shared_ptr<CompletionQueue> completion_queue,
                                       uint64_t token) {
  const Timeout timeout = ParseTimeout(timeout_s);
  auto state = std::make_shared<PendingState>();
  auto pending = std::make_unique<PendingRequest>(state, model, token);
  Request request;
  AddViews(candidates, Role::kCandidate, &request.candidates, &pending->keepalive_);
  AddViews(context, Role::kContext, &request.context, &pending->keepalive_);
  request.priority = priority;
  request.tenant = std::move(tenant);
  request.deadline = DeadlineOf(timeout);
  request.on_complete = [state, completion_queue, token](RequestResult&& result) {
    state->Set(std::move(result));
    if (completion_queue) completion_queue->Push(token);
  };
  Status status;
  {
    py::gil_scoped_release release;
    status = model->Submit(std::move(request), &pending->handle_);
  }
  ThrowIfError(status);
  return pending;
}

// ---- objects with lifetimes -----------------------------------------------------------------

class PyThreadPool {
 public:
  explicit PyThreadPool(const ThreadPoolOptions& options) { ThrowIfError(ThreadPool::Create(options, &pool_)); }
  ~PyThreadPool() { Shutdown(); }

  std::shared_ptr<ModelQueue> AddModel(std::string name, const ModelSignature& signature, py::object backend,
                                       const BatcherOptions& batching, int instances) {
    ModelOptions options;
    options.name = std::move(name);
    options.signature = signature;
    options.batching = batching;
    options.instances = instances;
    options.backend = MakeBackend(std::move(backend));
    std::shared_ptr<ModelQueue> model;
    ThrowIfError(pool_->AddModel(std::move(options), &model));
    return model;
  }

  void RemoveModel(const std::shared_ptr<ModelQueue>& model) {
    Status status;
    {
      py::gil_scoped_release release;
      status = pool_->RemoveModel(model);
    }
    ThrowIfError(status);
  }

  void Shutdown() {
    py::gil_scoped_release release;
    pool_->Shutdown();
  }

  ThreadPool& pool() { return *pool_; }

 private:
  std::unique_ptr<ThreadPool> pool_;
};

py::dict MemoryStats(const MemoryPoolStats& s) {
  py::dict d;
  d["total_bytes"] = s.total_bytes;
  d["in_use_bytes"] = s.in_use_bytes;
  d["locked_bytes"] = s.locked_bytes;
  d["locked"] = s.locked;
  d["leases"] = s.leases;
  d["misses"] = s.misses;
  d["cap_rejections"] = s.cap_rejections;
  d["lock_failures"] = s.lock_failures;
  d["allocator"] = s.allocator;
  return d;
}

py::dict ModelStats(const BatcherStats& s) {
  py::dict d;
  d["submitted"] = s.submitted;
  d["rejected_invalid"] = s.rejected_invalid;
  d["rejected_queue_full"] = s.rejected_queue_full;
  d["rejected_expired"] = s.rejected_expired;
  d["rejected_closed"] = s.rejected_closed;
  d["rejected_tenant"] = s.rejected_tenant;
  d["rejected_denied"] = s.rejected_denied;
  d["completed_ok"] = s.completed_ok;
  d["failed"] = s.failed;
  d["late"] = s.late;
  d["expired"] = s.expired;
  d["shed"] = s.shed;
  d["cancelled"] = s.cancelled;
  d["batches"] = s.batches;
  d["batch_rows"] = s.batch_rows;
  d["batch_rows_counts"] = CountsArray(s.batch_rows_counts);
  d["queued_rows"] = s.queued_rows;
  d["queued_requests"] = s.queued_requests;
  return d;
}

py::list TenantStatsList(const std::vector<TenantStats>& tenants) {
  py::list out;
  for (const TenantStats& t : tenants) {
    py::dict d;
    d["tenant"] = t.tenant;
    d["queued_rows"] = t.queued_rows;
    d["queued_requests"] = t.queued_requests;
    d["in_flight"] = t.in_flight;
    d["submitted"] = t.submitted;
    d["rows"] = t.rows;
    d["completed_ok"] = t.completed_ok;
    d["deadline"] = t.deadline;
    d["refused_limit"] = t.refused_limit;
    d["refused_denied"] = t.refused_denied;
    d["failed"] = t.failed;
    out.append(std::move(d));
  }
  return out;
}

void LogWarning(const std::string& message) {
  py::gil_scoped_acquire acquire;
  try {
    py::module_::import("logging").attr("getLogger")("adrank.core").attr("warning")(message);
  } catch (py::error_already_set&) {
    PyErr_Clear();  // logging unavailable (interpreter shutting down): nothing better to do
  }
}

void BindTypes(py::module_& m) {
  py::enum_<Role>(m, "Role").value("CANDIDATE", Role::kCandidate).value("CONTEXT", Role::kContext);
  py::enum_<ContextLayout>(m, "ContextLayout")
      .value("BROADCAST", ContextLayout::kBroadcast)
      .value("PER_REQUEST", ContextLayout::kPerRequest);

  py::class_<TensorSpec>(m, "TensorSpec")
      .def(py::init([](std::string name, const std::string& dtype, std::vector<int64_t> row_shape, Role role) {
             return TensorSpec{std::move(name), ParseDTypeOrThrow(dtype), std::move(row_shape), role};
           }),
           py::arg("name"), py::arg("dtype"), py::arg("row_shape") = std::vector<int64_t>{},
           py::arg("role") = Role::kCandidate)
      .def_readonly("name", &TensorSpec::name)
      .def_property_readonly("dtype", [](const TensorSpec& s) { return std::string(DTypeName(s.dtype)); })
      .def_readonly("row_shape", &TensorSpec::row_shape)
      .def_readonly("role", &TensorSpec::role)
      .def("__repr__", [](const TensorSpec& s) {
        return "TensorSpec('" + s.name + "', '" + DTypeName(s.dtype) + "', " +
               py::repr(py::cast(s.row_shape)).cast<std::string>() +
               (s.role == Role::kContext ? ", CONTEXT)" : ", CANDIDATE)");
      });

  py::class_<ModelSignature>(m, "ModelSignature")
      .def(py::init([](std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs) {
             ModelSignature sig{std::move(inputs), std::move(outputs)};
             ThrowIfError(sig.Validate());
             return sig;
           }),
           py::arg("inputs"), py::arg("outputs"))
      .def_readonly("inputs", &ModelSignature::inputs)
      .def_readonly("outputs", &ModelSignature::outputs);

  py::class_<TenantPolicy>(m, "TenantPolicy")
      .def(py::init<>())
      .def_readwrite("weight", &TenantPolicy::weight)
      .def_readwrite("max_queued_rows", &TenantPolicy::max_queued_rows)
      .def_readwrite("max_in_flight", &TenantPolicy::max_in_flight)
      .def_readwrite("highest_priority", &TenantPolicy::highest_priority);
  py::class_<TenantOptions>(m, "TenantOptions")
      .def(py::init<>())
      .def_readwrite("defaults", &TenantOptions::defaults)
      .def_readwrite("tenants", &TenantOptions::tenants)
      .def_readwrite("max_tenants", &TenantOptions::max_tenants)
      .def("validate", [](const TenantOptions& o) { ThrowIfError(o.Validate()); });
  m.attr("DEFAULT_PRIORITY") = kDefaultPriority;
  m.attr("DEFAULT_TENANT") = kDefaultTenant;

  py::class_<BatcherOptions>(m, "BatcherOptions")
      .def(py::init<>())
      .def_readwrite("max_batch_rows", &BatcherOptions::max_batch_rows)
      .def_readwrite("preferred_batch_rows", &BatcherOptions::preferred_batch_rows)
      .def_readwrite("max_queue_delay_us", &BatcherOptions::max_queue_delay_us)
      .def_readwrite("max_queue_rows", &BatcherOptions::max_queue_rows)
      .def_readwrite("max_request_rows", &BatcherOptions::max_request_rows)
      .def_readwrite("max_batch_requests", &BatcherOptions::max_batch_requests)
      .def_readwrite("priority_levels", &BatcherOptions::priority_levels)
      .def_readwrite("default_priority", &BatcherOptions::default_priority)
      .def_readwrite("max_predicted_wait_us", &BatcherOptions::max_predicted_wait_us)
      .def_readwrite("default_deadline_us", &BatcherOptions::default_deadline_us)
      .def_readwrite("adaptive_lifo_us", &BatcherOptions::adaptive_lifo_us)
      .def_readwrite("tenants", &BatcherOptions::tenants)
      .def_readwrite("idle_dispatch", &BatcherOptions::idle_dispatch)
      .def_readwrite("pad_to_preferred", &BatcherOptions::pad_to_preferred)
      .def_readwrite("context_layout", &BatcherOptions::context_layout);

  py::class_<MemoryPoolOptions>(m, "MemoryPoolOptions")
      .def(py::init<>())
      .def_readwrite("max_bytes", &MemoryPoolOptions::max_bytes)
      .def_readwrite("min_block_bytes", &MemoryPoolOptions::min_block_bytes)
      .def_readwrite("lock_memory", &MemoryPoolOptions::lock_memory)
      .def_readwrite("use_cuda", &MemoryPoolOptions::use_cuda);

  py::class_<OutputBuffer>(m, "_OutputBuffer");

  py::class_<PyResult>(m, "Result")
      .def_readonly("outputs", &PyResult::outputs)
      .def_property_readonly("queue_us", [](const PyResult& r) { return r.timing.queue_us; })
      .def_property_readonly("compute_us", [](const PyResult& r) { return r.timing.compute_us; })
      .def_property_readonly("batch_rows", [](const PyResult& r) { return r.timing.batch_rows; })
      .def_property_readonly("batches", [](const PyResult& r) { return r.timing.batches; });
}

void BindObjects(py::module_& m) {
  py::class_<MemoryPool, std::shared_ptr<MemoryPool>>(m, "MemoryPool")
      .def(py::init([](MemoryPoolOptions options) {
             if (!options.on_warning) options.on_warning = LogWarning;
             std::shared_ptr<MemoryPool> pool;
             ThrowIfError(MemoryPool::Create(options, &pool));
             return pool;
           }),
           py::arg("options") = MemoryPoolOptions())
      .def("stats", [](const MemoryPool& p) { return MemoryStats(p.stats()); })
      .def("trim", [](MemoryPool& p) {
        py::gil_scoped_release release;
        p.Trim();
      });

  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def(py::init([] {
        auto queue = std::make_shared<CompletionQueue>();
        ThrowIfError(queue->status());
        return queue;
      }))
      .def_property_readonly("fd", &CompletionQueue::fd)
      .def("drain", &CompletionQueue::Drain, py::call_guard<py::gil_scoped_release>());

  py::class_<PendingRequest>(m, "PendingRequest")
      .def("wait", &PendingRequest::Wait, py::arg("timeout_s") = py::none())
      .def("result", &PendingRequest::Result)
      .def("done", &PendingRequest::done)
      .def("cancel", &PendingRequest::Cancel)
      .def_property_readonly("token", &PendingRequest::token);

  py::class_<ModelQueue, std::shared_ptr<ModelQueue>>(m, "Model")
      .def_property_readonly("name", &ModelQueue::name)
      .def_property_readonly("instances", &ModelQueue::instances)
      .def("submit", &Submit, py::arg("candidates"), py::arg("context") = py::none(), py::kw_only(),
           py::arg("timeout_s") = py::none(), py::arg("priority") = kDefaultPriority, py::arg("tenant") = "",
           py::arg("completion_queue") = nullptr, py::arg("token") = 0)
      .def("stats", [](const ModelQueue& q) { return ModelStats(q.stats()); })
      .def("tenant_stats", [](const ModelQueue& q) { return TenantStatsList(q.batcher().tenant_stats()); })
      .def_property_readonly("background", &ModelQueue::background)
      .def("predict_execution_us",
           [](const ModelQueue& q, int64_t rows) { return ToMicros(q.batcher().PredictExecution(rows)); });

  py::class_<PyThreadPool>(m, "ThreadPool")
      .def(py::init([](int num_workers, std::shared_ptr<MemoryPool> memory_pool) {
             ThreadPoolOptions options;
             options.num_workers = num_workers;
             if (!memory_pool) {
               // Made here rather than by the core so that its warning reaches the adrank.core logger.
               MemoryPoolOptions pool_options;
               pool_options.on_warning = LogWarning;
               ThrowIfError(MemoryPool::Create(pool_options, &memory_pool));
             }
             options.memory_pool = std::move(memory_pool);
             return std::make_unique<PyThreadPool>(options);
           }),
           py::arg("num_workers") = 0, py::arg("memory_pool") = nullptr)
      .def("add_model", &PyThreadPool::AddModel, py::arg("name"), py::arg("signature"), py::arg("backend"),
           py::arg("batching") = BatcherOptions(), py::arg("instances") = 1)
      .def("remove_model", &PyThreadPool::RemoveModel, py::arg("model"))
      .def("shutdown", &PyThreadPool::Shutdown)
      .def_property_readonly("num_workers", [](PyThreadPool& p) { return p.pool().num_workers(); })
      .def_property_readonly(
          "memory_pool", [](PyThreadPool& p) { return p.pool().memory_pool(); },
          py::return_value_policy::reference_internal);
}

}  // namespace
}  // namespace adrank

PYBIND11_MODULE(_core, m) {
  using namespace adrank;
  m.doc() = "adrank's C++ core: dynamic micro-batcher, pinned memory pool, thread-pool scheduler.";

  py::object core_error = py::reinterpret_steal<py::object>(
      PyErr_NewExceptionWithDoc("adrank._core.CoreError",
                                "A core operation failed. `code` is the gRPC status name (e.g. 'RESOURCE_EXHAUSTED'), "
                                "`grpc_code` its number.",
                                PyExc_RuntimeError, nullptr));
  m.attr("CoreError") = core_error;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      py::object type = py::module_::import("adrank._core").attr("CoreError");
      py::object error = type(e.status.message());
      error.attr("code") = StatusCodeName(e.status.code());
      error.attr("grpc_code") = static_cast<int>(e.status.code());
      PyErr_SetObject(type.ptr(), error.ptr());
    }
  });

  BindTypes(m);
  BindBackend(m);
  BindObjects(m);
  BindRegistry(m);
  BindCuda(m);
  BindContextCache(m);
  m.attr("BATCH_ROWS_BOUNDS") = BatchRowsBucketBounds();
  BindRank(m);
  BindServerErrors(m);
}
