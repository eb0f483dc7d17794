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
// Thread-safety: gRPC calls its methods on its threads, concurrently; everything it holds is immutable or
// thread-safe (registry, admission). `ready` is called on those threads and must be thread-safe.
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

class InferenceService final : public inference::GRPCInferenceService::WithRawCallbackMethod_ModelInfer<
                                   inference::GRPCInferenceService::CallbackService> {
 public:
  InferenceService(std::shared_ptr<ModelRegistry> registry, std::shared_ptr<RankAdmission> admission,
                   InferenceServiceOptions options);

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* context,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* context,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* context,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(grpc::CallbackServerContext* context,
                                                const inference::RepositoryModelLoadRequest* request,
                                                inference::RepositoryModelLoadResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(grpc::CallbackServerContext* context,
                                                  const inference::RepositoryModelUnloadRequest* request,
                                                  inference::RepositoryModelUnloadResponse* response) override;

  void SetRepositoryHandler(RepositoryHandler handler);

 private:
  std::shared_ptr<ModelRegistry> registry_;
  // Hands a repository call to the handler; `response` is filled from its answer.
  grpc::ServerUnaryReactor* Repository(grpc::CallbackServerContext* context, const char* method,
                                       const google::protobuf::Message& request, google::protobuf::Message* response);

  std::shared_ptr<RankAdmission> admission_;
  const InferenceServiceOptions options_;
  std::mutex repository_mu_;  // guards repository_
  std::shared_ptr<const RepositoryHandler> repository_;
};

}  // namespace adrank
