#include "inference_service.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <utility>

#include "grpc_call.h"
#include "grpc_context.h"
#include "infer_call.h"
#include "infer_statistics.h"

namespace adrank {
namespace {

// A reactor that has its answer already.
grpc::ServerUnaryReactor* Finished(grpc::CallbackServerContext* context, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

InferenceService::InferenceService(std::shared_ptr<ModelRegistry> registry, std::shared_ptr<RankAdmission> admission,
                                   InferenceServiceOptions options)
    : registry_(std::move(registry)), admission_(std::move(admission)), options_(std::move(options)) {}

grpc::ServerUnaryReactor* InferenceService::ServerLive(grpc::CallbackServerContext* context,
                                                       const inference::ServerLiveRequest*,
                                                       inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Finished(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(grpc::CallbackServerContext* context,
                                                        const inference::ServerReadyRequest*,
                                                        inference::ServerReadyResponse* response) {
  response->set_ready(admission_->state() == RankAdmission::State::kServing && options_.ready && options_.ready());
  return Finished(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(grpc::CallbackServerContext* context,
                                                       const inference::ModelReadyRequest* request,
                                                       inference::ModelReadyResponse* response) {
  adrank::ModelReady(*registry_, admission_->state() == RankAdmission::State::kServing, *request, response);
  return Finished(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(grpc::CallbackServerContext* context,
                                                           const inference::ServerMetadataRequest*,
                                                           inference::ServerMetadataResponse* response) {
  adrank::ServerMetadata(options_.server, response);
  return Finished(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(grpc::CallbackServerContext* context,
                                                          const inference::ModelMetadataRequest* request,
                                                          inference::ModelMetadataResponse* response) {
  return Finished(context, ToGrpc(adrank::ModelMetadata(*registry_, *request, response)));
}

grpc::ServerUnaryReactor* InferenceService::ModelConfig(grpc::CallbackServerContext* context,
                                                        const inference::ModelConfigRequest* request,
                                                        inference::ModelConfigResponse* response) {
  return Finished(context, ToGrpc(adrank::ModelConfig(*registry_, *request, response)));
}

grpc::ServerUnaryReactor* InferenceService::ModelStatistics(grpc::CallbackServerContext* context,
                                                            const inference::ModelStatisticsRequest* request,
                                                            inference::ModelStatisticsResponse* response) {
  return Finished(context, ToGrpc(adrank::ModelStatistics(*registry_, *request, response)));
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return StartGrpcCall<InferCall, inference::ModelInferResponse>(
      *admission_, options_.reply_margin, context, request, response,
      [this](InferCall* call, grpc::ProtoBufferReader* reader, auto bytes, const RankCallOptions& options) {
        call->ParseInfer(reader, bytes);
        call->StartInfer(*registry_, options);
      });
}

void InferenceService::SetRepositoryHandler(RepositoryHandler handler) {
  auto shared = handler ? std::make_shared<const RepositoryHandler>(std::move(handler)) : nullptr;
  std::lock_guard<std::mutex> lock(repository_mu_);
  repository_ = std::move(shared);
}

grpc::ServerUnaryReactor* InferenceService::Repository(grpc::CallbackServerContext* context, const char* method,
                                                       const google::protobuf::Message& request,
                                                       google::protobuf::Message* response) {
  std::shared_ptr<const RepositoryHandler> handler;
  {
    std::lock_guard<std::mutex> lock(repository_mu_);
    handler = repository_;
  }
  if (!handler) {
    return Finished(context, grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                                          std::string(method) + ": this server has no model management"));
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  RepositoryCall call;
  call.method = method;
  call.request = request.SerializeAsString();
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end()) call.authorization.assign(it->second.data(), it->second.size());
  // gRPC keeps the reactor and the response until Finish.
  call.done = [reactor, response](const Status& status, const std::string& bytes) {
    if (status.ok() && !response->ParseFromString(bytes)) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INTERNAL, "repository: the handler's response does not parse"));
      return;
    }
    reactor->Finish(ToGrpc(status));
  };
  (*handler)(std::move(call));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::RepositoryIndex(grpc::CallbackServerContext* context,
                                                            const inference::RepositoryIndexRequest* request,
                                                            inference::RepositoryIndexResponse* response) {
  return Repository(context, "RepositoryIndex", *request, response);
}

grpc::ServerUnaryReactor* InferenceService::RepositoryModelLoad(grpc::CallbackServerContext* context,
                                                                const inference::RepositoryModelLoadRequest* request,
                                                                inference::RepositoryModelLoadResponse* response) {
  return Repository(context, "RepositoryModelLoad", *request, response);
}

grpc::ServerUnaryReactor* InferenceService::RepositoryModelUnload(
    grpc::CallbackServerContext* context, const inference::RepositoryModelUnloadRequest* request,
    inference::RepositoryModelUnloadResponse* response) {
  return Repository(context, "RepositoryModelUnload", *request, response);
}

}  // namespace adrank
