#include "rank_server.h"

#include <absl/synchronization/mutex.h>
#include <google/protobuf/stubs/logging.h>
#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
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
#include "thread_priority.h"
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

// The time the core has for the call on its clock: the gRPC deadline less the reply's margin (rank_server.h);
// kNoDeadline when the caller set none.
TimePoint CoreDeadline(const grpc::CallbackServerContext& context, Duration reply_margin) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return kNoDeadline;
  const auto remaining = deadline - std::chrono::system_clock::now();
  return SteadyClock::Get()->Now() + std::chrono::duration_cast<Duration>(remaining) - reply_margin;
}

// The caller's tenant (tenants.h): its `x-adrank-tenant` metadata, else empty ("default").
std::string CallTenant(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kTenantMetadataKey);
  return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

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

// The request's bytes in one piece: only to explain a parse failure.
std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return bytes;
}

// The Ranking service, its Rank method raw (rank_server.h: the server parses): one RankCall per call.
class RankService final : public v1::Ranking::WithRawCallbackMethod_Rank<v1::Ranking::Service> {
 public:
  enum class State { kLoading, kServing, kDraining };

  RankService(std::shared_ptr<ModelRegistry> registry, const RankServerOptions& options)
      : registry_(std::move(registry)),
        max_in_flight_bytes_(options.max_in_flight_bytes),
        reply_margin_(options.reply_margin) {}

  grpc::ServerUnaryReactor* Rank(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;

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

  // The call's work is done (it is answered): the drain no longer waits for it.
  void CallDone() {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_.fetch_sub(1, std::memory_order_acq_rel);
    done_.notify_all();
  }

  // Reserves a request's bytes against max_in_flight_bytes; false (nothing reserved) beyond it.
  bool ReserveBytes(int64_t bytes) {
    const int64_t before = in_flight_bytes_.fetch_add(bytes, std::memory_order_acq_rel);
    if (before + bytes <= max_in_flight_bytes_) return true;
    in_flight_bytes_.fetch_sub(bytes, std::memory_order_acq_rel);
    return false;
  }
  void ReleaseBytes(int64_t bytes) {
    in_flight_bytes_.fetch_sub(bytes, std::memory_order_acq_rel);
    released_bytes_.fetch_add(static_cast<uint64_t>(bytes), std::memory_order_relaxed);
  }
  int64_t in_flight_bytes() const { return in_flight_bytes_.load(std::memory_order_acquire); }
  uint64_t released_bytes() const { return released_bytes_.load(std::memory_order_relaxed); }
  int64_t max_in_flight_bytes() const { return max_in_flight_bytes_; }
  Duration reply_margin() const { return reply_margin_; }

  const ModelRegistry& registry() const { return *registry_; }

  // Every call ends here: counted by its status code, then finished. A call refused before it got a
  // RankCall (and so before it was counted in flight) is answered on gRPC's default reactor.
  void Reply(grpc::ServerUnaryReactor* reactor, const grpc::Status& status) {
    const auto code = static_cast<size_t>(status.error_code());
    calls_by_code_[code < kStatusCodeCount ? code : 2].fetch_add(1, std::memory_order_relaxed);
    reactor->Finish(status);
  }
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context, grpc::StatusCode code,
                                   const std::string& message) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    Reply(reactor, grpc::Status(code, message));
    return reactor;
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
  const int64_t max_in_flight_bytes_;
  const Duration reply_margin_;
  std::atomic<int64_t> in_flight_bytes_{0};
  std::atomic<uint64_t> released_bytes_{0};
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

// One call: parsed, then submitted to every requested model's queue; finished by the last part to
// complete. It holds its request's bytes (reserved by RankService::Rank) until gRPC is done with it.
class RankCall final : public grpc::ServerUnaryReactor {
 public:
  RankCall(RankService* service, grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes,
           grpc::ByteBuffer* reply, int64_t reserved)
      : service_(service),
        context_(context),
        bytes_(bytes),
        reply_(reply),
        reserved_(reserved),
        start_ns_(SteadyNanos()) {}

  void Start() {
    Status status = Parse();
    if (status.ok() && request_.priority() > static_cast<uint32_t>(INT32_MAX)) {
      // The core's priorities are ints; the models' own ranges are the batchers' to check.
      status = InvalidArgument("priority " + std::to_string(request_.priority()) + " is outside [0, " +
                               std::to_string(INT32_MAX) + "]");
    }
    std::vector<ModelCall> shadows;
    if (status.ok()) status = PrepareRank(request_, service_->registry(), &calls_, &shadows);
    const TimePoint deadline = CoreDeadline(*context_, service_->reply_margin());
    if (status.ok() && deadline != kNoDeadline && deadline <= SteadyClock::Get()->Now()) {
      status = DeadlineExceeded("the call's deadline leaves no time to run a model and reply (reply margin " +
                                std::to_string(ToMicros(service_->reply_margin())) + " µs)");
    }
    if (!status.ok()) {
      Answer(ToGrpc(status));
      return;
    }
    const std::string tenant = CallTenant(*context_);
    const int priority = request_.has_priority() ? static_cast<int>(request_.priority()) : kDefaultPriority;
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
    const int64_t reserved = reserved_;
    delete this;
    service->ReleaseBytes(reserved);
  }

 private:
  // The request's bytes into request_; INVALID_ARGUMENT naming where they stop being a RankRequest.
  Status Parse() {
    grpc::ProtoBufferReader reader(const_cast<grpc::ByteBuffer*>(bytes_));
    if (request_.ParseFromZeroCopyStream(&reader)) return Status::Ok();
    return ParseError(Flatten(*bytes_));
  }

