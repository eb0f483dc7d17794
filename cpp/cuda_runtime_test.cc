#include "cuda_runtime.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "status_testing.h"

namespace adrank {
namespace {

// The GPU tests need a CUDA runtime that reports a device; elsewhere they skip and say why.
#define REQUIRE_CUDA_DEVICE()                                                      \
  if (!CudaRuntime::Default()) {                                                   \
    GTEST_SKIP() << "needs a CUDA device: " << CudaRuntime::DefaultProbe().reason; \
  }

TEST(CudaRuntimeTest, ReportsALibraryThatIsNotThere) {
  CudaRuntimeOptions options;
  options.library_names = {"libcudart-adrank-does-not-exist.so"};
  CudaProbe probe;
  EXPECT_EQ(CudaRuntime::Load(options, &probe), nullptr);
  EXPECT_FALSE(probe.available);
  EXPECT_TRUE(probe.library.empty());
  EXPECT_PRED2(Contains, probe.reason, "no CUDA runtime library");
}

TEST(CudaRuntimeTest, NamesTheEntryPointALibraryLacks) {
  CudaRuntimeOptions options;
  options.library_names = {"libm.so.6"};  // loads everywhere, exports no CUDA
  CudaProbe probe;
  EXPECT_EQ(CudaRuntime::Load(options, &probe), nullptr);
  EXPECT_FALSE(probe.available);
  EXPECT_PRED2(Contains, probe.reason, "libm.so.6 lacks cudaGetDeviceCount");
}

TEST(CudaRuntimeTest, DefaultProbeAgreesWithTheRuntime) {
  const CudaProbe& probe = CudaRuntime::DefaultProbe();
  const auto& runtime = CudaRuntime::Default();
  EXPECT_EQ(probe.available, runtime != nullptr);
  if (runtime) {
    EXPECT_GT(probe.device_count, 0);
    EXPECT_EQ(runtime->device_count(), probe.device_count);
    EXPECT_TRUE(probe.reason.empty());
  } else {
    // A CPU machine: either no libcudart, or one whose own error says why (no driver, no device).
    EXPECT_FALSE(probe.reason.empty());
    EXPECT_EQ(probe.device_count, 0);
  }
  if (!probe.library.empty()) {
    EXPECT_GE(probe.runtime_version, 11000) << probe.library;
  }
}

TEST(CudaRuntimeTest, DescribesTheDevice) {
  REQUIRE_CUDA_DEVICE();
  const auto& runtime = CudaRuntime::Default();
  std::string name;
  ASSERT_OK(runtime->DeviceName(0, &name));
  EXPECT_FALSE(name.empty());
  int major = 0;
  int minor = -1;
  ASSERT_OK(runtime->ComputeCapability(0, &major, &minor));
  EXPECT_GE(major, 5);
  EXPECT_GE(minor, 0);
  const Status missing = runtime->DeviceName(runtime->device_count(), &name);
  EXPECT_EQ(missing.code(), StatusCode::kInvalidArgument);
  EXPECT_PRED2(Contains, missing.message(), "does not exist");
}

TEST(CudaRuntimeTest, CopiesThroughTheDeviceOnAStream) {
  REQUIRE_CUDA_DEVICE();
  const auto& runtime = CudaRuntime::Default();
  constexpr size_t kCount = 1 << 20;
  void* pinned_in = nullptr;
  void* pinned_out = nullptr;
  ASSERT_OK(runtime->HostAlloc(kCount * sizeof(uint32_t), &pinned_in));
  ASSERT_OK(runtime->HostAlloc(kCount * sizeof(uint32_t), &pinned_out));
  auto* in = static_cast<uint32_t*>(pinned_in);
  auto* out = static_cast<uint32_t*>(pinned_out);
  std::iota(in, in + kCount, 7u);
  std::fill(out, out + kCount, 0u);

  std::unique_ptr<DeviceBuffer> device;
  ASSERT_OK(DeviceBuffer::Create(runtime, 0, kCount * sizeof(uint32_t), &device));
  std::unique_ptr<CudaStream> stream;
  ASSERT_OK(CudaStream::Create(runtime, 0, &stream));
  ASSERT_NE(stream->handle(), nullptr);
  // Two halves into their places, back in one copy: offsets are honoured.
  const size_t half = kCount / 2 * sizeof(uint32_t);
  ASSERT_OK(stream->CopyToDevice(*device, 0, in, half));
  ASSERT_OK(stream->CopyToDevice(*device, half, in + kCount / 2, half));
  ASSERT_OK(stream->CopyToHost(out, *device, 0, 2 * half));
  ASSERT_OK(stream->Synchronize());
  for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(out[i], in[i]) << i;

  // A copy past the end is refused before anything is enqueued.
  const Status beyond = stream->CopyToDevice(*device, half + 4, in, half);
  EXPECT_EQ(beyond.code(), StatusCode::kInvalidArgument);
  EXPECT_PRED2(Contains, beyond.message(), "do not fit");
  runtime->FreeHost(pinned_in);
  runtime->FreeHost(pinned_out);
}

TEST(CudaRuntimeTest, RefusesADeviceThatDoesNotExist) {
  REQUIRE_CUDA_DEVICE();
  const auto& runtime = CudaRuntime::Default();
  std::unique_ptr<CudaStream> stream;
  const Status status = CudaStream::Create(runtime, runtime->device_count() + 3, &stream);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(stream, nullptr);
}

}  // namespace
}  // namespace adrank
