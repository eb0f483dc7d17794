// The Batcher's batch formation (batcher.h states the contract): when a batch is ready to close, which
// queued rows it takes (priority class first, tenants by their weighted share, a request split across
// batches when larger than the room left), and what is shed on the way — a request whose deadline cannot
// be met by the batch it would ride, one stranded behind a batch it can never join, one already past
// its deadline. Batcher::Submit and the queues' bookkeeping are in batcher.cc.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "batcher.h"

namespace adrank {
namespace {

// The batch_rows histogram bucket of a batch of `rows` (batcher.h BatchRowsBucketBounds).
size_t BatchRowsBucket(int64_t rows) {
  const std::vector<int64_t>& bounds = BatchRowsBucketBounds();
  return static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), rows) - bounds.begin());
}

}  // namespace

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

}  // namespace adrank
