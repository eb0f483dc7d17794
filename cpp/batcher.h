// Batcher: a model's request queue and the policy that turns queued requests into batches.
//
// Ads requests arrive one auction at a time with tens to thousands of candidates each. A model
// scores rows far more cheaply in batches of hundreds than one request at a time, but every
// microsecond a request waits for company comes out of the caller's few-millisecond budget. The
// batcher merges small requests, splits large ones, and closes a batch as soon as waiting longer
// buys nothing: when it is full, when nothing of the model is running (idle dispatch), when its
// oldest request has waited `max_queue_delay_us`, or when a member's deadline requires it.
//
// Options (defaults and why):
//   max_batch_rows = 1024        Most rows in one batch. A request with more rows is split across
//                                consecutive batches and reassembled in row order. On CPU MLPs the
//                                rows/s gain beyond ~1k rows is small while a bigger batch's
//                                execution time adds to the wait of everything queued behind it.
//   preferred_batch_rows = {}    Sizes the model runs best at (ascending, each <= max_batch_rows;
//                                empty means {max_batch_rows}). A batch closes at once when its rows
//                                reach the largest; warm-up runs each; with `pad_to_preferred` a
//                                batch is padded up to the smallest one that holds it (fixed-shape
//                                engines such as TensorRT profiles or CUDA graphs).
//   max_queue_delay_us = 200     How long the oldest queued request may wait for company. 200 µs is
//                                ~10 % of a small batch's CPU execution: enough to merge bursts,
//                                small against a 5–10 ms budget. 0 closes every batch at once.
//   max_queue_rows = 131072      Rows queued (not yet in a batch) beyond which Submit refuses with
//                                RESOURCE_EXHAUSTED at once — but only a tenant holding its weighted share
//                                of this bound or more (tenants.h), so that one tenant cannot lock the others
//                                out; the queue may then hold up to twice this. A bound on the memory queued
//                                work pins, not on its time: deadlines and max_predicted_wait_us keep work
//                                that cannot finish in time out. 131072 rows of ctr are 34 MB of inputs, and
//                                hold 32 callers of 4096 rows each queued instead of refused and resent.
//   max_predicted_wait_us = 50000  The queue's bound in time: Submit refuses with RESOURCE_EXHAUSTED a
//                                request that other requests' rows ahead (admission, below) are predicted to
//                                hold up longer than this, whatever its deadline. Its own rows, and its
//                                tenant's own backlog, do not count: a slow model's lone request is not
//                                refused by a bound on queueing, and a tenant's backlog is bounded by its
//                                deadlines and its share of the queue. 50 ms is ten times a typical auction's
//                                budget: a caller with a long deadline still gets an answer while it
//                                matters, or a refusal it can retry elsewhere. 0: no bound.
//   default_deadline_us = 1000000  The deadline of a request that comes without one. The queue
//                                admits by deadline, so a request without one must get one: 1 s is longer
//                                than any ads server waits for an auction's scores, and bounds what a
//                                forgotten timeout can hold. 0: such requests have none.
//   max_request_rows = 4096      Largest N accepted (INVALID_ARGUMENT beyond): a bound on the
//                                memory one request pins; must be <= max_queue_rows.
//   max_batch_requests = 0       Most requests in one batch; 0 is no limit. For a model whose per-request
//                                work does not batch (a context tower run once per request, one after
//                                another) merging requests buys nothing, and every request in a batch
//                                waits for all of its batch-mates' towers: 1 gives each its own batch.
//                                A batch closes at once when this many requests are queued.
//   priority_levels = 3          Priority classes, 0 the highest. A batch takes every queued row
//                                of class 0 before any of class 1, and so on. Three: a class above
//                                the default for the tenants configured for it, the default, and one
//                                below it where shadow (mirrored) traffic rides.
//   default_priority = 1         The class of a request that asks for none (kDefaultPriority). A class
//                                above it (a smaller number) is allowed only to a tenant whose policy
//                                names it (tenants.h): PERMISSION_DENIED otherwise.
//   adaptive_lifo_us = 2000      When a tenant's oldest queued request of a class has waited longer than
//                                this, that queue is served newest first (adaptive LIFO; see Overload).
//                                2 ms: under ten batches of a CPU model, far above a calm queue's wait
//                                (one batch), far below the 10-20 ms deadlines ads servers give. 0: FIFO.
//   instances = 1                How many of the model's batches run at once (the thread pool sets it
//                                from the model's instances): the queue drains that many times faster.
//   tenants                      Weights and limits per tenant (tenants.h).
//   idle_dispatch = true         When none of the model's instances is running, close a partial
//                                batch at once: at low load this removes the queue delay entirely;
//                                under load batches grow by themselves to what arrives during one
//                                execution. false gives the classic timeout-only batcher.
//   pad_to_preferred = false     See preferred_batch_rows.
//   context_layout = kBroadcast  How context rows reach the backend (see batch.h).
//
// Tenants. Each class holds one queue per tenant (tenants.h). A batch takes the rows of a class from
// its tenants by weighted fair sharing (start-time fair queueing on rows: the tenant whose rows taken
// so far, divided by its weight, are fewest goes next; a tenant returning from idle starts level with
// the others, never with saved-up credit). So a tenant with work queued gets at least its weight's
// share of a saturated model's rows however much another tenant queues, and all of it when alone.
// A tenant's requests beyond its max_in_flight (or a max_queued_rows configured for it), or beyond its
// share of a full queue, are refused with RESOURCE_EXHAUSTED naming the tenant: its own excess, not the
// other tenants' requests, is what gets refused.
//
// Admission (what a request is promised). Submit predicts when the request would be done: the rows that
// will run before its last row — every queued row of a higher class, its tenant's own queued rows of its
// class, each other tenant's queued rows of its class up to that tenant's fair share of the same span,
// and the rows of the batches now running — plus its own, at the predicted execution time per batch of
// `max_batch_rows` (exec_time_predictor.h), divided by `instances`. A request predicted to miss its
// deadline is refused at once with DEADLINE_EXCEEDED (counted as shed: it is never computed and holds no
// queue rows), one that others' rows would hold up beyond max_predicted_wait_us with RESOURCE_EXHAUSTED. Before the
// model has run a batch nothing is refused on a prediction. So an admitted request is expected, not
// guaranteed, to make its deadline: the prediction is refreshed by every batch, and one that turns out
// unreachable is still never computed (below).
//
// Overload. Admission keeps the queue at most about a deadline's worth of work, so the server spends its
// core on requests that can still be answered in time instead of on ones that will miss anyway. Inside
// that bound, each tenant's queue of a class is FIFO while it is calm and LIFO once its oldest request has
// waited adaptive_lifo_us (adaptive LIFO, as large RPC fleets run it): under a standing queue the newest
// request has the most time left, so serving it first turns the queue's wait into answers that are on
// time for most and a deadline miss, uncomputed, for the oldest few, instead of answers that are all
// late. Those are answered as soon as they are stranded — when a batch forms and a queued request's
// deadline comes before that batch and one more could run (twice the batch's predicted time) — rather
// than at their deadline: the caller learns at once, and the call ends without the transport's
// cancellation (counted as shed). CoDel (drop from the head when the standing delay stays above a target) was the
// alternative; with every request carrying a deadline and admission already bounding the queue by prediction, a second
// time target would refuse work that the deadline still allows, so the deadline is the only target here.
//
// Latency contract. When the model is not overloaded (queued rows fit in the next batch), a request
// waits at most max_queue_delay_us (zero when idle_dispatch finds the model idle) plus the execution
// of the batch already running on each busy instance, then rides in the next batch. A request with
// a deadline is never computed when its deadline has passed (counted as expired, "missed") or when
// the predicted execution time of the batch it would ride in overruns it (counted as shed): either
// way it completes with DEADLINE_EXCEEDED without reaching the backend. Batches close early when
// waiting longer would make a member miss its deadline: by the predicted execution time of the batch
// plus a slack, max(50 µs, predicted / 10), before the tightest deadline. The slack is what lets
// that member ride in the batch it closed: a worker sleeping until the close time wakes late (Linux's
// default timer slack alone is 50 µs, and scheduling adds more), and the batch may have grown or run
// slower than predicted by the time it forms (a tenth covers the predictor's usual error); without
// it the request would be shed, and with no execution sample yet (prediction 0) it would expire. A
// worker later than the slack still sheds or expires it: the deadline is never overrun knowingly.
//
// Rejections at Submit (the completion never fires): INVALID_ARGUMENT (names the tensor and what is
// wrong: zero rows, unknown or wrong dtype, negative or mismatched dims, byte size that does not
// match shape and dtype, missing or unexpected tensor, bad priority or tenant name),
// RESOURCE_EXHAUSTED (queue full in rows or predicted wait, the tenant's limits, too many tenants),
// DEADLINE_EXCEEDED (deadline already passed, or predicted to be missed), PERMISSION_DENIED (a class
// above the default for a tenant not configured for it), UNAVAILABLE (closed).
//
// Thread-safety: every method may be called from any thread; one mutex guards the queue. The
// batcher never calls the backend: a scheduler (thread_pool.h) asks it for batches and runs them,
// and an injected Clock makes every timing decision testable without sleeping.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "batch.h"
#include "clock.h"
#include "exec_time_predictor.h"
#include "request.h"
#include "status.h"
#include "tenants.h"
#include "tensor.h"

