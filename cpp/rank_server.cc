#include "rank_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include "adrank/v1/ranking.grpc.pb.h"
#include "wire_request.h"

namespace adrank {
namespace {

constexpr char kRankingService[] = "adrank.v1.Ranking";

grpc::Status ToGrpc(const Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The call's gRPC deadline on the core's clock; kNoDeadline when the caller set none.
TimePoint CoreDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return kNoDeadline;
  const auto remaining = deadline - std::chrono::system_clock::now();
  return SteadyClock::Get()->Now() + std::chrono::duration_cast<Duration>(remaining);
}

// The caller's tenant (tenants.h): its `x-adrank-tenant` metadata, else empty ("default").
std::string CallTenant(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kTenantMetadataKey);
  return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

}  // namespace

// The Ranking service: one RankCall reactor per call.
class RankService final : public v1::Ranking::CallbackService {
 public:
  enum class State { kLoading, kServing, kDraining };

  explicit RankService(std::shared_ptr<ModelRegistry> registry) : registry_(std::move(registry)) {}

  grpc::ServerUnaryReactor* Rank(grpc::CallbackServerContext* context, const v1::RankRequest* request,
                                 v1::RankResponse* response) override;

  void set_state(State state) { state_.store(state, std::memory_order_seq_cst); }
  int64_t in_flight() const { return in_flight_.load(std::memory_order_acquire); }

  bool WaitDrained(Duration quiet, Duration grace) {
    const auto give_up = std::chrono::steady_clock::now() + grace;
    const int64_t quiet_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(quiet).count();
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (std::chrono::steady_clock::now() >= give_up) return in_flight() == 0 && QuietFor() >= quiet_ns;
      if (in_flight() > 0) {
        // CallDone notifies under mu_: no wake-up is missed, and nothing to poll meanwhile.
        done_.wait_until(lock, give_up);
        continue;
      }
      const int64_t quiet_for = QuietFor();
      if (quiet_for >= quiet_ns) return true;
      done_.wait_until(
          lock, std::min(give_up, std::chrono::steady_clock::now() + std::chrono::nanoseconds(quiet_ns - quiet_for)));
    }
  }

  void CallDone() {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_.fetch_sub(1, std::memory_order_acq_rel);
    done_.notify_all();
  }

  const ModelRegistry& registry() const { return *registry_; }

  // Every call ends here: counted by its status code, then finished.
  void Reply(grpc::ServerUnaryReactor* reactor, const grpc::Status& status) {
    const auto code = static_cast<size_t>(status.error_code());
    calls_by_code_[code < kStatusCodeCount ? code : 2].fetch_add(1, std::memory_order_relaxed);
    reactor->Finish(status);
  }

  std::array<uint64_t, kStatusCodeCount> CallCounts() const {
    std::array<uint64_t, kStatusCodeCount> counts{};
    for (size_t i = 0; i < counts.size(); ++i) counts[i] = calls_by_code_[i].load(std::memory_order_relaxed);
    return counts;
  }

 private:
  friend class RankCall;
  int64_t QuietFor() const { return SteadyNanos() - last_call_ns_.load(std::memory_order_acquire); }
  std::shared_ptr<ModelRegistry> registry_;
  std::atomic<State> state_{State::kLoading};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> last_call_ns_{0};
  std::mutex mu_;
  std::condition_variable done_;
  std::array<std::atomic<uint64_t>, kStatusCodeCount> calls_by_code_{};
};

// Shadow requests wait at most this long: older mirrors are shed, since a shadow that cannot keep up
// must not pile up work behind the traffic it mirrors.
constexpr Duration kShadowDeadline = std::chrono::milliseconds(100);

// The score output of a result, or null.
const OutputTensor* ScoreOutput(const ServedModel& model, const RequestResult& result) {
  for (const OutputTensor& output : result.outputs) {
    if (output.name == model.score_output && output.dtype == DType::kFloat32 && output.shape.size() == 1) {
      return &output;
    }
  }
  return nullptr;
}

// A part's outcome in its version's stats; `start_ns` is when the call (or the mirror) arrived.
void RecordOutcome(const ServedModel& model, const RequestResult& result, int64_t start_ns) {
  const OutputTensor* score = result.status.ok() ? ScoreOutput(model, result) : nullptr;
  RequestRecord record;
  record.code = result.status.code();
  record.request_us = (SteadyNanos() - start_ns) / 1000;
  record.queue_us = result.timing.queue_us;
  record.compute_us = result.timing.compute_us;
  if (score != nullptr) {
    record.candidates = score->shape[0];
    record.scores = reinterpret_cast<const float*>(score->data.data());
  }
  model.stats->Record(record);
}

