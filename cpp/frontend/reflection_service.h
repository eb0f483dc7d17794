// ReflectionService: gRPC server reflection, versions v1 and v1alpha, on the C++ front end's port, so that
// grpcurl, grpc_cli and Postman list and describe every service it serves — Rank, KServe v2, Health and
// reflection itself.
//
// Why our own: grpc++ 1.51 (Debian's) serves only v1alpha, and describes only what is in protobuf's
// generated pool, where its own health service has no descriptor (grpc++ implements it without one), so
// `grpcurl describe grpc.health.v1.Health` failed. Here the project's copies of health.proto and
// reflection.proto (v1) are linked into the pool, v1alpha's file is derived from v1's (the same protocol,
// byte for byte, under another package), and both versions' requests are answered from one pool by one
// implementation.
//
// A request gets, per the protocol: list_services -> the services named in the options; file_by_filename
// and file_containing_symbol -> that file and every file it imports, transitively, each once, dependencies
// first; file_containing_extension and all_extension_numbers_of_type -> from the pool (adrank's protos
// define no extensions: NOT_FOUND for a type that is not known, an empty list otherwise). A name that is not
// in the pool gets an error_response NOT_FOUND naming it, on the same stream; the stream goes on.
//
// It is the server's generic service (on gRPC's async API: server_queues.h): a method the server has no handler
// for reaches it, and any but the two reflection methods is answered UNIMPLEMENTED, naming the method, as grpc++
// would.
//
// A stream: armed on each queue (Arm), it reads a request, writes its response, and so on, one operation at a
// time on its queue's thread, until the client half-closes (finished OK) or goes away; it owns itself until its
// finish event is back (server_queues.h).
//
// Thread-safety: streams are served on the queues' threads, concurrently; the descriptor pool is thread-safe
// (it builds from its files under its own lock). Arm once, after the server has started.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor_database.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "server_queues.h"

namespace adrank {

struct ReflectionServiceOptions {
  std::vector<std::string> services;  // fully-qualified names, listed as given
};

class ReflectionService final {
 public:
  ReflectionService(ReflectionServiceOptions options, ServerQueues* queues);

  // What the server registers (RegisterAsyncGenericService).
  grpc::AsyncGenericService* generic() { return &generic_; }
  // One stream waiting on each queue. After the server has started.
  void Arm();

  // The full names of the two reflection services, to list beside the others.
  static const char* const kV1;
  static const char* const kV1Alpha;

  // Implementation details follow. API users need not read.
  // One request's response (both versions share the wire format of grpc.reflection.v1's messages).
  std::string Answer(const std::string& request) const;
  ServerQueues* queues() const { return queues_; }

 private:
  const ReflectionServiceOptions options_;
  ServerQueues* const queues_;
  grpc::AsyncGenericService generic_;
  // The generated pool, and v1alpha's file beside it.
  google::protobuf::DescriptorPoolDatabase generated_;
  google::protobuf::SimpleDescriptorDatabase derived_;
  google::protobuf::MergedDescriptorDatabase files_;
  mutable google::protobuf::DescriptorPool pool_;  // thread-safe: it builds from files_ under its own lock
};

}  // namespace adrank