namespace adrank {

// How long before "deadline - predicted execution" a batch closes for deadline pressure (see the
// latency contract above).
constexpr int64_t kMinDeadlineSlackUs = 50;
Duration DeadlineSlack(Duration predicted_exec);

struct BatcherOptions {
  int64_t max_batch_rows = 1024;
  std::vector<int64_t> preferred_batch_rows;
  int64_t max_queue_delay_us = 200;
  int64_t max_queue_rows = 131072;
  int64_t max_predicted_wait_us = 50000;
  int64_t default_deadline_us = 1000000;
  int64_t max_request_rows = 4096;
  int64_t max_batch_requests = 0;
  int priority_levels = 3;
  int default_priority = 1;
  int64_t adaptive_lifo_us = 2000;
  int instances = 1;
  TenantOptions tenants;
  bool idle_dispatch = true;
  bool pad_to_preferred = false;
  ContextLayout context_layout = ContextLayout::kBroadcast;
};

// The batch-rows histogram: upper bounds (rows) of its buckets, ascending — powers of two and 1.5x them,
// 1 to 4096, so that a preferred size of a power of two, or halfway between two, has a bucket of its own.
// BatcherStats::batch_rows_counts has one more bucket, above the last bound.
const std::vector<int64_t>& BatchRowsBucketBounds();
constexpr size_t kBatchRowsBuckets = 25;

struct BatcherStats {
  uint64_t submitted = 0;            // accepted by Submit
  uint64_t rejected_invalid = 0;     // refused at Submit: INVALID_ARGUMENT
  uint64_t rejected_queue_full = 0;  // refused at Submit: RESOURCE_EXHAUSTED
  uint64_t rejected_expired = 0;     // refused at Submit: deadline already passed
  uint64_t rejected_closed = 0;      // refused at Submit: UNAVAILABLE
  uint64_t rejected_tenant = 0;      // refused at Submit: a tenant's limit (RESOURCE_EXHAUSTED)
  uint64_t rejected_denied = 0;      // refused at Submit: PERMISSION_DENIED (priority class)
  uint64_t completed_ok = 0;
  uint64_t failed = 0;
  uint64_t late = 0;       // computed, completed after the deadline
  uint64_t expired = 0;    // missed: deadline passed while queued, never computed
  uint64_t shed = 0;       // shed: deadline ahead but predicted unreachable (at Submit or in a batch), never computed
  uint64_t cancelled = 0;  // cancelled before any row ran
  uint64_t batches = 0;
  uint64_t batch_rows = 0;                                      // real rows over all batches
  std::array<uint64_t, kBatchRowsBuckets> batch_rows_counts{};  // batches by real rows (see above)
  int64_t queued_rows = 0;
  int64_t queued_requests = 0;
};

// One tenant's share of one model (tenants.h TenantCounters, read once).
struct TenantStats {
  std::string tenant;
  int64_t queued_rows = 0;
  int64_t queued_requests = 0;
  int64_t in_flight = 0;
  uint64_t submitted = 0;
  uint64_t rows = 0;
  uint64_t completed_ok = 0;
  uint64_t deadline = 0;
  uint64_t refused_limit = 0;
  uint64_t refused_denied = 0;
  uint64_t failed = 0;
};

class Batcher {
 public:
  static Status Create(const BatcherOptions& options, const ModelSignature& signature, const Clock* clock,
                       std::unique_ptr<Batcher>* out);

