#include "cuda_runtime.h"

#include <dlfcn.h>

#include <cstring>
#include <utility>

namespace adrank {

// Declared by hand so that building needs no CUDA headers. cudaError_t is an enum whose success is 0;
// handles (cudaStream_t) are opaque pointers.
struct CudaRuntime::Api {
  int (*get_device_count)(int* count) = nullptr;
  int (*runtime_get_version)(int* version) = nullptr;
  int (*driver_get_version)(int* version) = nullptr;
  const char* (*get_error_name)(int error) = nullptr;
  const char* (*get_error_string)(int error) = nullptr;
  int (*set_device)(int device) = nullptr;
  int (*get_device_properties)(void* prop, int device) = nullptr;
  int (*device_get_attribute)(int* value, int attribute, int device) = nullptr;
  int (*host_alloc)(void** ptr, size_t bytes, unsigned int flags) = nullptr;
  int (*free_host)(void* ptr) = nullptr;
  int (*malloc)(void** ptr, size_t bytes) = nullptr;
  int (*free)(void* ptr) = nullptr;
  int (*stream_create_with_flags)(void** stream, unsigned int flags) = nullptr;
  int (*stream_destroy)(void* stream) = nullptr;
  int (*stream_synchronize)(void* stream) = nullptr;
  int (*memcpy_async)(void* dst, const void* src, size_t bytes, int kind, void* stream) = nullptr;
};

namespace {

constexpr unsigned int kHostAllocPortable = 0x01;  // cudaHostAllocPortable
constexpr unsigned int kStreamNonBlocking = 0x01;  // cudaStreamNonBlocking
constexpr int kMemcpyHostToDevice = 1;             // cudaMemcpyHostToDevice
constexpr int kMemcpyDeviceToHost = 2;             // cudaMemcpyDeviceToHost
constexpr int kAttrComputeCapabilityMajor = 75;    // cudaDevAttrComputeCapabilityMajor
constexpr int kAttrComputeCapabilityMinor = 76;    // cudaDevAttrComputeCapabilityMinor
// cudaDeviceProp grows with CUDA versions (about 1 KiB in CUDA 13); its first field has always been
// `char name[256]`. The properties are written into a buffer far larger than any version's struct.
constexpr size_t kDevicePropBytes = 16384;
constexpr size_t kDeviceNameBytes = 256;

// Looks up every entry point; the first missing one is named in `missing`.
class SymbolTable {
 public:
  explicit SymbolTable(void* handle) : handle_(handle) {}

  template <typename Fn>
  void Bind(Fn* fn, const char* name) {
    *fn = reinterpret_cast<Fn>(dlsym(handle_, name));
    if (*fn == nullptr && missing_.empty()) missing_ = name;
  }
  const std::string& missing() const { return missing_; }

