// InferenceService: the Open Inference Protocol (KServe v2) `inference.GRPCInferenceService` on the C++
// front end's port, beside Rank (rank_server.h), so that tritonclient, perf_analyzer and KServe speak to
// adrank unchanged, and a call is answered without Python.
//
// ModelInfer is taken raw, like Rank: RankAdmission admits it by its declared size and the server's state,
// InferCall (infer_call.h) parses, maps and runs it through the Rank contract, and its answer is counted
// with Rank's (the admission's calls by code: it is one contract). ServerLive is true while the port
// answers; ServerReady is the server's readiness as its health service says it ("" SERVING: serving, and
// every configured model has a version that serves); ModelReady, ModelMetadata, ModelConfig (Triton's,
// for perf_analyzer) and ServerMetadata are infer_metadata.h's answers, ModelStatistics (Triton's
// statistics extension) infer_statistics.h's. The repository extension
// (RepositoryIndex/Load/Unload) is the server's model management, which lives in Python
// (python/adrank/server/kserve_repository.py): each call is handed, serialized, with its `authorization`
// metadata, to the handler set by SetRepositoryHandler, which answers it later from any thread through
// `done` (loading a model takes seconds: no gRPC thread waits for it). Without a handler those RPCs are
// UNIMPLEMENTED.
//
// Every method is on gRPC's async completion-queue API (server_queues.h): ModelInfer is a GrpcCall (grpc_call.h),
// the others UnaryCalls (unary_call.h) answered inline on the queue's thread, but the repository's, answered by
// their handler (called on the queue's thread: it must return at once) from its own thread.
//
// Thread-safety: its methods are called on the queues' threads, concurrently; everything it holds is immutable or
// thread-safe (registry, admission). `ready` is called on those threads and must be thread-safe.
// SetRepositoryHandler from any thread.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "adrank/kserve/grpc_service.grpc.pb.h"
#include "clock.h"
#include "infer_metadata.h"
#include "model_registry.h"
#include "rank_admission.h"
#include "server_queues.h"

namespace adrank {

// One call of the repository extension, for the handler: `done` answers it (once, from any thread) with the
// status and, when OK, the serialized response.
struct RepositoryCall {
  std::string method;  // "RepositoryIndex", "RepositoryModelLoad" or "RepositoryModelUnload"
  std::string request;
  std::string authorization;
  std::function<void(const Status& status, const std::string& response)> done;
};
using RepositoryHandler = std::function<void(RepositoryCall call)>;

struct InferenceServiceOptions {
  Duration reply_margin = std::chrono::milliseconds(1);  // RankServerOptions' (rank_call.h says why)
  InferServerInfo server;
  std::function<bool()> ready;  // the server's readiness (ServerReady)
};

// KServe v2's service, ModelInfer raw (its bytes: the server parses), the other methods typed, every one async.
using InferenceAsyncService = inference::GRPCInferenceService::WithAsyncMethod_ServerLive<
    inference::GRPCInferenceService::WithAsyncMethod_ServerReady<
        inference::GRPCInferenceService::WithAsyncMethod_ModelReady<
            inference::GRPCInferenceService::WithAsyncMethod_ServerMetadata<
                inference::GRPCInferenceService::WithAsyncMethod_ModelMetadata<
                    inference::GRPCInferenceService::WithRawMethod_ModelInfer<
                        inference::GRPCInferenceService::WithAsyncMethod_ModelConfig<
                            inference::GRPCInferenceService::WithAsyncMethod_ModelStatistics<
                                inference::GRPCInferenceService::WithAsyncMethod_RepositoryIndex<
                                    inference::GRPCInferenceService::WithAsyncMethod_RepositoryModelLoad<
                                        inference::GRPCInferenceService::WithAsyncMethod_RepositoryModelUnload<
                                            inference::GRPCInferenceService::Service>>>>>>>>>>>;

class InferenceService final : public InferenceAsyncService {
 public:
  InferenceService(std::shared_ptr<ModelRegistry> registry, std::shared_ptr<RankAdmission> admission,
                   InferenceServiceOptions options, ServerQueues* queues);
  ~InferenceService() override;

  // One call of each method waiting on each of the queues. After the server has started.
  void Arm();

  void SetRepositoryHandler(RepositoryHandler handler);

  // Implementation details follow. API users need not read.
 private:
  struct Sites;
  // Hands a repository call to the handler, which answers it through `done`.
  template <typename Call>
  void Repository(Call* call, const char* method);

  std::shared_ptr<ModelRegistry> registry_;
  std::shared_ptr<RankAdmission> admission_;
  const InferenceServiceOptions options_;
  std::mutex repository_mu_;  // guards repository_
  std::shared_ptr<const RepositoryHandler> repository_;
  std::unique_ptr<Sites> sites_;  // last: its handlers use the above
};

}  // namespace adrank