  // Validates and enqueues. On OK, `handle` (if given) can cancel the request.
  Status Submit(Request request, RequestHandle* handle = nullptr);

  // Removes a request none of whose rows is in a batch yet; it completes with CANCELLED and never
  // runs. A request already (partly) batched finishes the parts in flight and drops the rest.
  // Returns true if the request will not run at all.
  bool Cancel(const RequestHandle& handle);

  // When the next batch should close, given whether any instance of the model is running
  // (`model_idle`): `now` if one is due now, kNoDeadline when nothing is queued. The caller passes
  // the `now` it compares against, so that "due now" is exact.
  TimePoint ReadyAt(bool model_idle, TimePoint now) const;

  // The next batch, if one should close now (or, with `flush`, whatever is queued, ignoring the
  // delay: used to drain). Requests found expired or unreachable on the way are completed with
  // DEADLINE_EXCEEDED. nullptr when no batch is due.
  std::unique_ptr<Batch> NextBatch(bool model_idle, bool flush = false);

  // The earliest deadline of a queued request; kNoDeadline if none has one.
  TimePoint EarliestDeadline() const;
  // Completes every queued request whose deadline has passed with DEADLINE_EXCEEDED (counted as
  // expired) without forming a batch: a model whose instances are all busy still answers its
  // callers at their deadline and frees their queue rows.
  void ExpireOverdue();