void RecordRefused(const ServedModel& model, const Status& status) {
  model.stats->Record(RequestRecord{status.code()});
}

// Mirrors a request to a shadow version at its lowest priority, unless the shadow's queue already holds
// a batch's worth of rows (it is behind: this mirror is shed). The result is recorded, never returned.
void SubmitShadow(ModelCall shadow) {
  const std::shared_ptr<const ServedModel> model = shadow.model;
  if (model->queue->stats().queued_rows >= model->queue->batcher().options().max_batch_rows) {
    model->stats->RecordShadowShed();
    return;
  }
  auto owner = std::make_shared<ModelCall>(std::move(shadow));
  Request request = std::move(owner->request);
  request.priority = model->lowest_priority;
  request.deadline = SteadyClock::Get()->Now() + kShadowDeadline;
  const int64_t start_ns = SteadyNanos();
  request.on_complete = [owner, start_ns](RequestResult&& result) { RecordOutcome(*owner->model, result, start_ns); };
  const Status status = model->queue->Submit(std::move(request));
  if (!status.ok()) RecordRefused(*model, status);
}

// One call: submitted to every requested model's queue; finished by the last part to complete.
class RankCall final : public grpc::ServerUnaryReactor {
 public:
  RankCall(RankService* service, grpc::CallbackServerContext* context, const v1::RankRequest* request,
           v1::RankResponse* response)
      : service_(service), context_(context), request_(request), response_(response), start_ns_(SteadyNanos()) {}

  void Start() {
    std::vector<ModelCall> shadows;
    Status status = PrepareRank(*request_, service_->registry(), &calls_, &shadows);
    const TimePoint deadline = CoreDeadline(*context_);
    if (status.ok() && deadline != kNoDeadline && deadline <= SteadyClock::Get()->Now()) {
      status = DeadlineExceeded("the call's deadline passed before any model ran");
    }
    if (!status.ok()) {
      service_->Reply(this, ToGrpc(status));
      return;
    }
    const std::string tenant = CallTenant(*context_);
    const int priority = request_->has_priority() ? static_cast<int>(std::min<uint32_t>(request_->priority(), 1 << 20))
                                                  : kDefaultPriority;
    const size_t parts = calls_.size();
    results_.resize(parts);
    handles_.resize(parts);
    // One count per part plus Start's own: the call cannot finish (and delete itself) while Start
    // still submits, however fast the parts complete.
    remaining_.store(static_cast<int>(parts) + 1, std::memory_order_release);
    for (size_t i = 0; i < parts; ++i) {
      Request& request = calls_[i].request;
      request.deadline = deadline;
      request.priority = priority;
      request.tenant = tenant;
      request.on_complete = [this, i](RequestResult&& result) {
        RecordOutcome(*calls_[i].model, result, start_ns_);
        Complete(i, std::move(result));
      };
      Status failed;
      {
        std::lock_guard<std::mutex> lock(mu_);
        failed = first_error_;
      }
      if (failed.ok()) {
        Submit(i);
      } else {
        Complete(i, RequestResult{failed, {}, {}});  // an earlier model failed: the call fails anyway
      }
    }
    // After the call's own parts: a mirror never delays them, and it outlives the call.
    for (ModelCall& shadow : shadows) SubmitShadow(std::move(shadow));
    Release();
  }

