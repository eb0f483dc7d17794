// CudaRuntime: the CUDA runtime (libcudart), found at run time, and the few things the serving path
// needs from it: page-locked host memory, device memory, streams, and asynchronous copies.
//
// Why at run time: one build of adrank serves on CPU-only machines and on GPU machines. Nothing of
// CUDA is needed to build it: the runtime's C entry points are declared here by hand (they have been
// ABI-stable since CUDA 4) and looked up with dlsym. The memory pool pins its blocks with it
// (cudaHostAlloc), and the GPU backends (python/adrank/backends/) copy each batch's pooled inputs to
// the device and its outputs back on one stream per model instance.
//
// Loading (CudaRuntime::Load): the first of `library_names` that dlopen finds and that exports every
// entry point used here wins; it is usable only if it reports at least one device. Otherwise Load
// returns null and says why in `reason` (no library, a missing symbol, or the runtime's own error:
// "CUDA driver version is insufficient", "no CUDA-capable device is detected", ...). Never a silent
// fallback: the caller logs the reason.
//
// Options (defaults and why):
//   library_names = libcudart.so, .so.13, .so.12, .so.11.0
//                   The unversioned name first (a toolkit's symlink: the version the operator chose),
//                   then the runtimes of the CUDA versions adrank is tested with, newest first.
//
// CudaRuntime::Default() loads once per process with the default options and keeps the result (it
// never changes while the process runs: devices are not hot-plugged under a serving process).
//
// Latency: every call is the CUDA runtime's own. Copies are asynchronous on the stream they are given;
// from page-locked memory they overlap with compute, from pageable memory CUDA stages them (slower,
// still correct). Stream::Synchronize blocks the calling thread until the stream's work is done.
//
// Thread-safety: a CudaRuntime is immutable and may be used from any thread. Each call that depends
// on the current device sets it first (cudaSetDevice is per thread). A Stream or DeviceBuffer may be
// used from any thread, by one at a time: one model instance owns each.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "status.h"

namespace adrank {

struct CudaRuntimeOptions {
  std::vector<std::string> library_names = {"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"};
};

// What a load found: for logs, /metrics and the tests.
struct CudaProbe {
  bool available = false;  // a runtime with at least one device
  std::string library;     // the library name that loaded, empty if none did
  int device_count = 0;
  int runtime_version = 0;  // e.g. 13000 for CUDA 13.0
  int driver_version = 0;   // the newest CUDA version the installed driver supports, 0 if none
  std::string reason;       // why it is not available; empty when it is
};

class CudaRuntime {
 public:
  struct Api;  // the entry points, implementation detail

  // Null when no usable runtime was found; `probe` says what was found either way.
  static std::shared_ptr<const CudaRuntime> Load(const CudaRuntimeOptions& options, CudaProbe* probe);
  // Loaded once per process with the default options.
  static const std::shared_ptr<const CudaRuntime>& Default();
  static const CudaProbe& DefaultProbe();

  ~CudaRuntime();
  CudaRuntime(const CudaRuntime&) = delete;
  CudaRuntime& operator=(const CudaRuntime&) = delete;

  int device_count() const { return device_count_; }
  // The device's marketing name ("NVIDIA H100 80GB HBM3") and compute capability (9, 0).
  Status DeviceName(int device, std::string* name) const;
  Status ComputeCapability(int device, int* major, int* minor) const;

  // Page-locked host memory, portable across CUDA contexts.
  Status HostAlloc(size_t bytes, void** data) const;
  void FreeHost(void* data) const;

 private:
  friend class CudaStream;
  friend class DeviceBuffer;
  CudaRuntime(void* handle, std::unique_ptr<Api> api, int device_count);
  Status Check(int error, const char* what) const;
  Status SetDevice(int device) const;

  void* handle_;  // dlopen'ed library, closed by the destructor
  std::unique_ptr<Api> api_;
  int device_count_;
};

// Device memory (cudaMalloc), freed when destroyed. Keeps the runtime loaded while it lives.
class DeviceBuffer {
 public:
  static Status Create(std::shared_ptr<const CudaRuntime> runtime, int device, size_t bytes,
                       std::unique_ptr<DeviceBuffer>* out);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  int device() const { return device_; }

 private:
  DeviceBuffer(std::shared_ptr<const CudaRuntime> runtime, int device, void* data, size_t bytes);
  std::shared_ptr<const CudaRuntime> runtime_;
  int device_;
  void* data_;
  size_t size_;
};

// A non-blocking stream (it never waits for the legacy default stream), destroyed with the object.
class CudaStream {
 public:
  static Status Create(std::shared_ptr<const CudaRuntime> runtime, int device, std::unique_ptr<CudaStream>* out);
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  // The cudaStream_t, for libraries that take one as an integer (ONNX Runtime, TensorRT).
  void* handle() const { return stream_; }
  int device() const { return device_; }

  // Enqueue a copy of `bytes` from host `src` to `dst` + `offset` (and the reverse); both ranges must
  // lie inside their buffers (INVALID_ARGUMENT otherwise, nothing enqueued). `src`/`dst` host memory
  // must stay valid until Synchronize returns.
  Status CopyToDevice(const DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) const;
  Status CopyToHost(void* dst, const DeviceBuffer& src, size_t offset, size_t bytes) const;
  // Blocks until every operation enqueued on the stream has finished; reports the first failure.
  Status Synchronize() const;

 private:
  CudaStream(std::shared_ptr<const CudaRuntime> runtime, int device, void* stream);
  std::shared_ptr<const CudaRuntime> runtime_;
  int device_;
  void* stream_;
};

}  // namespace adrank
