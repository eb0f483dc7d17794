// adrank._core's CUDA bindings: what the GPU backends need from the runtime found at run time — the probe,
// device buffers, streams and copies (cpp/cuda_runtime.h). Binding only.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings_common.h"
#include "cuda_runtime.h"

namespace py = pybind11;

namespace adrank {
namespace {

// ---- CUDA: what the GPU backends need, from the runtime found at run time ----------------------

const std::shared_ptr<const CudaRuntime>& RequireCuda() {
  const auto& runtime = CudaRuntime::Default();
  if (!runtime) throw StatusError(Unavailable("no CUDA device: " + CudaRuntime::DefaultProbe().reason));
  return runtime;
}

// The bytes of a C-contiguous array: device copies take raw ranges, never strided views.
size_t ContiguousBytes(const py::array& array, const char* what) {
  if (!(array.flags() & py::array::c_style)) {
    throw StatusError(InvalidArgument(std::string(what) + ": the array must be C-contiguous"));
  }
  return static_cast<size_t>(array.nbytes());
}

py::dict CudaProbeDict(const CudaProbe& probe) {
  py::dict d;
  d["available"] = probe.available;
  d["library"] = probe.library;
  d["device_count"] = probe.device_count;
  d["runtime_version"] = probe.runtime_version;
  d["driver_version"] = probe.driver_version;
  d["reason"] = probe.reason;
  return d;
}

}  // namespace

void BindCuda(py::module_& m) {
  m.def(
      "cuda_probe", [] { return CudaProbeDict(CudaRuntime::DefaultProbe()); },
      "What loading the CUDA runtime found: available, library, device_count, runtime_version, "
      "driver_version, reason (why it is not available).");
  m.def(
      "cuda_device_name",
      [](int device) {
        std::string name;
        ThrowIfError(RequireCuda()->DeviceName(device, &name));
        return name;
      },
      py::arg("device"));
  m.def(
      "cuda_compute_capability",
      [](int device) {
        int major = 0;
        int minor = 0;
        ThrowIfError(RequireCuda()->ComputeCapability(device, &major, &minor));
        return py::make_tuple(major, minor);
      },
      py::arg("device"));

  py::class_<DeviceBuffer, std::shared_ptr<DeviceBuffer>>(m, "DeviceBuffer")
      .def(py::init([](int device, size_t bytes) {
             std::unique_ptr<DeviceBuffer> buffer;
             ThrowIfError(DeviceBuffer::Create(RequireCuda(), device, bytes, &buffer));
             return std::shared_ptr<DeviceBuffer>(std::move(buffer));
           }),
           py::arg("device"), py::arg("bytes"))
      .def_property_readonly("ptr", [](const DeviceBuffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_property_readonly("size", &DeviceBuffer::size)
      .def_property_readonly("device", &DeviceBuffer::device);

  py::class_<CudaStream, std::shared_ptr<CudaStream>>(m, "CudaStream")
      .def(py::init([](int device) {
             std::unique_ptr<CudaStream> stream;
             ThrowIfError(CudaStream::Create(RequireCuda(), device, &stream));
             return std::shared_ptr<CudaStream>(std::move(stream));
           }),
           py::arg("device"))
      .def_property_readonly("handle", [](const CudaStream& s) { return reinterpret_cast<uintptr_t>(s.handle()); })
      .def_property_readonly("device", &CudaStream::device)
      .def(
          "copy_to_device",
          [](const CudaStream& s, const DeviceBuffer& dst, const py::array& src, size_t offset) {
            const size_t bytes = ContiguousBytes(src, "copy_to_device: src");
            ThrowIfError(s.CopyToDevice(dst, offset, src.data(), bytes));
          },
          py::arg("dst"), py::arg("src"), py::arg("offset") = 0,
          "Enqueues a copy of `src`'s bytes to `dst` at `offset`; `src` must live until synchronize().")
      .def(
          "copy_to_host",
          [](const CudaStream& s, py::array& dst, const DeviceBuffer& src, size_t offset) {
            if (!dst.writeable()) throw StatusError(InvalidArgument("copy_to_host: dst is read-only"));
            const size_t bytes = ContiguousBytes(dst, "copy_to_host: dst");
            ThrowIfError(s.CopyToHost(dst.mutable_data(), src, offset, bytes));
          },
          py::arg("dst"), py::arg("src"), py::arg("offset") = 0,
          "Enqueues a copy of dst.nbytes bytes from `src` at `offset` into `dst`.")
      .def(
          "synchronize",
          [](const CudaStream& s) {
            Status status;
            {
              py::gil_scoped_release release;
              status = s.Synchronize();
            }
            ThrowIfError(status);
          },
          "Blocks, without the GIL, until the stream's work is done.");
}

}  // namespace adrank
