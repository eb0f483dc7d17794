// Request: one auction as the core sees it — candidate tensors with N rows, optional context tensors
// of one row, a deadline, a priority class and a completion callback — and RequestState, the core's
// bookkeeping for it while it is queued, possibly split across batches, and completed.
//
// Contract:
//   - The caller's tensors are borrowed (TensorView): they must stay valid until the completion fires.
//   - The completion fires exactly once per accepted request, on a worker thread (or on the thread
//     that cancels or shuts down), with OK and the outputs (N rows each, in candidate order), or with
//     the first error any part of it met. A submission refused at once (bad input, queue full,
//     closed) returns that status from Submit and never fires the completion.
//   - Timing reports the worst part of a split request: queue µs from submit to the start of the
//     last batch it rode in, compute µs of the slowest of those batches, and that batch's rows.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "clock.h"
#include "status.h"
#include "tenants.h"
#include "tensor.h"

namespace adrank {

// An output of one request: N rows, owned by the result (the pooled batch buffers are not).
struct OutputTensor {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

struct RequestTiming {
  int64_t queue_us = 0;
  int64_t compute_us = 0;
  int64_t batch_rows = 0;
  int32_t batches = 0;  // how many batches the request was split across
  // The most requests any batch it rode in carried (>1: it shared a batch; the C++ front end replies from the
  // worker then, cpp/frontend/grpc_call.h).
  int32_t batch_requests = 0;
};

struct RequestResult {
  Status status;
  std::vector<OutputTensor> outputs;  // in signature order; empty unless status is OK
  RequestTiming timing;
};

using Completion = std::function<void(RequestResult&&)>;

// A request's priority when the caller asked for none: the model's default class (batcher.h).
inline constexpr int kDefaultPriority = -1;

struct Request {
  std::vector<TensorView> candidates;  // leading dim N, every one the same N
  std::vector<TensorView> context;     // leading dim 1
  TimePoint deadline = kNoDeadline;    // kNoDeadline: the model's default deadline applies
  int priority = kDefaultPriority;     // 0 is the highest class; the batcher resolves the default
  std::string tenant;                  // the caller (tenants.h); empty: "default"
  Completion on_complete;
};

// Counters shared by a model's batcher and the requests it accepted (requests may complete after
// the batcher's last reference is gone, so they share ownership).
struct RequestCounters {
  std::atomic<uint64_t> completed_ok{0};
  std::atomic<uint64_t> failed{0};     // completed with an error other than the ones counted below
  std::atomic<uint64_t> late{0};       // computed, but completed after the deadline
  std::atomic<uint64_t> expired{0};    // deadline had passed while queued: missed, never computed
  std::atomic<uint64_t> shed{0};       // deadline still ahead but not reachable: shed, never computed
  std::atomic<uint64_t> cancelled{0};  // completed with CANCELLED
};

// Implementation details follow. API users need not read.

class RequestState {
 public:
  // Where signature input i is in the request: its role and index in candidates or context.
  struct InputSlot {
    Role role;
    size_t index;
  };

  // `request` arrives with its priority class, deadline and tenant resolved by the batcher.
  RequestState(Request request, int64_t rows, const std::vector<InputSlot>& input_slots,
               std::shared_ptr<RequestCounters> counters, std::shared_ptr<TenantCounters> tenant, size_t tenant_index,
               TimePoint enqueue_time);

  const Request& request() const { return request_; }
  int64_t rows() const { return rows_; }
  TimePoint enqueue_time() const { return enqueue_time_; }
  TimePoint deadline() const { return request_.deadline; }
  int priority() const { return request_.priority; }
  // The batcher's index of the request's tenant queue.
  size_t tenant_index() const { return tenant_index_; }
  // The caller's tensor for signature input i.
  const TensorView& input(size_t i) const { return *inputs_by_spec_[i]; }
  std::vector<OutputTensor>& outputs() { return result_.outputs; }

  // Allocates the per-request output buffers (N rows of each signature output).
  void AllocateOutputs(const ModelSignature& signature);

  // Accounts `rows` rows as done with `status`; the call that accounts the last row fires the
  // completion. `timing` is merged (worst part wins). Thread-safe.
  void FinishRows(int64_t rows, const Status& status, const RequestTiming& timing, TimePoint now);

  bool failed() const { return failed_.load(std::memory_order_acquire); }

  // Guarded by the owning batcher's mutex: the first row not yet handed to a batch, whether the
  // request is still in the queue, and whether any of its rows went into a batch.
  int64_t next_row = 0;
  bool queued = false;
  bool any_row_batched = false;

 private:
  void Fire(TimePoint now);

  Request request_;
  const int64_t rows_;
  std::vector<const TensorView*> inputs_by_spec_;
  std::shared_ptr<RequestCounters> counters_;
  std::shared_ptr<TenantCounters> tenant_;
  const size_t tenant_index_;
  const TimePoint enqueue_time_;

  std::atomic<int64_t> rows_pending_;
  std::atomic<bool> failed_{false};
  std::mutex mu_;  // guards result_ status and timing while parts finish concurrently
  RequestResult result_;
};

using RequestHandle = std::shared_ptr<RequestState>;

}  // namespace adrank