  void OnCancel() override {
    std::vector<QueuedPart> to_cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      to_cancel = QueuedPartsLocked();
    }
    CancelParts(to_cancel);
  }

  void OnDone() override {
    RankService* service = service_;
    delete this;
    service->CallDone();
  }

 private:
  using QueuedPart = std::pair<std::shared_ptr<ModelQueue>, RequestHandle>;

  // The parts submitted and not yet completed. Call with mu_ held.
  std::vector<QueuedPart> QueuedPartsLocked() const {
    std::vector<QueuedPart> parts;
    for (size_t i = 0; i < handles_.size(); ++i) {
      if (handles_[i]) parts.emplace_back(calls_[i].model->queue, handles_[i]);
    }
    return parts;
  }

  // Without mu_: a cancel may complete its request at once, on this thread (Complete takes mu_).
  static void CancelParts(const std::vector<QueuedPart>& parts) {
    for (const auto& [queue, handle] : parts) queue->Cancel(handle);
  }

  void Submit(size_t part) {
    const std::shared_ptr<ModelQueue> queue = calls_[part].model->queue;
    RequestHandle handle;
    const Status status = queue->Submit(std::move(calls_[part].request), &handle);
    if (!status.ok()) {
      RecordRefused(*calls_[part].model, status);
      Complete(part, RequestResult{status, {}, {}});
      return;
    }
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancel = cancelled_;
      if (!cancel) handles_[part] = handle;
    }
    if (cancel) queue->Cancel(handle);
  }

  void Complete(size_t part, RequestResult&& result) {
    std::vector<QueuedPart> to_cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handles_[part].reset();
      if (!result.status.ok() && first_error_.ok()) {
        // The call fails with this error: the other models' queued parts need not run.
        first_error_ = result.status;
        to_cancel = QueuedPartsLocked();
      }
      results_[part] = std::move(result);
    }
    CancelParts(to_cancel);
    Release();
  }

  void Release() {
    if (remaining_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    // The last one: every part has completed and Start has returned; nothing else touches the call.
    if (!first_error_.ok()) {
      service_->Reply(this, ToGrpc(first_error_));
      return;
    }
    response_->set_request_id(request_->request_id());
    for (size_t i = 0; i < calls_.size(); ++i) {
      const ServedModel& model = *calls_[i].model;
      const RequestResult& r = results_[i];
      v1::ModelScores* scores = response_->add_results();
      scores->set_model(model.name);
      scores->set_version(model.version);
      const OutputTensor* score = ScoreOutput(model, r);
      if (score == nullptr) {
        service_->Reply(this, ToGrpc(Internal("model '" + model.name + "' produced no float32 [N] output '" +
                                              model.score_output + "'")));
        return;
      }
      scores->set_scores(score->data.data(), score->data.size());
      v1::ServerTiming* timing = scores->mutable_timing();
      timing->set_queue_us(r.timing.queue_us);
      timing->set_compute_us(r.timing.compute_us);
      timing->set_batch_rows(r.timing.batch_rows);
    }
    response_->set_server_us((SteadyNanos() - start_ns_) / 1000);
    service_->Reply(this, grpc::Status::OK);
  }

  RankService* const service_;
  grpc::CallbackServerContext* const context_;
  const v1::RankRequest* const request_;
  v1::RankResponse* const response_;
  const int64_t start_ns_;
  std::vector<ModelCall> calls_;
  std::vector<RequestResult> results_;
  std::atomic<int> remaining_{0};
  std::mutex mu_;  // guards handles_, cancelled_, first_error_, results_
  std::vector<RequestHandle> handles_;
  bool cancelled_ = false;
  Status first_error_;
};

grpc::ServerUnaryReactor* RankService::Rank(grpc::CallbackServerContext* context, const v1::RankRequest* request,
                                            v1::RankResponse* response) {
  last_call_ns_.store(SteadyNanos(), std::memory_order_seq_cst);
  // Counted before the state is read, so that a drain that sees no call in flight never misses one
  // that is about to start.
  in_flight_.fetch_add(1, std::memory_order_seq_cst);
  const State state = state_.load(std::memory_order_seq_cst);
  if (state != State::kServing) {
    CallDone();
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    const char* why = state == State::kLoading ? "loading its models" : "draining (shutting down)";
    Reply(reactor, grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string("the server is ") + why));
    return reactor;
  }
  auto* call = new RankCall(this, context, request, response);  // deletes itself in OnDone
  call->Start();
  return call;
}

RankServer::RankServer(std::shared_ptr<ModelRegistry> registry)
    : registry_(std::move(registry)), service_(std::make_unique<RankService>(registry_)) {}

Status RankServer::Create(const RankServerOptions& options, std::shared_ptr<ModelRegistry> registry,
                          std::unique_ptr<RankServer>* out) {
  std::unique_ptr<RankServer> server(new RankServer(std::move(registry)));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = options.host + ":" + std::to_string(options.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(server->service_.get());
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
  service_->set_state(serving ? RankService::State::kServing : RankService::State::kLoading);
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
  service_->set_state(RankService::State::kDraining);
  health_shown_ = false;
  server_->GetHealthCheckService()->Shutdown();  // every service NOT_SERVING; later updates are ignored
}

bool RankServer::WaitDrained(Duration quiet, Duration grace) { return service_->WaitDrained(quiet, grace); }

void RankServer::Shutdown(Duration grace) {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
}

int64_t RankServer::in_flight() const { return service_->in_flight(); }

std::array<uint64_t, kStatusCodeCount> RankServer::CallCounts() const { return service_->CallCounts(); }

}  // namespace adrank
