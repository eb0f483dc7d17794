#include "batcher.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

namespace adrank {
namespace {

std::string Quote(const std::string& name) { return "'" + name + "'"; }

Status CheckOptions(const BatcherOptions& o) {
  if (o.max_batch_rows < 1) return InvalidArgument("max_batch_rows must be >= 1");
  int64_t previous = 0;
  for (int64_t size : o.preferred_batch_rows) {
    if (size <= previous || size > o.max_batch_rows) {
      return InvalidArgument("preferred_batch_rows must be ascending, positive and <= max_batch_rows (" +
                             std::to_string(o.max_batch_rows) + "), got " + std::to_string(size));
    }
    previous = size;
  }
  if (o.pad_to_preferred && !o.preferred_batch_rows.empty() && o.preferred_batch_rows.back() != o.max_batch_rows) {
    return InvalidArgument("pad_to_preferred needs the largest preferred_batch_rows to equal max_batch_rows");
  }
  if (o.max_queue_delay_us < 0) return InvalidArgument("max_queue_delay_us must be >= 0");
  if (o.max_request_rows < 1) return InvalidArgument("max_request_rows must be >= 1");
  if (o.max_queue_rows < o.max_request_rows) {
    return InvalidArgument("max_queue_rows (" + std::to_string(o.max_queue_rows) + ") must be >= max_request_rows (" +
                           std::to_string(o.max_request_rows) + ")");
  }
  if (o.max_batch_requests < 0) return InvalidArgument("max_batch_requests must be >= 0 (0: no limit)");
  if (o.priority_levels < 1 || o.priority_levels > 16) return InvalidArgument("priority_levels must be in [1, 16]");
  if (o.default_priority < 0 || o.default_priority >= o.priority_levels) {
    return InvalidArgument("default_priority must be in [0, priority_levels - 1 = " +
                           std::to_string(o.priority_levels - 1) + "], got " + std::to_string(o.default_priority));
  }
  if (o.max_predicted_wait_us < 0) return InvalidArgument("max_predicted_wait_us must be >= 0 (0: no bound)");
  if (o.default_deadline_us < 0) return InvalidArgument("default_deadline_us must be >= 0 (0: none)");
  if (o.adaptive_lifo_us < 0) return InvalidArgument("adaptive_lifo_us must be >= 0 (0: always FIFO)");
  if (o.instances < 1) return InvalidArgument("instances must be >= 1");
  return o.tenants.Validate();
}

}  // namespace

// Never destroyed: a worker may still form a batch while the process exits (a pool alive at exit, its static
// destructors running), and each batch reads these.
const std::vector<int64_t>& BatchRowsBucketBounds() {
  static const std::vector<int64_t>* const bounds = [] {
    auto* b = new std::vector<int64_t>{1};
    for (int64_t p = 2; p <= 4096; p *= 2) {
      if (p >= 4) b->push_back(p / 4 * 3);  // 1.5x the previous power of two
      b->push_back(p);
    }
    return b;
  }();
  return *bounds;
}

Duration DeadlineSlack(Duration predicted_exec) {
  return std::max<Duration>(std::chrono::microseconds(kMinDeadlineSlackUs), predicted_exec / 10);
}

void Batcher::FinishDropped(std::vector<Dropped>& dropped, TimePoint now) {
  for (Dropped& d : dropped) d.request->FinishRows(d.rows, d.status, RequestTiming{}, now);
  dropped.clear();
}

Status Batcher::Create(const BatcherOptions& options, const ModelSignature& signature, const Clock* clock,
                       std::unique_ptr<Batcher>* out) {
  Status status = CheckOptions(options);
  if (!status.ok()) return status;
  status = signature.Validate();
  if (!status.ok()) return status;
  out->reset(new Batcher(options, signature, clock ? clock : SteadyClock::Get()));
  return Status::Ok();
}

Batcher::Batcher(const BatcherOptions& options, const ModelSignature& signature, const Clock* clock)
    : options_(options),
      signature_(signature),
      clock_(clock),
      active_(static_cast<size_t>(options.priority_levels)),
      class_rows_(static_cast<size_t>(options.priority_levels), 0),
      class_pass_(static_cast<size_t>(options.priority_levels), 0.0) {
  // Configured tenants are tracked from the start: they always fit under max_tenants.
  size_t ignored = 0;
  TenantLocked(kDefaultTenant, &ignored);
  for (const auto& entry : options_.tenants.tenants) TenantLocked(entry.first, &ignored);
}

Status Batcher::Validate(const Request& request, int64_t* rows, std::vector<RequestState::InputSlot>* slots) const {
  if (request.candidates.empty()) return InvalidArgument("request has no candidate tensors");
  const TensorView& first = request.candidates.front();
  if (first.shape.empty())
    return InvalidArgument("candidate tensor " + Quote(first.name) + " has rank 0: rows unknown");
  const int64_t n = first.shape[0];
  if (n <= 0) {
    return InvalidArgument("candidate tensor " + Quote(first.name) + " has " + std::to_string(n) +
                           " rows: a request needs at least one candidate");
  }
  if (n > options_.max_request_rows) {
    return InvalidArgument("candidate tensor " + Quote(first.name) + " has " + std::to_string(n) +
                           " rows, more than max_request_rows (" + std::to_string(options_.max_request_rows) + ")");
  }
  slots->assign(signature_.inputs.size(), RequestState::InputSlot{Role::kCandidate, SIZE_MAX});
  auto place = [&](const std::vector<TensorView>& views, Role role) -> Status {
    for (size_t k = 0; k < views.size(); ++k) {
      const TensorView& view = views[k];
      const char* where = role == Role::kContext ? "context" : "candidates";
      auto it = std::find_if(signature_.inputs.begin(), signature_.inputs.end(),
                             [&](const TensorSpec& spec) { return spec.name == view.name; });
      if (it == signature_.inputs.end()) {
        return InvalidArgument("tensor " + Quote(view.name) + " in " + where + " is not an input of the model");
      }
      if (it->role != role) {
        return InvalidArgument("tensor " + Quote(view.name) + " is a " +
                               (it->role == Role::kContext ? "context" : "candidate") + " input, but was sent in " +
                               where);
      }
      auto& slot = (*slots)[static_cast<size_t>(it - signature_.inputs.begin())];
      if (slot.index != SIZE_MAX) return InvalidArgument("tensor " + Quote(view.name) + " is sent twice");
      Status status = ValidateTensor(view, *it, role == Role::kContext ? 1 : n);
      if (!status.ok()) return status;
      slot = RequestState::InputSlot{role, k};
    }
    return Status::Ok();
  };
  Status status = place(request.candidates, Role::kCandidate);
  if (status.ok()) status = place(request.context, Role::kContext);
  if (!status.ok()) return status;
  for (size_t i = 0; i < slots->size(); ++i) {
    if ((*slots)[i].index == SIZE_MAX) {
      const TensorSpec& spec = signature_.inputs[i];
      return InvalidArgument(std::string(spec.role == Role::kContext ? "context" : "candidate") + " tensor " +
                             Quote(spec.name) + " is missing");
    }
  }
  *rows = n;
  return Status::Ok();
}

Status Batcher::ResolvePriority(int requested, const TenantPolicy& policy, const std::string& tenant, int* out) const {
  const int priority = requested == kDefaultPriority ? options_.default_priority : requested;
  if (priority < 0 || priority >= options_.priority_levels) {
    return InvalidArgument("priority " + std::to_string(requested) + " is outside [0, " +
                           std::to_string(options_.priority_levels - 1) + "]");
  }
  if (priority < options_.default_priority && (policy.highest_priority < 0 || priority < policy.highest_priority)) {
    return PermissionDenied("tenant '" + tenant + "' may not use priority class " + std::to_string(priority) +
                            ": classes above the default (" + std::to_string(options_.default_priority) +
                            ") need the tenant's highest_priority configured");
  }
  *out = priority;
  return Status::Ok();
}

Status Batcher::TenantLocked(const std::string& name, size_t* index) {
  auto it = tenant_index_.find(name);
  if (it != tenant_index_.end()) {
    *index = it->second;
    return Status::Ok();
  }
  if (tenants_.size() >= static_cast<size_t>(options_.tenants.max_tenants)) {
    return ResourceExhausted("tenant '" + name + "' is new, and this model already tracks max_tenants (" +
                             std::to_string(options_.tenants.max_tenants) + ") tenants");
  }
  const size_t levels = static_cast<size_t>(options_.priority_levels);
  TenantQueue queue;
  queue.name = name;
  queue.policy = options_.tenants.PolicyOf(name);
  queue.queues.resize(levels);
  queue.rows_by_class.assign(levels, 0);
  queue.pass.assign(levels, 0.0);
  tenants_.push_back(std::move(queue));
  *index = tenants_.size() - 1;
  tenant_index_.emplace(name, *index);
  return Status::Ok();
}

Status Batcher::Submit(Request request, RequestHandle* handle) {
  const TimePoint now = clock_->Now();
  Admission admission;
  std::vector<RequestState::InputSlot> slots;
  if (request.tenant.empty()) request.tenant = kDefaultTenant;
  Status status = ValidateTenantName(request.tenant);
  if (status.ok()) status = Validate(request, &admission.rows, &slots);
  if (status.ok() && request.deadline <= now) {
    status = DeadlineExceeded("deadline passed before the request was queued");
  }
  admission.deadline = request.deadline;
  if (admission.deadline == kNoDeadline && options_.default_deadline_us > 0) {
    admission.deadline = now + std::chrono::microseconds(options_.default_deadline_us);
  }
  std::shared_ptr<TenantCounters> tenant_counters;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (status.ok()) status = TenantLocked(request.tenant, &admission.tenant);
    if (status.ok()) {
      const TenantQueue& tenant = tenants_[admission.tenant];
      tenant_counters = tenant.counters;
      status = ResolvePriority(request.priority, tenant.policy, tenant.name, &admission.priority);
      if (!status.ok()) tenant_counters->refused_denied.fetch_add(1, std::memory_order_relaxed);
    }
    if (!status.ok()) {
      switch (status.code()) {
        case StatusCode::kDeadlineExceeded:
          submit_stats_.rejected_expired++;
          break;
        case StatusCode::kPermissionDenied:
          submit_stats_.rejected_denied++;
          break;
        case StatusCode::kResourceExhausted:
          submit_stats_.rejected_tenant++;
          break;
        default:
          submit_stats_.rejected_invalid++;
      }
      return status;
    }
    // Admitted before the outputs are allocated: under overload most submissions are refused, and a
    // refusal must cost no allocation.
    status = AdmitLocked(admission, now);
    if (!status.ok()) return status;
  }
  request.deadline = admission.deadline;
  request.priority = admission.priority;
  // Outside the lock: zero-filling N rows of outputs would stall every worker asking for a batch.
  auto state = std::make_shared<RequestState>(std::move(request), admission.rows, slots, counters_, tenant_counters,
                                              admission.tenant, now);
  state->AllocateOutputs(signature_);

