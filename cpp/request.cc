#include "request.h"

#include <algorithm>
#include <utility>

namespace adrank {

RequestState::RequestState(Request request, int64_t rows, const std::vector<InputSlot>& input_slots,
                           std::shared_ptr<RequestCounters> counters, std::shared_ptr<TenantCounters> tenant,
                           size_t tenant_index, TimePoint enqueue_time)
    : request_(std::move(request)),
      rows_(rows),
      counters_(std::move(counters)),
      tenant_(std::move(tenant)),
      tenant_index_(tenant_index),
      enqueue_time_(enqueue_time),
      rows_pending_(rows) {
  // Pointers are taken after the move: they point into request_'s own vectors.
  inputs_by_spec_.reserve(input_slots.size());
  for (const InputSlot& slot : input_slots) {
    const auto& views = slot.role == Role::kContext ? request_.context : request_.candidates;
    inputs_by_spec_.push_back(&views[slot.index]);
  }
}

void RequestState::AllocateOutputs(const ModelSignature& signature) {
  result_.outputs.reserve(signature.outputs.size());
  for (const TensorSpec& spec : signature.outputs) {
    OutputTensor out;
    out.name = spec.name;
    out.dtype = spec.dtype;
    out.shape.push_back(rows_);
    out.shape.insert(out.shape.end(), spec.row_shape.begin(), spec.row_shape.end());
    out.data.resize(static_cast<size_t>(rows_) * spec.RowBytes());
    result_.outputs.push_back(std::move(out));
  }
}

void RequestState::FinishRows(int64_t rows, const Status& status, const RequestTiming& timing, TimePoint now) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok() && result_.status.ok()) {
      result_.status = status;
      failed_.store(true, std::memory_order_release);
    }
    RequestTiming& t = result_.timing;
    t.queue_us = std::max(t.queue_us, timing.queue_us);
    t.compute_us = std::max(t.compute_us, timing.compute_us);
    t.batch_rows = std::max(t.batch_rows, timing.batch_rows);
    t.batches += timing.batches;
    t.batch_requests = std::max(t.batch_requests, timing.batch_requests);
  }
  if (rows_pending_.fetch_sub(rows, std::memory_order_acq_rel) == rows) Fire(now);
}

void RequestState::Fire(TimePoint now) {
  // The last rows are accounted: no other thread touches result_ any more.
  switch (result_.status.code()) {
    case StatusCode::kOk:
      counters_->completed_ok.fetch_add(1, std::memory_order_relaxed);
      if (now > request_.deadline) counters_->late.fetch_add(1, std::memory_order_relaxed);
      if (tenant_) tenant_->completed_ok.fetch_add(1, std::memory_order_relaxed);
      break;
    case StatusCode::kCancelled:
      counters_->cancelled.fetch_add(1, std::memory_order_relaxed);
      if (tenant_) tenant_->failed.fetch_add(1, std::memory_order_relaxed);
      break;
    case StatusCode::kDeadlineExceeded:
      // Counted in the model's counters where it was dropped, as expired or shed.
      if (tenant_) tenant_->deadline.fetch_add(1, std::memory_order_relaxed);
      break;
    default:
      counters_->failed.fetch_add(1, std::memory_order_relaxed);
      if (tenant_) tenant_->failed.fetch_add(1, std::memory_order_relaxed);
      break;
  }
  if (tenant_) tenant_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (!result_.status.ok()) result_.outputs.clear();
  Completion on_complete = std::move(request_.on_complete);
  if (on_complete) on_complete(std::move(result_));
}

}  // namespace adrank
