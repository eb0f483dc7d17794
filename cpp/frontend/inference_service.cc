#include "inference_service.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <utility>

#include "grpc_call.h"
#include "grpc_context.h"
#include "infer_call.h"

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

grpc::ServerUnaryReactor* InferenceService::ModelInfer(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return StartGrpcCall<InferCall, inference::ModelInferResponse>(
      *admission_, options_.reply_margin, context, request, response,
      [this](InferCall* call, grpc::ProtoBufferReader* reader, auto bytes, const RankCallOptions& options) {
        call->ParseInfer(reader, bytes);
        call->StartInfer(*registry_, options);
      });
}

}  // namespace adrank