  std::lock_guard<std::mutex> lock(mu_);
  // Again: the batcher may have closed or the queue filled meanwhile. A close that came in between
  // must win, or a drain that already found the queue empty would never run this request.
  status = AdmitLocked(admission, now);
  if (!status.ok()) return status;
  EnqueueLocked(state);
  submit_stats_.submitted++;
  tenant_counters->submitted.fetch_add(1, std::memory_order_relaxed);
  tenant_counters->rows.fetch_add(static_cast<uint64_t>(admission.rows), std::memory_order_relaxed);
  tenant_counters->in_flight.fetch_add(1, std::memory_order_relaxed);
  if (handle) *handle = std::move(state);
  return Status::Ok();
}

Status Batcher::AdmitLocked(const Admission& admission, TimePoint now) {
  if (closed_) {
    submit_stats_.rejected_closed++;
    return Unavailable("the model is not accepting requests: it is shutting down or unloading");
  }
  const int64_t rows = admission.rows;
  TenantQueue& tenant = tenants_[admission.tenant];
  if (queued_rows_ + rows > options_.max_queue_rows) {
    const int64_t share = QueueShareLocked(admission.tenant);
    if (tenant.queued_rows + rows > share) {
      submit_stats_.rejected_queue_full++;
      tenant.counters->refused_limit.fetch_add(1, std::memory_order_relaxed);
      return ResourceExhausted("queue full: " + std::to_string(queued_rows_) + " rows queued, " + std::to_string(rows) +
                               " more would exceed max_queue_rows (" + std::to_string(options_.max_queue_rows) +
                               "), and tenant '" + tenant.name + "' holds " + std::to_string(tenant.queued_rows) +
                               ", its share being " + std::to_string(share));
    }
  }
  if (tenant.policy.max_queued_rows > 0 && tenant.queued_rows + rows > tenant.policy.max_queued_rows) {
    submit_stats_.rejected_tenant++;
    tenant.counters->refused_limit.fetch_add(1, std::memory_order_relaxed);
    return ResourceExhausted("tenant '" + tenant.name + "' has " + std::to_string(tenant.queued_rows) +
                             " rows queued; " + std::to_string(rows) + " more would exceed its max_queued_rows (" +
                             std::to_string(tenant.policy.max_queued_rows) + ")");
  }
  const int64_t in_flight = tenant.counters->in_flight.load(std::memory_order_relaxed);
  if (in_flight >= tenant.policy.max_in_flight) {
    submit_stats_.rejected_tenant++;
    tenant.counters->refused_limit.fetch_add(1, std::memory_order_relaxed);
    return ResourceExhausted("tenant '" + tenant.name + "' has " + std::to_string(in_flight) +
                             " requests in flight, its max_in_flight (" + std::to_string(tenant.policy.max_in_flight) +
                             ")");
  }
  return CheckPredictedWaitLocked(admission, now);
}