 private:
  void* handle_;
  std::string missing_;
};

std::unique_ptr<CudaRuntime::Api> BindApi(void* handle, std::string* missing) {
  auto api = std::make_unique<CudaRuntime::Api>();
  SymbolTable table(handle);
  table.Bind(&api->get_device_count, "cudaGetDeviceCount");
  table.Bind(&api->runtime_get_version, "cudaRuntimeGetVersion");
  table.Bind(&api->driver_get_version, "cudaDriverGetVersion");
  table.Bind(&api->get_error_name, "cudaGetErrorName");
  table.Bind(&api->get_error_string, "cudaGetErrorString");
  table.Bind(&api->set_device, "cudaSetDevice");
  table.Bind(&api->get_device_properties, "cudaGetDeviceProperties");
  table.Bind(&api->device_get_attribute, "cudaDeviceGetAttribute");
  table.Bind(&api->host_alloc, "cudaHostAlloc");
  table.Bind(&api->free_host, "cudaFreeHost");
  table.Bind(&api->malloc, "cudaMalloc");
  table.Bind(&api->free, "cudaFree");
  table.Bind(&api->stream_create_with_flags, "cudaStreamCreateWithFlags");
  table.Bind(&api->stream_destroy, "cudaStreamDestroy");
  table.Bind(&api->stream_synchronize, "cudaStreamSynchronize");
  table.Bind(&api->memcpy_async, "cudaMemcpyAsync");
  *missing = table.missing();
  return missing->empty() ? std::move(api) : nullptr;
}

std::string ErrorText(const CudaRuntime::Api& api, int error) {
  const char* name = api.get_error_name(error);
  const char* text = api.get_error_string(error);
  return std::string(name ? name : "cudaError") + " (" + std::to_string(error) + "): " + (text ? text : "");
}

Status CheckRange(const char* what, size_t offset, size_t bytes, size_t size) {
  if (offset > size || bytes > size - offset) {
    return InvalidArgument(std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " +
                           std::to_string(offset) + " do not fit a device buffer of " + std::to_string(size) +
                           " bytes");
  }
  return Status::Ok();
}

}  // namespace

std::shared_ptr<const CudaRuntime> CudaRuntime::Load(const CudaRuntimeOptions& options, CudaProbe* probe) {
  *probe = CudaProbe();
  std::string reasons;
  for (const std::string& name : options.library_names) {
    void* handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) continue;
    std::string missing;
    std::unique_ptr<Api> api = BindApi(handle, &missing);
    if (!api) {
      reasons += name + " lacks " + missing + "; ";
      dlclose(handle);
      continue;
    }
    probe->library = name;
    api->runtime_get_version(&probe->runtime_version);
    api->driver_get_version(&probe->driver_version);
    int count = 0;
    const int error = api->get_device_count(&count);
    if (error != 0 || count <= 0) {
      probe->reason = name + ": " + (error != 0 ? ErrorText(*api, error) : "no device");
      dlclose(handle);
      return nullptr;
    }
    probe->available = true;
    probe->device_count = count;
    // The constructor is private; the object is owned at once.
    return std::shared_ptr<const CudaRuntime>(new CudaRuntime(handle, std::move(api), count));
  }
  probe->reason = reasons.empty() ? "no CUDA runtime library (libcudart) could be loaded" : reasons;
  return nullptr;
}

namespace {

struct DefaultLoad {
  CudaProbe probe;
  std::shared_ptr<const CudaRuntime> runtime;
};

const DefaultLoad& LoadDefault() {
  // Initialised once, thread-safely; immutable afterwards.
  static const DefaultLoad loaded = [] {
    DefaultLoad result;
    result.runtime = CudaRuntime::Load(CudaRuntimeOptions(), &result.probe);
    return result;
  }();
  return loaded;
}

}  // namespace

const std::shared_ptr<const CudaRuntime>& CudaRuntime::Default() { return LoadDefault().runtime; }
const CudaProbe& CudaRuntime::DefaultProbe() { return LoadDefault().probe; }

CudaRuntime::CudaRuntime(void* handle, std::unique_ptr<Api> api, int device_count)
    : handle_(handle), api_(std::move(api)), device_count_(device_count) {}

CudaRuntime::~CudaRuntime() { dlclose(handle_); }

Status CudaRuntime::Check(int error, const char* what) const {
  if (error == 0) return Status::Ok();
  return Internal(std::string(what) + " failed: " + ErrorText(*api_, error));
}

Status CudaRuntime::SetDevice(int device) const {
  if (device < 0 || device >= device_count_) {
    return InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (this machine has " +
                           std::to_string(device_count_) + ")");
  }
  return Check(api_->set_device(device), "cudaSetDevice");
}

Status CudaRuntime::DeviceName(int device, std::string* name) const {
  Status status = SetDevice(device);
  if (!status.ok()) return status;
  std::vector<char> prop(kDevicePropBytes, 0);
  status = Check(api_->get_device_properties(prop.data(), device), "cudaGetDeviceProperties");
  if (!status.ok()) return status;
  *name = std::string(prop.data(), strnlen(prop.data(), kDeviceNameBytes));
  return Status::Ok();
}