  // The call's answer: its work is done (the drain stops waiting for it), then gRPC sends it.
  void Answer(const grpc::Status& status) {
    if (status.ok()) {
      bool own_buffer = false;
      const grpc::Status serialized =
          grpc::SerializationTraits<v1::RankResponse>::Serialize(response_, reply_, &own_buffer);
      if (!serialized.ok()) {
        Answer(grpc::Status(grpc::StatusCode::INTERNAL, "response: " + serialized.error_message()));
        return;
      }
    }
    service_->CallDone();
    service_->Reply(this, status);
  }

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
      Answer(ToGrpc(first_error_));
      return;
    }
    response_.set_request_id(request_.request_id());
    for (size_t i = 0; i < calls_.size(); ++i) {
      const ServedModel& model = *calls_[i].model;
      const RequestResult& r = results_[i];
      v1::ModelScores* scores = response_.add_results();
      scores->set_model(model.name);
      scores->set_version(model.version);
      const OutputTensor* score = ScoreOutput(model, r);
      if (score == nullptr) {
        Answer(
            ToGrpc(Internal("model '" + model.name + "' produced no float32 [N] output '" + model.score_output + "'")));
        return;
      }
      scores->set_scores(score->data.data(), score->data.size());
      v1::ServerTiming* timing = scores->mutable_timing();
      timing->set_queue_us(r.timing.queue_us);
      timing->set_compute_us(r.timing.compute_us);
      timing->set_batch_rows(r.timing.batch_rows);
    }
    response_.set_server_us((SteadyNanos() - start_ns_) / 1000);
    Answer(grpc::Status::OK);
  }

  RankService* const service_;
  grpc::CallbackServerContext* const context_;
  const grpc::ByteBuffer* const bytes_;
  grpc::ByteBuffer* const reply_;
  const int64_t reserved_;
  const int64_t start_ns_;
  v1::RankRequest request_;  // the core Requests view its bytes: it lives as long as the call
  v1::RankResponse response_;
  std::vector<ModelCall> calls_;
  std::vector<RequestResult> results_;
  std::atomic<int> remaining_{0};
  std::mutex mu_;  // guards handles_, cancelled_, first_error_, results_
  std::vector<RequestHandle> handles_;
  bool cancelled_ = false;
  Status first_error_;
};

grpc::ServerUnaryReactor* RankService::Rank(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) {
  last_call_ns_.store(SteadyNanos(), std::memory_order_seq_cst);
  // Counted before the state is read, so that a drain that sees no call in flight never misses one
  // that is about to start.
  in_flight_.fetch_add(1, std::memory_order_seq_cst);
  const State state = state_.load(std::memory_order_seq_cst);
  if (state != State::kServing) {
    CallDone();
    const char* why = state == State::kLoading ? "loading its models" : "draining (shutting down)";
    return Refuse(context, grpc::StatusCode::UNAVAILABLE, std::string("the server is ") + why);
  }
  // By its declared size, before a byte of it is parsed or any memory is reserved for it.
  const auto bytes = static_cast<int64_t>(request->Length());
  const int64_t largest = registry_->max_request_bytes();
  if (largest > 0 && bytes > largest) {  // with no model served, routing says so (NOT_FOUND)
    CallDone();
    return Refuse(context, grpc::StatusCode::RESOURCE_EXHAUSTED,
                  "request: " + std::to_string(bytes) + " bytes exceed the largest request the served models take (" +
                      std::to_string(largest) + " bytes: every model at its max_candidates)");
  }
  if (!ReserveBytes(bytes)) {
    CallDone();
    return Refuse(context, grpc::StatusCode::RESOURCE_EXHAUSTED,
                  "request: " + std::to_string(bytes) +
                      " bytes would pass the server's bound on request bytes in flight (" +
                      std::to_string(max_in_flight_bytes_) + ", max_in_flight_bytes); retry shortly");
  }
  auto* call = new RankCall(this, context, request, response, bytes);  // deletes itself in OnDone
  call->Start();
  return call;
}

RankServer::RankServer(std::shared_ptr<ModelRegistry> registry, const RankServerOptions& options)
    : registry_(std::move(registry)), service_(std::make_unique<RankService>(registry_, options)) {}

Status RankServer::Create(const RankServerOptions& options, std::shared_ptr<ModelRegistry> registry,
                          std::unique_ptr<RankServer>* out) {
  if (options.max_message_bytes < 1) return InvalidArgument("max_message_bytes must be >= 1");
  if (options.max_concurrent_streams < 1) return InvalidArgument("max_concurrent_streams must be >= 1");
  if (options.max_in_flight_bytes < 1) return InvalidArgument("max_in_flight_bytes must be >= 1");
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
  std::unique_ptr<RankServer> server(new RankServer(std::move(registry), options));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // Debian's abseil is built with its mutex deadlock detector on: gRPC's every lock then updates a lock
  // graph (measured: 2-3 % of the server's core at 1.5x overload, in absl::GraphCycles). gRPC's own
  // tests run with it; a server has no use for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  grpc::ServerBuilder builder;
  const std::string address = options.host + ":" + std::to_string(options.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &server->port_);
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

int64_t RankServer::in_flight_bytes() const { return service_->in_flight_bytes(); }

uint64_t RankServer::released_bytes() const { return service_->released_bytes(); }

std::array<uint64_t, kStatusCodeCount> RankServer::CallCounts() const { return service_->CallCounts(); }

}  // namespace adrank
