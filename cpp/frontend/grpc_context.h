// What every gRPC method of the C++ front end reads from its call and writes back, written once for
// the services on its port (rank_server.cc: Rank; inference_service.cc: KServe v2).
//
// Thread-safety: pure functions of their arguments. Header-only: each is a few lines on the call's path.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>
#include <vector>

#include "clock.h"
#include "status.h"

namespace adrank {

// The request metadata that names the caller's tenant (tenants.h).
inline constexpr char kTenantMetadataKey[] = "x-adrank-tenant";

// The core's codes are gRPC's.
inline grpc::Status ToGrpc(const Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

// The call's gRPC deadline on the core's clock; kNoDeadline when the caller set none.
inline TimePoint CoreDeadline(const grpc::ServerContextBase& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return kNoDeadline;
  const auto remaining = deadline - std::chrono::system_clock::now();
  return SteadyClock::Get()->Now() + std::chrono::duration_cast<Duration>(remaining);
}

// The caller's tenant (tenants.h): its `x-adrank-tenant` metadata, else empty ("default").
inline std::string CallTenant(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kTenantMetadataKey);
  return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

// The metadata gRPC's retry policy adds to every attempt after the first (gRFC A6): its count of earlier ones.
inline constexpr char kPreviousAttemptsKey[] = "grpc-previous-rpc-attempts";
// The same count on every hedged copy after the first, from the client's own hedging
// (python/adrank/client_hedging.py): gRPC's C core does not hedge, and drops an application's grpc-* metadata.
inline constexpr char kHedgedAttemptsKey[] = "x-adrank-previous-attempts";

// Whether the call is a client's retry or hedge: either previous-attempts metadata is there and not "0".
inline bool IsRetry(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  for (const char* key : {kPreviousAttemptsKey, kHedgedAttemptsKey}) {
    auto it = metadata.find(key);
    if (it != metadata.end() && !(it->second.size() == 1 && it->second.data()[0] == '0')) return true;
  }
  return false;
}

// A request's bytes in one piece: only to explain a parse failure.
inline std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return bytes;
}

}  // namespace adrank