Status CudaRuntime::ComputeCapability(int device, int* major, int* minor) const {
  Status status = SetDevice(device);
  if (!status.ok()) return status;
  status = Check(api_->device_get_attribute(major, kAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  if (!status.ok()) return status;
  return Check(api_->device_get_attribute(minor, kAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
}

Status CudaRuntime::HostAlloc(size_t bytes, void** data) const {
  *data = nullptr;
  const int error = api_->host_alloc(data, bytes, kHostAllocPortable);
  if (error != 0 || *data == nullptr) {
    return ResourceExhausted("cudaHostAlloc of " + std::to_string(bytes) + " bytes failed: " + ErrorText(*api_, error));
  }
  return Status::Ok();
}

void CudaRuntime::FreeHost(void* data) const { api_->free_host(data); }

Status DeviceBuffer::Create(std::shared_ptr<const CudaRuntime> runtime, int device, size_t bytes,
                            std::unique_ptr<DeviceBuffer>* out) {
  Status status = runtime->SetDevice(device);
  if (!status.ok()) return status;
  void* data = nullptr;
  const int error = runtime->api_->malloc(&data, bytes == 0 ? 1 : bytes);
  if (error != 0) {
    return ResourceExhausted("cudaMalloc of " + std::to_string(bytes) + " bytes on device " + std::to_string(device) +
                             " failed: " + ErrorText(*runtime->api_, error));
  }
  out->reset(new DeviceBuffer(std::move(runtime), device, data, bytes));
  return Status::Ok();
}

DeviceBuffer::DeviceBuffer(std::shared_ptr<const CudaRuntime> runtime, int device, void* data, size_t bytes)
    : runtime_(std::move(runtime)), device_(device), data_(data), size_(bytes) {}

DeviceBuffer::~DeviceBuffer() {
  runtime_->SetDevice(device_);
  runtime_->api_->free(data_);
}

Status CudaStream::Create(std::shared_ptr<const CudaRuntime> runtime, int device, std::unique_ptr<CudaStream>* out) {
  Status status = runtime->SetDevice(device);
  if (!status.ok()) return status;
  void* stream = nullptr;
  status =
      runtime->Check(runtime->api_->stream_create_with_flags(&stream, kStreamNonBlocking), "cudaStreamCreateWithFlags");
  if (!status.ok()) return status;
  out->reset(new CudaStream(std::move(runtime), device, stream));
  return Status::Ok();
}

CudaStream::CudaStream(std::shared_ptr<const CudaRuntime> runtime, int device, void* stream)
    : runtime_(std::move(runtime)), device_(device), stream_(stream) {}

CudaStream::~CudaStream() {
  // Work still queued finishes first: cudaStreamDestroy returns at once and releases the stream after.
  runtime_->SetDevice(device_);
  runtime_->api_->stream_destroy(stream_);
}

Status CudaStream::CopyToDevice(const DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) const {
  Status status = CheckRange("CopyToDevice", offset, bytes, dst.size());
  if (!status.ok() || bytes == 0) return status;
  status = runtime_->SetDevice(device_);
  if (!status.ok()) return status;
  void* target = static_cast<char*>(dst.data()) + offset;
  return runtime_->Check(runtime_->api_->memcpy_async(target, src, bytes, kMemcpyHostToDevice, stream_),
                         "cudaMemcpyAsync (host to device)");
}

Status CudaStream::CopyToHost(void* dst, const DeviceBuffer& src, size_t offset, size_t bytes) const {
  Status status = CheckRange("CopyToHost", offset, bytes, src.size());
  if (!status.ok() || bytes == 0) return status;
  status = runtime_->SetDevice(device_);
  if (!status.ok()) return status;
  const void* source = static_cast<const char*>(src.data()) + offset;
  return runtime_->Check(runtime_->api_->memcpy_async(dst, source, bytes, kMemcpyDeviceToHost, stream_),
                         "cudaMemcpyAsync (device to host)");
}

Status CudaStream::Synchronize() const {
  return runtime_->Check(runtime_->api_->stream_synchronize(stream_), "cudaStreamSynchronize");
}

}  // namespace adrank
