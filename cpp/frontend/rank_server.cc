#include "rank_server.h"

#include <absl/synchronization/mutex.h>
#include <google/protobuf/stubs/logging.h>
#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "adrank/v1/ranking.grpc.pb.h"
#include "grpc_call.h"
#include "grpc_context.h"
#include "inference_service.h"
#include "rank_admission.h"
#include "rank_call.h"
#include "reflection_service.h"
#include "thread_priority.h"

namespace adrank {
namespace {

constexpr char kRankingService[] = "adrank.v1.Ranking";
constexpr char kInferenceService[] = "inference.GRPCInferenceService";
constexpr char kHealthService[] = "grpc.health.v1.Health";

// protobuf logs every string field that is not UTF-8 as an ERROR, one line per such request, which a
// client could send by the thousand to flood the log. Those requests are answered INVALID_ARGUMENT and
// counted; the rest of protobuf's log is written as its default handler writes it.
void LogUnlessInvalidUtf8(google::protobuf::LogLevel level, const char* filename, int line,
                          const std::string& message) {
  if (message.find("invalid UTF-8") != std::string::npos) return;
  static const char* const kLevels[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  const char* name = level >= 0 && level < 4 ? kLevels[level] : "?";
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", name, filename, line, message.c_str());
  std::fflush(stderr);
}

}  // namespace

// The Ranking service, its Rank method raw (rank_server.h: the server parses): one GrpcCall per call.
class RankService final : public v1::Ranking::WithRawCallbackMethod_Rank<v1::Ranking::Service> {
 public:
  RankService(std::shared_ptr<ModelRegistry> registry, std::shared_ptr<RankAdmission> admission,
              const RankServerOptions& options)
      : registry_(std::move(registry)), admission_(std::move(admission)), reply_margin_(options.reply_margin) {}