  // A batch this batcher formed has ended: its rows no longer count as running, and when it
  // `succeeded` its time feeds the execution-time predictor.
  void RecordExecution(int64_t padded_rows, Duration elapsed, bool succeeded = true);
  Duration PredictExecution(int64_t rows) const;
  // The predicted time to run `rows` rows in batches of at most max_batch_rows, one after another.
  Duration PredictRows(int64_t rows) const;

  // Refuse further submissions with UNAVAILABLE (already queued requests stay queued).
  void Close();
  // Complete every queued request with `status` (used when a model is torn down without draining).
  void FailQueued(const Status& status);

  BatcherStats stats() const;
  // Every tenant the batcher has seen, configured ones first.
  std::vector<TenantStats> tenant_stats() const;
  bool empty() const;
  const BatcherOptions& options() const { return options_; }
  const ModelSignature& signature() const { return signature_; }
  const Clock* clock() const { return clock_; }

  // Implementation details follow (batcher.cc: submit, admission, queues; batcher_forming.cc: batch
  // formation, shedding, expiry). API users need not read.
 private:
  Batcher(const BatcherOptions& options, const ModelSignature& signature, const Clock* clock);

  // A request taken out of the queue without running; finished outside the mutex.
  struct Dropped {
    RequestHandle request;
    int64_t rows;
    Status status;
  };