int64_t Batcher::QueueShareLocked(size_t tenant) const {
  // The weights of the tenants with rows queued in any class, this one included.
  double total = tenants_[tenant].policy.weight;
  for (size_t t = 0; t < tenants_.size(); ++t) {
    if (t != tenant && tenants_[t].queued_rows > 0) total += tenants_[t].policy.weight;
  }
  return static_cast<int64_t>(static_cast<double>(options_.max_queue_rows) * tenants_[tenant].policy.weight / total);
}

int64_t Batcher::RowsAheadLocked(const Admission& admission) const {
  const size_t level = static_cast<size_t>(admission.priority);
  int64_t ahead = running_rows_;
  for (size_t higher = 0; higher < level; ++higher) ahead += class_rows_[higher];
  const TenantQueue& own = tenants_[admission.tenant];
  const int64_t own_rows = own.rows_by_class[level] + admission.rows;
  ahead += own.rows_by_class[level];
  // Fair sharing: while this request's tenant works through its own rows, each other tenant gets
  // rows in proportion to its weight, up to what it has queued.
  for (size_t other : active_[level]) {
    if (other == admission.tenant) continue;
    const TenantQueue& t = tenants_[other];
    const double share = static_cast<double>(own_rows) * t.policy.weight / own.policy.weight;
    ahead += std::min<int64_t>(t.rows_by_class[level], static_cast<int64_t>(std::ceil(share)));
  }
  return ahead;
}

