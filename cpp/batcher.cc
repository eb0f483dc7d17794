#include "batcher.h"

#include <algorithm>
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
  return Status::Ok();
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
    : options_(options), signature_(signature), clock_(clock), queues_(static_cast<size_t>(options.priority_levels)) {}

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
  if (request.priority < 0 || request.priority >= options_.priority_levels) {
    return InvalidArgument("priority " + std::to_string(request.priority) + " is outside [0, " +
                           std::to_string(options_.priority_levels - 1) + "]");
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

Status Batcher::Submit(Request request, RequestHandle* handle) {
  const TimePoint now = clock_->Now();
  int64_t rows = 0;
  std::vector<RequestState::InputSlot> slots;
  Status status = Validate(request, &rows, &slots);
  if (status.ok() && request.deadline <= now) {
    status = DeadlineExceeded("deadline passed before the request was queued");
  }
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    (status.code() == StatusCode::kDeadlineExceeded ? submit_stats_.rejected_expired
                                                    : submit_stats_.rejected_invalid)++;
    return status;
  }
  // Admitted before the outputs are allocated: under overload most submissions are refused, and a
  // refusal must cost no allocation.
  {
    std::lock_guard<std::mutex> lock(mu_);
    status = AdmitLocked(rows);
    if (!status.ok()) return status;
  }
  // Outside the lock: zero-filling N rows of outputs would stall every worker asking for a batch.
  auto state = std::make_shared<RequestState>(std::move(request), rows, slots, counters_, now);
  state->AllocateOutputs(signature_);

  std::lock_guard<std::mutex> lock(mu_);
  // Again: the batcher may have closed or the queue filled meanwhile. A close that came in between
  // must win, or a drain that already found the queue empty would never run this request.
  status = AdmitLocked(rows);
  if (!status.ok()) return status;
  queues_[static_cast<size_t>(state->priority())].push_back(state);
  if (state->deadline() != kNoDeadline) deadlines_.insert(state->deadline());
  state->queued = true;
  queued_rows_ += rows;
  queued_requests_++;
  submit_stats_.submitted++;
  if (handle) *handle = std::move(state);
  return Status::Ok();
}

Status Batcher::AdmitLocked(int64_t rows) {
  if (closed_) {
    submit_stats_.rejected_closed++;
    return Unavailable("the model is not accepting requests: it is shutting down or unloading");
  }
  if (queued_rows_ + rows > options_.max_queue_rows) {
    submit_stats_.rejected_queue_full++;
    return ResourceExhausted("queue full: " + std::to_string(queued_rows_) + " rows queued, " + std::to_string(rows) +
                             " more would exceed max_queue_rows (" + std::to_string(options_.max_queue_rows) + ")");
  }
  return Status::Ok();
}

void Batcher::RemoveLocked(const RequestHandle& request) {
  auto& queue = queues_[static_cast<size_t>(request->priority())];
  auto it = std::find(queue.begin(), queue.end(), request);
  if (it != queue.end()) queue.erase(it);
  ForgetLocked(request);
}

void Batcher::ForgetLocked(const RequestHandle& request) {
  if (request->deadline() != kNoDeadline) deadlines_.erase(deadlines_.find(request->deadline()));
  queued_rows_ -= request->rows() - request->next_row;
  queued_requests_--;
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
  TimePoint oldest = kNoDeadline;
  for (const auto& queue : queues_) {
    if (!queue.empty()) oldest = std::min(oldest, queue.front()->enqueue_time());
  }
  TimePoint ready = oldest + std::chrono::microseconds(options_.max_queue_delay_us);
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

std::unique_ptr<Batch> Batcher::FormLocked(TimePoint now, std::vector<Dropped>* finished) {
  auto batch = std::make_unique<Batch>();
  const int64_t capacity = options_.max_batch_rows;
  const size_t max_requests =
      options_.max_batch_requests > 0 ? static_cast<size_t>(options_.max_batch_requests) : SIZE_MAX;
  bool full = false;
  for (size_t level = 0; level < queues_.size() && !full; ++level) {
    auto& queue = queues_[level];
    while (!queue.empty() && batch->rows < capacity && batch->slices.size() < max_requests) {
      RequestHandle request = queue.front();
      const int64_t remaining = request->rows() - request->next_row;
      if (request->failed()) {
        RemoveLocked(request);
        finished->push_back({request, remaining, Internal("dropped: an earlier part of the request failed")});
        continue;
      }
      if (now >= request->deadline()) {
        queue.pop_front();
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
      batch->slices.push_back(BatchSlice{request, request->next_row, take});
      batch->rows += take;
      request->next_row += take;
      request->any_row_batched = true;
      queued_rows_ -= take;
      if (request->next_row == request->rows()) {
        queue.pop_front();
        if (request->deadline() != kNoDeadline) deadlines_.erase(deadlines_.find(request->deadline()));
        queued_requests_--;
        request->queued = false;
      }
    }
  }
  ShedUnreachableLocked(batch.get(), now, finished);
  if (batch->rows == 0) return nullptr;
  batch->padded_rows = PaddedRows(batch->rows);
  batch->formed_at = now;
  submit_stats_.batches++;
  submit_stats_.batch_rows += static_cast<uint64_t>(batch->rows);
  submit_stats_.batch_rows_counts[BatchRowsBucket(batch->rows)]++;
  return batch;
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
    for (auto& queue : queues_) {
      for (auto it = queue.begin(); it != queue.end();) {
        if (now >= (*it)->deadline()) {
          finished.push_back(ExpireLocked(*it, now));
          it = queue.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
  FinishDropped(finished, now);
}

void Batcher::RecordExecution(int64_t padded_rows, Duration elapsed) {
  std::lock_guard<std::mutex> lock(mu_);
  predictor_.Record(padded_rows, elapsed);
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
    for (auto& queue : queues_) {
      while (!queue.empty()) {
        RequestHandle request = queue.front();
        const int64_t remaining = request->rows() - request->next_row;
        RemoveLocked(request);
        finished.push_back({request, remaining, status});
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

bool Batcher::empty() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_requests_ == 0;
}

}  // namespace adrank
