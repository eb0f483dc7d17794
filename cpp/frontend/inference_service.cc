#include "inference_service.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <utility>

#include "grpc_call.h"
#include "grpc_context.h"
#include "infer_call.h"
#include "infer_statistics.h"
#include "unary_call.h"

namespace adrank {

template <typename Request, typename Response>
using InferenceSite = UnaryCallSite<InferenceService, Request, Response>;

// Every method's site: how its calls are asked for and what answers them.
struct InferenceService::Sites {
  InferenceSite<inference::ServerLiveRequest, inference::ServerLiveResponse> server_live;
  InferenceSite<inference::ServerReadyRequest, inference::ServerReadyResponse> server_ready;
  InferenceSite<inference::ModelReadyRequest, inference::ModelReadyResponse> model_ready;
  InferenceSite<inference::ServerMetadataRequest, inference::ServerMetadataResponse> server_metadata;
  InferenceSite<inference::ModelMetadataRequest, inference::ModelMetadataResponse> model_metadata;
  InferenceSite<inference::ModelConfigRequest, inference::ModelConfigResponse> model_config;
  InferenceSite<inference::ModelStatisticsRequest, inference::ModelStatisticsResponse> model_statistics;
  InferenceSite<inference::RepositoryIndexRequest, inference::RepositoryIndexResponse> repository_index;
  InferenceSite<inference::RepositoryModelLoadRequest, inference::RepositoryModelLoadResponse> repository_load;
  InferenceSite<inference::RepositoryModelUnloadRequest, inference::RepositoryModelUnloadResponse> repository_unload;
  GrpcCallSite<InferCall> model_infer;
};

namespace {

// A site whose calls `handle` answers inline, with the status it returns.
template <typename Request, typename Response, typename Handle>
InferenceSite<Request, Response> Inline(ServerQueues* queues, InferenceService* service,
                                        typename InferenceSite<Request, Response>::RequestMethod request,
                                        Handle handle) {
  InferenceSite<Request, Response> site;
  site.queues = queues;
  site.service = service;
  site.request = request;
  site.handle = [handle = std::move(handle)](typename InferenceSite<Request, Response>::Call* call) {
    call->Finish(handle(call->request(), call->response()));
  };
  return site;
}

}  // namespace

InferenceService::InferenceService(std::shared_ptr<ModelRegistry> registry, std::shared_ptr<RankAdmission> admission,
                                   InferenceServiceOptions options, ServerQueues* queues)
    : registry_(std::move(registry)),
      admission_(std::move(admission)),
      options_(std::move(options)),
      sites_(std::make_unique<Sites>()) {
  using Self = InferenceService;
  Sites& s = *sites_;
  s.server_live = Inline<inference::ServerLiveRequest, inference::ServerLiveResponse>(
      queues, this, &Self::RequestServerLive, [](const auto&, inference::ServerLiveResponse* response) {
        response->set_live(true);
        return grpc::Status::OK;
      });
  s.server_ready = Inline<inference::ServerReadyRequest, inference::ServerReadyResponse>(
      queues, this, &Self::RequestServerReady, [this](const auto&, inference::ServerReadyResponse* response) {
        response->set_ready(admission_->state() == RankAdmission::State::kServing && options_.ready &&
                            options_.ready());
        return grpc::Status::OK;
      });
  s.model_ready = Inline<inference::ModelReadyRequest, inference::ModelReadyResponse>(
      queues, this, &Self::RequestModelReady,
      [this](const inference::ModelReadyRequest& request, inference::ModelReadyResponse* response) {
        adrank::ModelReady(*registry_, admission_->state() == RankAdmission::State::kServing, request, response);
        return grpc::Status::OK;
      });
  s.server_metadata = Inline<inference::ServerMetadataRequest, inference::ServerMetadataResponse>(
      queues, this, &Self::RequestServerMetadata, [this](const auto&, inference::ServerMetadataResponse* response) {
        adrank::ServerMetadata(options_.server, response);
        return grpc::Status::OK;
      });
  s.model_metadata = Inline<inference::ModelMetadataRequest, inference::ModelMetadataResponse>(
      queues, this, &Self::RequestModelMetadata,
      [this](const inference::ModelMetadataRequest& request, inference::ModelMetadataResponse* response) {
        return ToGrpc(adrank::ModelMetadata(*registry_, request, response));
      });
  s.model_config = Inline<inference::ModelConfigRequest, inference::ModelConfigResponse>(
      queues, this, &Self::RequestModelConfig,
      [this](const inference::ModelConfigRequest& request, inference::ModelConfigResponse* response) {
        return ToGrpc(adrank::ModelConfig(*registry_, request, response));
      });
  s.model_statistics = Inline<inference::ModelStatisticsRequest, inference::ModelStatisticsResponse>(
      queues, this, &Self::RequestModelStatistics,
      [this](const inference::ModelStatisticsRequest& request, inference::ModelStatisticsResponse* response) {
        return ToGrpc(adrank::ModelStatistics(*registry_, request, response));
      });
  s.repository_index = {queues, this, &Self::RequestRepositoryIndex,
                        [this](auto* call) { Repository(call, "RepositoryIndex"); }};
  s.repository_load = {queues, this, &Self::RequestRepositoryModelLoad,
                       [this](auto* call) { Repository(call, "RepositoryModelLoad"); }};
  s.repository_unload = {queues, this, &Self::RequestRepositoryModelUnload,
                         [this](auto* call) { Repository(call, "RepositoryModelUnload"); }};
  s.model_infer.queues = queues;
  s.model_infer.admission = admission_.get();
  s.model_infer.reply_margin = options_.reply_margin;
  s.model_infer.request = [this](grpc::ServerContext* context, grpc::ByteBuffer* request,
                                 grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* writer,
                                 grpc::ServerCompletionQueue* cq,
                                 void* tag) { RequestModelInfer(context, request, writer, cq, cq, tag); };
  s.model_infer.start = [this](InferCall* call, grpc::ProtoBufferReader* reader,
                               const std::function<std::string()>& bytes, const RankCallOptions& options) {
    call->ParseInfer(reader, bytes);
    call->StartInfer(*registry_, options);
  };
}

InferenceService::~InferenceService() = default;

void InferenceService::Arm() {
  Sites& s = *sites_;
  s.server_live.Arm();
  s.server_ready.Arm();
  s.model_ready.Arm();
  s.server_metadata.Arm();
  s.model_metadata.Arm();
  s.model_config.Arm();
  s.model_statistics.Arm();
  s.repository_index.Arm();
  s.repository_load.Arm();
  s.repository_unload.Arm();
  s.model_infer.Arm<inference::ModelInferResponse>();
}

void InferenceService::SetRepositoryHandler(RepositoryHandler handler) {
  auto shared = handler ? std::make_shared<const RepositoryHandler>(std::move(handler)) : nullptr;
  std::lock_guard<std::mutex> lock(repository_mu_);
  repository_ = std::move(shared);
}

template <typename Call>
void InferenceService::Repository(Call* call, const char* method) {
  std::shared_ptr<const RepositoryHandler> handler;
  {
    std::lock_guard<std::mutex> lock(repository_mu_);
    handler = repository_;
  }
  if (!handler) {
    call->Finish(
        grpc::Status(grpc::StatusCode::UNIMPLEMENTED, std::string(method) + ": this server has no model management"));
    return;
  }
  RepositoryCall repository;
  repository.method = method;
  repository.request = call->request().SerializeAsString();
  const auto& metadata = call->context().client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end()) repository.authorization.assign(it->second.data(), it->second.size());
  // The call lives until its Finish, which `done` calls once.
  repository.done = [call](const Status& status, const std::string& bytes) {
    if (status.ok() && !call->response()->ParseFromString(bytes)) {
      call->Finish(grpc::Status(grpc::StatusCode::INTERNAL, "repository: the handler's response does not parse"));
      return;
    }
    call->Finish(ToGrpc(status));
  };
  (*handler)(std::move(repository));
}

}  // namespace adrank