Status Batcher::CheckPredictedWaitLocked(const Admission& admission, TimePoint now) {
  if (!predictor_.has_samples()) return Status::Ok();  // nothing is refused on a guess
  const int64_t ahead = RowsAheadLocked(admission);
  const Duration done = PredictRows(ahead + admission.rows) / options_.instances;
  if (now + done > admission.deadline) {
    counters_->shed.fetch_add(1, std::memory_order_relaxed);
    tenants_[admission.tenant].counters->deadline.fetch_add(1, std::memory_order_relaxed);
    return DeadlineExceeded("deadline cannot be met: " + std::to_string(ahead) + " rows ahead and " +
                            std::to_string(admission.rows) + " of its own are predicted to take " +
                            std::to_string(ToMicros(done)) + " us, " +
                            std::to_string(ToMicros(admission.deadline - now)) + " us remain; not computed");
  }
  // The bound in time is on the wait others impose: the tenant's own queued rows are its own backlog,
  // bounded by its deadlines and its share of the queue (tenants.h, max_queued_rows).
  const int64_t others = ahead - tenants_[admission.tenant].rows_by_class[static_cast<size_t>(admission.priority)];
  const Duration wait = PredictRows(others) / options_.instances;
  if (options_.max_predicted_wait_us > 0 && ToMicros(wait) > options_.max_predicted_wait_us) {
    submit_stats_.rejected_queue_full++;
    tenants_[admission.tenant].counters->refused_limit.fetch_add(1, std::memory_order_relaxed);
    return ResourceExhausted("queue full: " + std::to_string(others) + " rows of other requests ahead are predicted " +
                             "to take " + std::to_string(ToMicros(wait)) + " us, more than max_predicted_wait_us (" +
                             std::to_string(options_.max_predicted_wait_us) + ")");
  }
  return Status::Ok();
}

void Batcher::EnqueueLocked(const RequestHandle& state) {
  const size_t level = static_cast<size_t>(state->priority());
  TenantQueue& tenant = tenants_[state->tenant_index()];
  std::deque<RequestHandle>& queue = tenant.queues[level];
  if (queue.empty()) active_[level].push_back(state->tenant_index());
  queue.push_back(state);
  if (state->deadline() != kNoDeadline) deadlines_.insert(state->deadline());
  enqueued_.insert(state->enqueue_time());
  state->queued = true;
  const int64_t rows = state->rows();
  queued_rows_ += rows;
  queued_requests_++;
  class_rows_[level] += rows;
  tenant.rows_by_class[level] += rows;
  tenant.queued_rows += rows;
  tenant.queued_requests++;
}

void Batcher::DeactivateIfEmptyLocked(size_t tenant, size_t level) {
  if (!tenants_[tenant].queues[level].empty()) return;
  std::vector<size_t>& active = active_[level];
  active.erase(std::find(active.begin(), active.end(), tenant));
}

