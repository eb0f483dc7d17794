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

size_t BatchRowsBucket(int64_t rows) {
  const std::vector<int64_t>& bounds = BatchRowsBucketBounds();
  return static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), rows) - bounds.begin());
}

}  // namespace

const std::vector<int64_t>& BatchRowsBucketBounds() {
  static const std::vector<int64_t> bounds = [] {
    std::vector<int64_t> b = {1};
    for (int64_t p = 2; p <= 4096; p *= 2) {
      if (p >= 4) b.push_back(p / 4 * 3);  // 1.5x the previous power of two
      b.push_back(p);
    }
    return b;
  }();
  return bounds;
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

int64_t Batcher::CloseRows() const {
  return options_.preferred_batch_rows.empty() ? options_.max_batch_rows : options_.preferred_batch_rows.back();
}

int64_t Batcher::PaddedRows(int64_t rows) const {
  if (!options_.pad_to_preferred) return rows;
  for (int64_t size : options_.preferred_batch_rows) {
    if (size >= rows) return size;
  }
  return options_.max_batch_rows;
}

TimePoint Batcher::ReadyAt(bool model_idle, TimePoint now) const {
  std::lock_guard<std::mutex> lock(mu_);
  return ReadyAtLocked(model_idle, now);
}

TimePoint Batcher::ReadyAtLocked(bool model_idle, TimePoint now) const {
  if (queued_requests_ == 0) return kNoDeadline;
  const bool requests_full = options_.max_batch_requests > 0 && queued_requests_ >= options_.max_batch_requests;
  if (queued_rows_ >= CloseRows() || requests_full || (options_.idle_dispatch && model_idle)) return now;
  TimePoint ready = *enqueued_.begin() + std::chrono::microseconds(options_.max_queue_delay_us);
  if (!deadlines_.empty()) {
    // Close early enough that the tightest deadline is met by the batch as it stands, with room for
    // the worker to wake late: closing at exactly deadline - exec would shed that very request.
    const Duration exec = predictor_.Predict(PaddedRows(std::min(queued_rows_, options_.max_batch_rows)));
    ready = std::min(ready, *deadlines_.begin() - exec - DeadlineSlack(exec));
  }
  return ready;
}

std::unique_ptr<Batch> Batcher::NextBatch(bool model_idle, bool flush) {
  std::vector<Dropped> finished;
  std::unique_ptr<Batch> batch;
  TimePoint now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    now = clock_->Now();
    while (queued_requests_ > 0 && (flush || ReadyAtLocked(model_idle, now) <= now)) {
      batch = FormLocked(now, &finished);
      if (batch) break;
    }
  }
  FinishDropped(finished, now);
  return batch;
}

size_t Batcher::NextTenantLocked(size_t level) const {
  size_t best = SIZE_MAX;
  double best_pass = 0;
  for (size_t tenant : active_[level]) {
    const double pass = std::max(tenants_[tenant].pass[level], class_pass_[level]);
    if (best == SIZE_MAX || pass < best_pass) {
      best = tenant;
      best_pass = pass;
    }
  }
  return best;
}

std::unique_ptr<Batch> Batcher::FormLocked(TimePoint now, std::vector<Dropped>* finished) {
  auto batch = std::make_unique<Batch>();
  const int64_t capacity = options_.max_batch_rows;
  const size_t max_requests =
      options_.max_batch_requests > 0 ? static_cast<size_t>(options_.max_batch_requests) : SIZE_MAX;
  const Duration lifo_after = std::chrono::microseconds(options_.adaptive_lifo_us);
  bool full = false;
  for (size_t level = 0; level < active_.size() && !full; ++level) {
    while (batch->rows < capacity && batch->slices.size() < max_requests) {
      const size_t index = NextTenantLocked(level);
      if (index == SIZE_MAX) break;
      TenantQueue& tenant = tenants_[index];
      auto& queue = tenant.queues[level];
      // Adaptive LIFO: a standing queue is served newest first (see Overload in the header).
      const bool lifo = options_.adaptive_lifo_us > 0 && now - queue.front()->enqueue_time() > lifo_after;
      RequestHandle request = lifo ? queue.back() : queue.front();
      auto pop = [&] {
        lifo ? queue.pop_back() : queue.pop_front();
        DeactivateIfEmptyLocked(index, level);
      };
      const int64_t remaining = request->rows() - request->next_row;
      if (request->failed()) {
        RemoveLocked(request);
        finished->push_back({request, remaining, Internal("dropped: an earlier part of the request failed")});
        continue;
      }
      if (now >= request->deadline()) {
        pop();
        finished->push_back(ExpireLocked(request, now));
        continue;
      }
      const int64_t space = capacity - batch->rows;
      int64_t take = remaining;
      if (remaining > space) {
        // Split only what cannot ride whole in any batch, or what starts an empty one.
        if (batch->rows > 0 && remaining <= capacity) {
          full = true;
          break;
        }
        take = space;
      }
      const double start = std::max(tenant.pass[level], class_pass_[level]);
      class_pass_[level] = start;
      tenant.pass[level] = start + static_cast<double>(take) / tenant.policy.weight;
      batch->slices.push_back(BatchSlice{request, request->next_row, take});
      batch->rows += take;
      request->next_row += take;
      request->any_row_batched = true;
      TakeRowsLocked(request, take);
      if (request->next_row == request->rows()) {
        pop();
        if (request->deadline() != kNoDeadline) deadlines_.erase(deadlines_.find(request->deadline()));
        enqueued_.erase(enqueued_.find(request->enqueue_time()));
        queued_requests_--;
        tenant.queued_requests--;
        request->queued = false;
      }
    }
  }
  ShedUnreachableLocked(batch.get(), now, finished);
  ShedStrandedLocked(batch->rows, now, finished);
  if (batch->rows == 0) return nullptr;
  batch->padded_rows = PaddedRows(batch->rows);
  batch->formed_at = now;
  running_rows_ += batch->padded_rows;
  submit_stats_.batches++;
  submit_stats_.batch_rows += static_cast<uint64_t>(batch->rows);
  submit_stats_.batch_rows_counts[BatchRowsBucket(batch->rows)]++;
  return batch;
}