  grpc::ServerUnaryReactor* Rank(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override {
    return StartGrpcCall<RankCall, v1::RankResponse>(
        *admission_, reply_margin_, context, request, response,
        [this](RankCall* call, grpc::ProtoBufferReader* reader, auto bytes, const RankCallOptions& options) {
          call->Parse(reader, bytes);
          call->Start(*registry_, options);
        });
  }

  RankAdmission& admission() { return *admission_; }

 private:
  std::shared_ptr<ModelRegistry> registry_;
  std::shared_ptr<RankAdmission> admission_;
  const Duration reply_margin_;
};

RankServer::RankServer(std::shared_ptr<ModelRegistry> registry, const RankServerOptions& options)
    : registry_(std::move(registry)),
      admission_(std::make_shared<RankAdmission>(registry_, RankAdmissionOptions{options.max_in_flight_bytes})),
      service_(std::make_unique<RankService>(registry_, admission_, options)) {
  InferenceServiceOptions inference;
  inference.reply_margin = options.reply_margin;
  inference.server.version = options.version;
  inference.ready = [this] { return Ready(); };
  inference_ = std::make_unique<InferenceService>(registry_, admission_, std::move(inference));
  reflection_ = std::make_unique<ReflectionService>(ReflectionServiceOptions{
      {kRankingService, kInferenceService, kHealthService, ReflectionService::kV1, ReflectionService::kV1Alpha}});
}

void RankServer::SetRepositoryHandler(RepositoryHandler handler) {
  inference_->SetRepositoryHandler(std::move(handler));
}

bool RankServer::Ready() {
  std::lock_guard<std::mutex> lock(health_mu_);
  auto it = health_.find("");
  return health_shown_ && it != health_.end() && it->second;
}

Status RankServer::Create(const RankServerOptions& options, std::shared_ptr<ModelRegistry> registry,
                          std::unique_ptr<RankServer>* out) {
  if (options.max_message_bytes < 1) return InvalidArgument("max_message_bytes must be >= 1");
  if (options.max_concurrent_streams < 1) return InvalidArgument("max_concurrent_streams must be >= 1");
  const Status admission = RankAdmission::Validate(RankAdmissionOptions{options.max_in_flight_bytes});
  if (!admission.ok()) return admission;
  if (options.reply_margin < Duration::zero()) return InvalidArgument("reply_margin must be >= 0");
  const auto keepalive_ms = std::chrono::duration_cast<std::chrono::milliseconds>(options.keepalive_time).count();
  const auto timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(options.keepalive_timeout).count();
  if (keepalive_ms < 1 || timeout_ms < 1 || keepalive_ms > INT32_MAX || timeout_ms > INT32_MAX) {
    return InvalidArgument("keepalive_time and keepalive_timeout must be in [1 ms, 24 days]");
  }
  static std::once_flag quiet_log;
  std::call_once(quiet_log, [] { google::protobuf::SetLogHandler(&LogUnlessInvalidUtf8); });
  // From before gRPC's first use (its executor and timer threads) to its pollers' start: every thread gRPC
  // creates inherits the policy; those it creates later are created by these.
  std::optional<ScopedYieldingThreads> yielding;
  if (options.yield_to_workers) yielding.emplace();
  std::shared_ptr<grpc::ServerCredentials> credentials;
  const Status tls = CreateServerCredentials(options.tls, &credentials);
  if (!tls.ok()) return tls;
  std::unique_ptr<RankServer> server(new RankServer(std::move(registry), options));
  grpc::EnableDefaultHealthCheckService(true);
  // Debian's abseil is built with its mutex deadlock detector on: gRPC's every lock then updates a lock
  // graph (measured: 2-3 % of the server's core at 1.5x overload, in absl::GraphCycles). gRPC's own
  // tests run with it; a server has no use for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  grpc::ServerBuilder builder;
  const std::string address = options.host + ":" + std::to_string(options.port);
  builder.AddListeningPort(address, credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(keepalive_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(timeout_ms));
  // Newer grpc-core waits on any unanswered ping (a BDP probe too) before the next keepalive, for this
  // long (default a minute): the same bound. grpc-core 1.51 does not know it and ignores it.
  builder.AddChannelArgument("grpc.http2.ping_timeout_ms", static_cast<int>(timeout_ms));
  // Pings go on while a connection sends no data (its client's window may be 0: that is the case the
  // keepalive is for), and on connections with no call.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // gRPC would otherwise set SO_REUSEPORT: a second server on this port would bind beside the first and the
  // kernel would share new connections between them. Off, a port another process holds fails to bind.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(server->service_.get());
  builder.RegisterService(server->inference_.get());
  builder.RegisterCallbackGenericService(server->reflection_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return Unavailable("cannot listen on " + address + " for gRPC");
  }
  server->SetServing(false);
  *out = std::move(server);
  return Status::Ok();
}

RankServer::~RankServer() { Shutdown(Duration::zero()); }

void RankServer::SetServing(bool serving) {
  std::lock_guard<std::mutex> lock(health_mu_);
  service_->admission().SetState(serving ? RankAdmission::State::kServing : RankAdmission::State::kLoading);
  health_.emplace("", true);
  health_.emplace(kRankingService, true);
  health_shown_ = serving;
  // Service by service: grpc's SetServingStatus(bool) would set every service, models included.
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  for (const auto& [service, status] : health_) health->SetServingStatus(service, serving && status);
}

void RankServer::SetServiceServing(const std::string& service, bool serving) {
  std::lock_guard<std::mutex> lock(health_mu_);
  health_[service] = serving;
  server_->GetHealthCheckService()->SetServingStatus(service, health_shown_ && serving);
}

void RankServer::StartDraining() {
  std::lock_guard<std::mutex> lock(health_mu_);
  service_->admission().SetState(RankAdmission::State::kDraining);
  health_shown_ = false;
  server_->GetHealthCheckService()->Shutdown();  // every service NOT_SERVING; later updates are ignored
}

bool RankServer::WaitDrained(Duration quiet, Duration grace) { return service_->admission().WaitDrained(quiet, grace); }

void RankServer::Shutdown(Duration grace) {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
}

}  // namespace adrank
