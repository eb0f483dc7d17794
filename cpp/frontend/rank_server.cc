#include "rank_server.h"

#include <absl/synchronization/mutex.h>
#include <google/protobuf/stubs/logging.h>
#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>
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
#include "health_service.h"
#include "inference_service.h"
#include "rank_admission.h"
#include "rank_call.h"
#include "reflection_service.h"
#include "server_queues.h"
#include "thread_pool.h"
#include "thread_priority.h"

namespace adrank {
namespace {

constexpr char kRankingService[] = "adrank.v1.Ranking";
constexpr char kInferenceService[] = "inference.GRPCInferenceService";
constexpr char kHealthService[] = "grpc.health.v1.Health";
// More completion queues than this on one server is a mistake (one per core is the point).
constexpr int kMaxGrpcThreads = 1024;

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

// The Ranking service, its Rank method raw (rank_server.h: the server parses) and async: one GrpcCall per call.
class RankService final : public v1::Ranking::WithRawMethod_Rank<v1::Ranking::Service> {
 public:
  RankService(std::shared_ptr<ModelRegistry> registry, std::shared_ptr<RankAdmission> admission,
              const RankServerOptions& options, ServerQueues* queues)
      : registry_(std::move(registry)), admission_(std::move(admission)) {
    site_.queues = queues;
    site_.admission = admission_.get();
    site_.reply_margin = options.reply_margin;
    site_.request = [this](grpc::ServerContext* context, grpc::ByteBuffer* request,
                           grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* writer, grpc::ServerCompletionQueue* cq,
                           void* tag) { RequestRank(context, request, writer, cq, cq, tag); };
    site_.start = [this](RankCall* call, grpc::ProtoBufferReader* reader, const std::function<std::string()>& bytes,
                         const RankCallOptions& call_options) {
      call->Parse(reader, bytes);
      call->Start(*registry_, call_options);
    };
  }

  // One call waiting on each queue. After the server has started.
  void Arm() { site_.Arm<v1::RankResponse>(); }

  RankAdmission& admission() { return *admission_; }

 private:
  std::shared_ptr<ModelRegistry> registry_;
  std::shared_ptr<RankAdmission> admission_;
  GrpcCallSite<RankCall> site_;
};

RankServer::RankServer(std::shared_ptr<ModelRegistry> registry, const RankServerOptions& options)
    : registry_(std::move(registry)),
      admission_(std::make_shared<RankAdmission>(registry_, RankAdmissionOptions{options.max_in_flight_bytes})),
      queues_(std::make_unique<ServerQueues>()),
      service_(std::make_unique<RankService>(registry_, admission_, options, queues_.get())) {
  InferenceServiceOptions inference;
  inference.reply_margin = options.reply_margin;
  inference.server.version = options.version;
  inference.ready = [this] { return Ready(); };
  inference_ = std::make_unique<InferenceService>(registry_, admission_, std::move(inference), queues_.get());
  health_service_ = std::make_unique<HealthService>(queues_.get());
  reflection_ = std::make_unique<ReflectionService>(
      ReflectionServiceOptions{
          {kRankingService, kInferenceService, kHealthService, ReflectionService::kV1, ReflectionService::kV1Alpha}},
      queues_.get());
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
  if (options.grpc_threads < 0 || options.grpc_threads > kMaxGrpcThreads) {
    return InvalidArgument("grpc_threads must be in [0, " + std::to_string(kMaxGrpcThreads) + "] (0: one per core)");
  }
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
  // From before gRPC's first use (its executor and timer threads) to the queues' threads' start: every thread
  // gRPC or the server creates inherits the policy; those gRPC creates later are created by these.
  std::optional<ScopedYieldingThreads> yielding;
  if (options.yield_to_workers) yielding.emplace();
  std::shared_ptr<grpc::ServerCredentials> credentials;
  const Status tls = CreateServerCredentials(options.tls, &credentials);
  if (!tls.ok()) return tls;
  std::unique_ptr<RankServer> server(new RankServer(std::move(registry), options));
  // gRPC's default health service is a callback service: the server serves health itself (health_service.h).
  grpc::EnableDefaultHealthCheckService(false);
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
  // Async services only (server_queues.h): no callback or sync service, so no gRPC thread polls but ours.
  builder.RegisterService(server->service_.get());
  builder.RegisterService(server->inference_.get());
  builder.RegisterService(server->health_service_.get());
  builder.RegisterAsyncGenericService(server->reflection_->generic());
  server->queues_->Add(builder, options.grpc_threads > 0 ? options.grpc_threads : AllowedCores());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return Unavailable("cannot listen on " + address + " for gRPC");
  }
  server->SetServing(false);
  // No call is served before the queues' threads run: by then health says what SetServing(false) set.
  server->service_->Arm();
  server->inference_->Arm();
  server->health_service_->Arm();
  server->reflection_->Arm();
  server->queues_->Start();
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
  // Service by service: each as last set.
  for (const auto& [service, status] : health_) health_service_->SetServingStatus(service, serving && status);
}

void RankServer::SetServiceServing(const std::string& service, bool serving) {
  std::lock_guard<std::mutex> lock(health_mu_);
  health_[service] = serving;
  health_service_->SetServingStatus(service, health_shown_ && serving);
}

void RankServer::StartDraining() {
  std::lock_guard<std::mutex> lock(health_mu_);
  service_->admission().SetState(RankAdmission::State::kDraining);
  health_shown_ = false;
  health_service_->Shutdown();  // every service NOT_SERVING; later updates are ignored
}

bool RankServer::WaitDrained(Duration quiet, Duration grace) { return service_->admission().WaitDrained(quiet, grace); }

void RankServer::Shutdown(Duration grace) {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  health_service_->EndWatches();
  // The queues' threads drain meanwhile: calls in flight finish (the core's answers come back through them),
  // those left at the deadline are cancelled, and the calls waiting to be matched come back !ok.
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  queues_->Shutdown();  // once every call is gone
}

}  // namespace adrank
