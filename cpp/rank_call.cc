#include "rank_call.h"

#include <google/protobuf/io/zero_copy_stream.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <memory>

namespace adrank {
namespace {

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

// StartRank's call: owns itself (self_) from its start until its answer is kept.
class KeptRankCall final : public RankCall {
 public:
  KeptRankCall(std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered)
      : answer_(std::move(answer)), answered_(std::move(answered)) {}

  static RankCallHandle Start(std::string_view bytes, const ModelRegistry& registry, const RankCallOptions& options,
                              std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered) {
    auto call = std::make_shared<KeptRankCall>(std::move(answer), std::move(answered));
    call->self_ = call;
    RankCallHandle handle(call);
    call->Parse(bytes);
    call->RankCall::Start(registry, options);
    return handle;
  }

 private:
  void Answer(const Status& status, v1::RankResponse* response) override {
    const std::shared_ptr<KeptRankCall> self = std::move(self_);  // the call ends with this scope
    KeepAnswer(status, *response, *answer_, answered_);
  }

  const std::shared_ptr<Outcome<RankAnswer>> answer_;
  const std::function<void()> answered_;
  std::shared_ptr<KeptRankCall> self_;
};

}  // namespace

void KeepAnswer(const Status& status, const google::protobuf::MessageLite& response, Outcome<RankAnswer>& answer,
                const std::function<void()>& answered) {
  RankAnswer kept{status, {}};
  if (kept.status.ok() && !response.SerializeToString(&kept.reply)) {
    kept.status = Internal("response: cannot be serialized");
  }
  answer.Set(std::move(kept));
  if (answered) answered();
}

void RankCallHandle::Cancel() const {
  if (const std::shared_ptr<RankCall> call = call_.lock()) call->Cancel();
}

RankCallHandle StartRank(std::string_view bytes, const ModelRegistry& registry, const RankCallOptions& options,
                         std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered) {
  return KeptRankCall::Start(bytes, registry, options, std::move(answer), std::move(answered));
}

Status CheckPriority(int64_t priority) {
  if (priority < 0 || priority > INT32_MAX) {
    return InvalidArgument("priority " + std::to_string(priority) + " is outside [0, " + std::to_string(INT32_MAX) +
                           "]");
  }
  return Status::Ok();
}

RankCall::RankCall() : start_ns_(SteadyNanos()) {}

void RankCall::MarkArrival() { start_ns_ = SteadyNanos(); }

void RankCall::Parse(std::string_view bytes) {
  if (!request_.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) parsed_ = ParseError(bytes);
}

void RankCall::Parse(google::protobuf::io::ZeroCopyInputStream* stream, const std::function<std::string()>& bytes) {
  if (!request_.ParseFromZeroCopyStream(stream)) parsed_ = ParseError(bytes());
}

Status RankCall::Check(const ModelRegistry& registry, const RankCallOptions& options, std::vector<ModelCall>* shadows) {
  if (!parsed_.ok()) return parsed_;
  Status status = CheckPriority(request_.priority());
  if (status.ok()) status = PrepareRank(request_, registry, &calls_, shadows);
  if (!status.ok()) return status;
  if (options.deadline != kNoDeadline) {
    core_deadline_ = options.deadline - options.reply_margin;
    if (core_deadline_ <= SteadyClock::Get()->Now()) {
      return DeadlineExceeded("the call's deadline leaves no time to run a model and reply (reply margin " +
                              std::to_string(ToMicros(options.reply_margin)) + " µs)");
    }
  }
  return Status::Ok();
}

void RankCall::Start(const ModelRegistry& registry, const RankCallOptions& options) {
  std::vector<ModelCall> shadows;
  const Status status = Check(registry, options, &shadows);
  if (!status.ok()) {
    Answer(status, &response_);
    return;
  }
  const int priority = request_.has_priority() ? static_cast<int>(request_.priority()) : kDefaultPriority;
  tenant_ = options.tenant;
  const size_t parts = calls_.size();
  results_.resize(parts);
  handles_.resize(parts);
  // One count per part plus Start's own: the call cannot finish while Start still submits, however fast
  // the parts complete.
  remaining_.store(static_cast<int>(parts) + 1, std::memory_order_release);
  for (size_t i = 0; i < parts; ++i) {
    Request& request = calls_[i].request;
    request.deadline = core_deadline_;
    request.priority = priority;
    request.tenant = options.tenant;
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

void RankCall::Cancel() {
  std::vector<QueuedPart> to_cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    to_cancel = QueuedPartsLocked();
  }
  CancelParts(to_cancel);
}

std::vector<RankCall::QueuedPart> RankCall::QueuedPartsLocked() const {
  std::vector<QueuedPart> parts;
  for (size_t i = 0; i < handles_.size(); ++i) {
    if (handles_[i]) parts.emplace_back(calls_[i].model->queue, handles_[i]);
  }
  return parts;
}

// Without mu_: a cancel may complete its request at once, on this thread (Complete takes mu_).
void RankCall::CancelParts(const std::vector<QueuedPart>& parts) {
  for (const auto& [queue, handle] : parts) queue->Cancel(handle);
}

void RankCall::Submit(size_t part) {
  const std::shared_ptr<ModelQueue> queue = calls_[part].model->queue;
  bool cancelled = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled = cancelled_;
  }
  if (cancelled) {  // cancelled before it was submitted: it never reaches a queue
    Complete(part, RequestResult{Cancelled("the call was cancelled"), {}, {}});
    return;
  }
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

void RankCall::Complete(size_t part, RequestResult&& result) {
  std::vector<QueuedPart> to_cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    handles_[part].reset();
    if (!result.status.ok() && first_error_.ok()) {
      // The call fails with this error: the other models' queued parts need not run.
      first_error_ = result.status;
      failed_part_ = part;
      to_cancel = QueuedPartsLocked();
    }
    results_[part] = std::move(result);
  }
  CancelParts(to_cancel);
  Release();
}

void RankCall::Release() {
  if (remaining_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // The last one: every part has completed and Start has returned; nothing else touches the call.
  for (const RequestResult& result : results_)
    batch_requests_ = std::max(batch_requests_, result.timing.batch_requests);
  Status status = first_error_;
  size_t failed = failed_part_;
  if (status.ok()) status = FillResponse(&failed);
  if (!status.ok()) response_.Clear();
  if (status.code() == StatusCode::kInternal) {  // the server's fault: its log names the call (server_errors.h)
    const ServedModel& model = *calls_[failed].model;
    ReportServerError(ServerError{model.name, model.version, tenant_, request_.request_id(), status.message()});
  }
  Answer(status, &response_);
}

Status RankCall::FillResponse(size_t* failed) {
  response_.set_request_id(request_.request_id());
  for (size_t i = 0; i < calls_.size(); ++i) {
    const ServedModel& model = *calls_[i].model;
    const RequestResult& r = results_[i];
    const OutputTensor* score = ScoreOutput(model, r);
    if (score == nullptr) {
      *failed = i;
      return Internal("model '" + model.name + "' produced no float32 [N] output '" + model.score_output + "'");
    }
    v1::ModelScores* scores = response_.add_results();
    scores->set_model(model.name);
    scores->set_version(model.version);
    scores->set_scores(score->data.data(), score->data.size());
    v1::ServerTiming* timing = scores->mutable_timing();
    timing->set_queue_us(r.timing.queue_us);
    timing->set_compute_us(r.timing.compute_us);
    timing->set_batch_rows(r.timing.batch_rows);
  }
  response_.set_server_us((SteadyNanos() - start_ns_) / 1000);
  return Status::Ok();
}

}  // namespace adrank