void Batcher::TakeRowsLocked(const RequestHandle& request, int64_t rows) {
  const size_t level = static_cast<size_t>(request->priority());
  TenantQueue& tenant = tenants_[request->tenant_index()];
  queued_rows_ -= rows;
  class_rows_[level] -= rows;
  tenant.rows_by_class[level] -= rows;
  tenant.queued_rows -= rows;
}

void Batcher::RemoveLocked(const RequestHandle& request) {
  const size_t level = static_cast<size_t>(request->priority());
  auto& queue = tenants_[request->tenant_index()].queues[level];
  auto it = std::find(queue.begin(), queue.end(), request);
  if (it != queue.end()) queue.erase(it);
  DeactivateIfEmptyLocked(request->tenant_index(), level);
  ForgetLocked(request);
}

void Batcher::ForgetLocked(const RequestHandle& request) {
  if (request->deadline() != kNoDeadline) deadlines_.erase(deadlines_.find(request->deadline()));
  enqueued_.erase(enqueued_.find(request->enqueue_time()));
  TakeRowsLocked(request, request->rows() - request->next_row);
  queued_requests_--;
  tenants_[request->tenant_index()].queued_requests--;
  request->queued = false;
}

bool Batcher::Cancel(const RequestHandle& handle) {
  if (!handle) return false;
  int64_t rows = 0;
  bool never_runs = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!handle->queued) return false;
    rows = handle->rows() - handle->next_row;
    never_runs = !handle->any_row_batched;
    RemoveLocked(handle);
  }
  handle->FinishRows(rows, Cancelled("request cancelled by the caller"), RequestTiming{}, clock_->Now());
  return never_runs;
}

void Batcher::RecordExecution(int64_t padded_rows, Duration elapsed, bool succeeded) {
  std::lock_guard<std::mutex> lock(mu_);
  running_rows_ = std::max<int64_t>(0, running_rows_ - padded_rows);
  if (succeeded) predictor_.Record(padded_rows, elapsed);
}

Duration Batcher::PredictRows(int64_t rows) const {
  const int64_t full = rows / options_.max_batch_rows;
  const int64_t rest = rows % options_.max_batch_rows;
  Duration total = predictor_.Predict(PaddedRows(options_.max_batch_rows)) * full;
  if (rest > 0) total += predictor_.Predict(PaddedRows(rest));
  return total;
}

Duration Batcher::PredictExecution(int64_t rows) const {
  std::lock_guard<std::mutex> lock(mu_);
  return predictor_.Predict(rows);
}

void Batcher::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
}

void Batcher::FailQueued(const Status& status) {
  std::vector<Dropped> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (TenantQueue& tenant : tenants_) {
      for (auto& queue : tenant.queues) {
        while (!queue.empty()) {
          RequestHandle request = queue.front();
          const int64_t remaining = request->rows() - request->next_row;
          RemoveLocked(request);
          finished.push_back({request, remaining, status});
        }
      }
    }
  }
  FinishDropped(finished, clock_->Now());
}

BatcherStats Batcher::stats() const {
  BatcherStats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = submit_stats_;
    s.queued_rows = queued_rows_;
    s.queued_requests = queued_requests_;
  }
  s.completed_ok = counters_->completed_ok.load(std::memory_order_relaxed);
  s.failed = counters_->failed.load(std::memory_order_relaxed);
  s.late = counters_->late.load(std::memory_order_relaxed);
  s.expired = counters_->expired.load(std::memory_order_relaxed);
  s.shed = counters_->shed.load(std::memory_order_relaxed);
  s.cancelled = counters_->cancelled.load(std::memory_order_relaxed);
  return s;
}

std::vector<TenantStats> Batcher::tenant_stats() const {
  std::vector<TenantStats> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.reserve(tenants_.size());
  for (const TenantQueue& t : tenants_) {
    TenantStats s;
    s.tenant = t.name;
    s.queued_rows = t.queued_rows;
    s.queued_requests = t.queued_requests;
    const TenantCounters& c = *t.counters;
    s.in_flight = c.in_flight.load(std::memory_order_relaxed);
    s.submitted = c.submitted.load(std::memory_order_relaxed);
    s.rows = c.rows.load(std::memory_order_relaxed);
    s.completed_ok = c.completed_ok.load(std::memory_order_relaxed);
    s.deadline = c.deadline.load(std::memory_order_relaxed);
    s.refused_limit = c.refused_limit.load(std::memory_order_relaxed);
    s.refused_denied = c.refused_denied.load(std::memory_order_relaxed);
    s.failed = c.failed.load(std::memory_order_relaxed);
    out.push_back(std::move(s));
  }
  return out;
}

bool Batcher::empty() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_requests_ == 0;
}

}  // namespace adrank