void Batcher::ShedStrandedLocked(int64_t batch_rows, TimePoint now, std::vector<Dropped>* finished) {
  // A queued request can start no earlier than the batch being formed ends, and needs a batch of its own
  // after it: one whose deadline comes sooner is answered now rather than at its deadline, which it would
  // reach without having run (most often the oldest of a queue served newest first).
  const Duration exec = predictor_.Predict(PaddedRows(std::max<int64_t>(batch_rows, 1)));
  if (exec.count() == 0 || deadlines_.empty()) return;
  const TimePoint cutoff = now + 2 * exec;
  if (*deadlines_.begin() >= cutoff) return;
  for (size_t level = 0; level < active_.size(); ++level) {
    const std::vector<size_t> active = active_[level];  // a copy: shedding may empty a queue
    for (size_t tenant : active) {
      auto& queue = tenants_[tenant].queues[level];
      for (auto it = queue.begin(); it != queue.end();) {
        const RequestHandle request = *it;
        if (request->deadline() >= cutoff || request->any_row_batched) {
          ++it;
          continue;
        }
        it = queue.erase(it);
        const int64_t rows = request->rows() - request->next_row;
        ForgetLocked(request);
        counters_->shed.fetch_add(1, std::memory_order_relaxed);
        finished->push_back(
            {request, rows,
             DeadlineExceeded("deadline cannot be met: " + std::to_string(ToMicros(request->deadline() - now)) +
                              " us remain, less than the batch now forming and one more take (" +
                              std::to_string(ToMicros(2 * exec)) + " us predicted); not computed")});
      }
      DeactivateIfEmptyLocked(tenant, level);
    }
  }
}

void Batcher::ShedUnreachableLocked(Batch* batch, TimePoint now, std::vector<Dropped>* finished) {
  const bool any_deadline = std::any_of(batch->slices.begin(), batch->slices.end(),
                                        [](const BatchSlice& s) { return s.request->deadline() != kNoDeadline; });
  if (!any_deadline) return;
  const int64_t formed_rows = batch->rows;
  const Duration exec = predictor_.Predict(PaddedRows(formed_rows));
  if (exec.count() == 0) return;
  std::vector<BatchSlice> kept;
  kept.reserve(batch->slices.size());
  for (BatchSlice& slice : batch->slices) {
    RequestHandle& request = slice.request;
    if (now + exec <= request->deadline()) {
      kept.push_back(std::move(slice));
      continue;
    }
    int64_t rows = slice.rows;
    if (request->queued) {
      rows += request->rows() - request->next_row;
      RemoveLocked(request);
    }
    batch->rows -= slice.rows;
    counters_->shed.fetch_add(1, std::memory_order_relaxed);
    finished->push_back(
        {request, rows,
         DeadlineExceeded("deadline cannot be met: a batch of " + std::to_string(formed_rows) +
                          " rows is predicted to take " + std::to_string(ToMicros(exec)) + " us, " +
                          std::to_string(ToMicros(request->deadline() - now)) + " us remain; not computed")});
  }
  batch->slices = std::move(kept);
}

Batcher::Dropped Batcher::ExpireLocked(const RequestHandle& request, TimePoint now) {
  const int64_t remaining = request->rows() - request->next_row;
  ForgetLocked(request);
  counters_->expired.fetch_add(1, std::memory_order_relaxed);
  return {request, remaining,
          DeadlineExceeded("deadline passed after " + std::to_string(ToMicros(now - request->enqueue_time())) +
                           " us in the queue; not computed")};
}

TimePoint Batcher::EarliestDeadline() const {
  std::lock_guard<std::mutex> lock(mu_);
  return deadlines_.empty() ? kNoDeadline : *deadlines_.begin();
}

void Batcher::ExpireOverdue() {
  std::vector<Dropped> finished;
  TimePoint now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    now = clock_->Now();
    if (deadlines_.empty() || *deadlines_.begin() > now) return;
    for (size_t level = 0; level < active_.size(); ++level) {
      const std::vector<size_t> active = active_[level];  // a copy: expiring may empty a queue
      for (size_t tenant : active) {
        auto& queue = tenants_[tenant].queues[level];
        for (auto it = queue.begin(); it != queue.end();) {
          if (now >= (*it)->deadline()) {
            finished.push_back(ExpireLocked(*it, now));
            it = queue.erase(it);
          } else {
            ++it;
          }
        }
        DeactivateIfEmptyLocked(tenant, level);
      }
    }
  }
  FinishDropped(finished, now);
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