  // One tenant's queues in this model, one per class. Never removed (bounded by max_tenants), so a
  // request's tenant_index stays valid.
  struct TenantQueue {
    std::string name;
    TenantPolicy policy;
    std::shared_ptr<TenantCounters> counters = std::make_shared<TenantCounters>();
    std::vector<std::deque<RequestHandle>> queues;  // by class, in arrival order
    std::vector<int64_t> rows_by_class;             // queued rows
    std::vector<double> pass;                       // by class: rows taken / weight (fair-share time)
    int64_t queued_rows = 0;
    int64_t queued_requests = 0;
  };

  // What Submit resolved of a request before admitting it.
  struct Admission {
    int64_t rows = 0;
    size_t tenant = 0;
    TimePoint deadline = kNoDeadline;
    int priority = 0;
  };

  Status Validate(const Request& request, int64_t* rows, std::vector<RequestState::InputSlot>* slots) const;
  Status ResolvePriority(int requested, const TenantPolicy& policy, const std::string& tenant, int* out) const;
  // Finds or creates the tenant's queue; RESOURCE_EXHAUSTED beyond max_tenants.
  Status TenantLocked(const std::string& name, size_t* index);
  // The closed, queue-full, tenant-limit and predicted-wait checks of Submit; counts a refusal.
  Status AdmitLocked(const Admission& admission, TimePoint now);
  Status CheckPredictedWaitLocked(const Admission& admission, TimePoint now);
  int64_t RowsAheadLocked(const Admission& admission) const;
  // The tenant's weighted share of max_queue_rows among the tenants with rows queued.
  int64_t QueueShareLocked(size_t tenant) const;
  int64_t CloseRows() const;
  int64_t PaddedRows(int64_t rows) const;
  TimePoint ReadyAtLocked(bool model_idle, TimePoint now) const;
  std::unique_ptr<Batch> FormLocked(TimePoint now, std::vector<Dropped>* finished);
  // The tenant of class `level` whose turn it is (lowest fair-share pass), or SIZE_MAX.
  size_t NextTenantLocked(size_t level) const;
  void EnqueueLocked(const RequestHandle& request);
  void DeactivateIfEmptyLocked(size_t tenant, size_t level);
  void TakeRowsLocked(const RequestHandle& request, int64_t rows);
  void ShedUnreachableLocked(Batch* batch, TimePoint now, std::vector<Dropped>* finished);
  // Sheds the queued requests that can no longer make their deadline behind a batch of `batch_rows`.
  void ShedStrandedLocked(int64_t batch_rows, TimePoint now, std::vector<Dropped>* finished);
  void RemoveLocked(const RequestHandle& request);
  void ForgetLocked(const RequestHandle& request);  // the accounting of RemoveLocked, for a request already erased
  Dropped ExpireLocked(const RequestHandle& request, TimePoint now);
  static void FinishDropped(std::vector<Dropped>& dropped, TimePoint now);

  const BatcherOptions options_;
  const ModelSignature signature_;
  const Clock* const clock_;
  const std::shared_ptr<RequestCounters> counters_ = std::make_shared<RequestCounters>();

  mutable std::mutex mu_;
  bool closed_ = false;
  std::vector<TenantQueue> tenants_;
  std::map<std::string, size_t, std::less<>> tenant_index_;
  std::vector<std::vector<size_t>> active_;  // by class: the tenants with requests queued in it
  std::vector<int64_t> class_rows_;          // by class: queued rows over all tenants
  std::vector<double> class_pass_;           // by class: the pass of the tenant served last
  std::multiset<TimePoint> deadlines_;       // of queued requests that have one
  std::multiset<TimePoint> enqueued_;        // arrival times of queued requests
  int64_t queued_rows_ = 0;
  int64_t queued_requests_ = 0;
  int64_t running_rows_ = 0;  // padded rows of the batches formed and not yet ended
  ExecTimePredictor predictor_;
  BatcherStats submit_stats_;  // the Submit-side and batch counters; outcomes live in counters_
};

}  // namespace adrank
