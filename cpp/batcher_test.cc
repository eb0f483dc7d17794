// Batcher behaviour, driven by a FakeClock: every timing decision is exercised without sleeping.
#include "batcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "status_testing.h"

namespace adrank {
namespace {

using std::chrono::microseconds;

// What a test request's completion saw.
struct Call {
  int fired = 0;
  RequestResult result;
};

// A request's caller-side memory: the core borrows it until completion.
struct Owned {
  std::vector<float> x;    // candidate input "x": [rows, 2], x[r][0] = base + r
  std::vector<float> ctx;  // context input "ctx": [1, 1]
  std::shared_ptr<Call> call = std::make_shared<Call>();
  float base = 0;
  float ctx_value = 0;

  // The model computes y[r] = x[r][0] + ctx.
  float Expected(int64_t r) const { return base + static_cast<float>(r) + ctx_value; }
  std::vector<float> Output() const {
    const OutputTensor& out = call->result.outputs.at(0);
    std::vector<float> y(out.data.size() / sizeof(float));
    std::memcpy(y.data(), out.data.data(), out.data.size());
    return y;
  }
};

ModelSignature TestSignature() {
  ModelSignature sig;
  sig.inputs.push_back({"x", DType::kFloat32, {2}, Role::kCandidate});
  sig.inputs.push_back({"ctx", DType::kFloat32, {1}, Role::kContext});
  sig.outputs.push_back({"y", DType::kFloat32, {}, Role::kCandidate});
  return sig;
}

BatcherOptions BaseOptions() {
  BatcherOptions o;
  o.max_batch_rows = 8;
  o.max_queue_delay_us = 1000;
  o.max_queue_rows = 64;
  o.max_request_rows = 32;
  o.idle_dispatch = false;
  // The tests of batching itself: two classes, every caller in the default one at the top, FIFO, and
  // neither a default deadline nor a bound in time (the admission tests below set those).
  o.priority_levels = 2;
  o.default_priority = 0;
  o.adaptive_lifo_us = 0;
  o.default_deadline_us = 0;
  o.max_predicted_wait_us = 0;
  return o;
}

class BatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MemoryPoolOptions mo;
    mo.lock_memory = false;
    mo.use_cuda = false;
    ASSERT_TRUE(MemoryPool::Create(mo, &pool_).ok());
  }

  std::unique_ptr<Batcher> Make(const BatcherOptions& options) {
    std::unique_ptr<Batcher> batcher;
    Status status = Batcher::Create(options, TestSignature(), &clock_, &batcher);
    EXPECT_TRUE(status.ok()) << status.ToString();
    return batcher;
  }

  Owned& NewRequest(int64_t rows, float base, float ctx_value = 0) {
    owned_.emplace_back();
    Owned& o = owned_.back();
    o.base = base;
    o.ctx_value = ctx_value;
    o.x.resize(static_cast<size_t>(rows) * 2);
    for (int64_t r = 0; r < rows; ++r) o.x[static_cast<size_t>(r) * 2] = base + static_cast<float>(r);
    o.ctx = {ctx_value};
    return o;
  }

  static Request ToRequest(Owned& o, int priority = 0, TimePoint deadline = kNoDeadline, std::string tenant = "") {
    Request request;
    request.tenant = std::move(tenant);
    const int64_t rows = static_cast<int64_t>(o.x.size() / 2);
    request.candidates.push_back({"x", DType::kFloat32, {rows, 2}, o.x.data(), o.x.size() * sizeof(float)});
    request.context.push_back({"ctx", DType::kFloat32, {1, 1}, o.ctx.data(), sizeof(float)});
    request.priority = priority;
    request.deadline = deadline;
    auto call = o.call;
    request.on_complete = [call](RequestResult&& result) {
      call->fired++;
      call->result = std::move(result);
    };
    return request;
  }

  Status Submit(Batcher& b, Owned& o, int priority = 0, TimePoint deadline = kNoDeadline,
                RequestHandle* handle = nullptr) {
    return b.Submit(ToRequest(o, priority, deadline), handle);
  }

  Status SubmitAs(Batcher& b, Owned& o, const std::string& tenant, int priority = kDefaultPriority,
                  TimePoint deadline = kNoDeadline) {
    return b.Submit(ToRequest(o, priority, deadline, tenant));
  }

  // Teaches the predictor 100 us per row and nothing fixed (batches of 2, 4 and 8 rows).
  void TrainHundredMicrosPerRow(Batcher& b) {
    for (int64_t rows : {2, 4, 8}) b.RecordExecution(rows, microseconds(100 * rows));
    ASSERT_EQ(b.PredictExecution(8), microseconds(800));
  }

  // The request ids ("base" values) of a batch's slices, in order.
  static std::vector<float> SliceBases(const Batch& batch) {
    std::vector<float> bases;
    for (const BatchSlice& s : batch.slices) {
      bases.push_back(static_cast<const float*>(s.request->input(0).data)[0]);
    }
    return bases;
  }

  // Runs a batch as a worker would; the backend "takes" exec_us of fake time.
  void Run(Batcher& b, Batch& batch, int64_t exec_us = 0) {
    batch.started_at = clock_.Now();
    ASSERT_TRUE(batch.Gather(b.signature(), b.options().context_layout, pool_.get()).ok());
    BatchIO& io = batch.io();
    ++backend_calls_;
    backend_rows_.push_back(io.rows);
    const auto* x = static_cast<const float*>(io.inputs[0].data);
    const auto* ctx = static_cast<const float*>(io.inputs[1].data);
    auto* y = static_cast<float*>(io.outputs[0].data);
    for (int64_t r = 0; r < io.rows; ++r) {
      const int64_t ctx_row = io.context_layout == ContextLayout::kPerRequest ? io.row_request_index[r] : r;
      y[r] = x[r * 2] + ctx[ctx_row];
    }
    clock_.AdvanceMicros(exec_us);
    batch.Scatter();
    b.RecordExecution(batch.padded_rows, clock_.Now() - batch.started_at);
    batch.Finish(Status::Ok(), clock_.Now() - batch.started_at, clock_.Now());
  }

  void ExpectServed(const Owned& o) {
    ASSERT_EQ(o.call->fired, 1);
    ASSERT_TRUE(o.call->result.status.ok()) << o.call->result.status.ToString();
    const std::vector<float> y = o.Output();
    ASSERT_EQ(y.size(), o.x.size() / 2);
    for (size_t r = 0; r < y.size(); ++r) EXPECT_FLOAT_EQ(y[r], o.Expected(static_cast<int64_t>(r))) << "row " << r;
  }

  static std::vector<int64_t> SliceRows(const Batch& batch) {
    std::vector<int64_t> rows;
    for (const BatchSlice& s : batch.slices) rows.push_back(s.rows);
    return rows;
  }

  FakeClock clock_;
  std::shared_ptr<MemoryPool> pool_;
  std::deque<Owned> owned_;
  int backend_calls_ = 0;
  std::vector<int64_t> backend_rows_;
};

// Found by the fuzz targets (tests/fuzz/, at exit): a worker may form a batch while the process exits, after the
// static destructors have begun (a pool still running at exit). The child process below registers an exit
// handler before anything reads the batch_rows buckets, so that it runs after the destructors of statics made
// later, and forms a batch from there; a bucket table destroyed at exit is ASan's heap-use-after-free
// (make test-asan).
struct Exiting {
  FakeClock clock;
  std::unique_ptr<Batcher> batcher;
  std::vector<float> x = {0, 0, 1, 1};
  std::vector<float> ctx = {0};
  std::vector<std::unique_ptr<Batch>> batches;
};
Exiting* exiting = nullptr;  // reachable: never a leak

Status SubmitTwoRows(Exiting& e) {
  Request request;
  request.candidates.push_back({"x", DType::kFloat32, {2, 2}, e.x.data(), e.x.size() * sizeof(float)});
  request.context.push_back({"ctx", DType::kFloat32, {1, 1}, e.ctx.data(), sizeof(float)});
  request.on_complete = [](RequestResult&&) {};
  return e.batcher->Submit(std::move(request));
}

void FormBatchAtExit() {
  std::unique_ptr<Batch> batch = exiting->batcher->NextBatch(false);
  if (!batch || batch->rows != 2) std::_Exit(3);
  exiting->batches.push_back(std::move(batch));
}

void FormBatchWhileTheProcessExits() {
  std::atexit(FormBatchAtExit);
  exiting = new Exiting;
  BatcherOptions options = BaseOptions();
  options.max_batch_rows = 2;  // two rows are a full batch: due at once
  if (!Batcher::Create(options, TestSignature(), &exiting->clock, &exiting->batcher).ok()) std::_Exit(4);
  if (!SubmitTwoRows(*exiting).ok()) std::_Exit(5);
  std::unique_ptr<Batch> first = exiting->batcher->NextBatch(false);  // the first to read the buckets
  if (!first) std::_Exit(6);
  exiting->batches.push_back(std::move(first));
  if (!SubmitTwoRows(*exiting).ok()) std::_Exit(7);
  std::exit(0);
}

TEST(BatcherExitTest, FormsABatchWhileTheProcessExits) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";  // a fresh process: the buckets not yet read
  EXPECT_EXIT(FormBatchWhileTheProcessExits(), ::testing::ExitedWithCode(0), "");
}

TEST_F(BatcherTest, SmallRequestsMergeUpToMaxBatchRows) {
  auto b = Make(BaseOptions());  // max_batch_rows 8
  Owned& r1 = NewRequest(2, 0);
  Owned& r2 = NewRequest(2, 100);
  Owned& r3 = NewRequest(3, 200);
  Owned& r4 = NewRequest(3, 300);
  for (Owned* o : {&r1, &r2, &r3, &r4}) ASSERT_TRUE(Submit(*b, *o).ok());
  // 10 rows queued >= 8: due now. r4 does not fit whole in the 1 row left and is not split.
  EXPECT_EQ(b->ReadyAt(false, clock_.Now()), clock_.Now());
  auto batch = b->NextBatch(false);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->rows, 7);
  EXPECT_EQ(SliceRows(*batch), (std::vector<int64_t>{2, 2, 3}));
  Run(*b, *batch);
  ExpectServed(r1);
  ExpectServed(r2);
  ExpectServed(r3);
  EXPECT_EQ(r4.call->fired, 0);
  EXPECT_EQ(b->stats().queued_rows, 3);
}

TEST_F(BatcherTest, BatchRowsHistogramCountsEachBatchInTheFirstBucketThatHoldsItsRealRows) {
  const std::vector<int64_t>& bounds = BatchRowsBucketBounds();
  ASSERT_EQ(bounds.size() + 1, kBatchRowsBuckets);
  EXPECT_EQ(bounds.front(), 1);
  EXPECT_EQ(bounds.back(), 4096);
  BatcherOptions options = BaseOptions();
  options.max_batch_rows = 32;
  auto b = Make(options);
  for (int64_t rows : {1, 5, 6, 32}) {
    Owned& o = NewRequest(rows, 0);
    ASSERT_TRUE(Submit(*b, o).ok());
    auto batch = b->NextBatch(false, true);
    ASSERT_TRUE(batch);
    Run(*b, *batch);
  }
  const BatcherStats s = b->stats();
  auto count_at = [&](int64_t bound) {
    return s.batch_rows_counts[static_cast<size_t>(std::find(bounds.begin(), bounds.end(), bound) - bounds.begin())];
  };
  EXPECT_EQ(count_at(1), 1u);
  EXPECT_EQ(count_at(6), 2u);  // 5 and 6 rows: the bucket (4, 6]
  EXPECT_EQ(count_at(32), 1u);
  uint64_t total = 0;
  for (uint64_t c : s.batch_rows_counts) total += c;
  EXPECT_EQ(total, s.batches);
  EXPECT_EQ(s.batch_rows, 44u);
}

TEST_F(BatcherTest, MaxBatchRequestsBoundsTheRequestsOfABatchAndClosesItWhenReached) {
  BatcherOptions o = BaseOptions();  // max_batch_rows 8, a long queue delay
  o.max_batch_requests = 2;
  auto b = Make(o);
  Owned& r1 = NewRequest(1, 0);
  Owned& r2 = NewRequest(1, 100);
  Owned& r3 = NewRequest(1, 200);
  ASSERT_TRUE(Submit(*b, r1).ok());
  // One request, 1 of 8 rows: waits for company.
  EXPECT_GT(b->ReadyAt(false, clock_.Now()), clock_.Now());
  ASSERT_TRUE(Submit(*b, r2).ok());
  ASSERT_TRUE(Submit(*b, r3).ok());
  // Two requests queued: a batch is due at once, though its rows are far from full.
  EXPECT_EQ(b->ReadyAt(false, clock_.Now()), clock_.Now());
  auto batch = b->NextBatch(false);
  ASSERT_TRUE(batch);
  EXPECT_EQ(SliceRows(*batch), (std::vector<int64_t>{1, 1}));
  Run(*b, *batch);
  ExpectServed(r1);
  ExpectServed(r2);
  EXPECT_EQ(r3.call->fired, 0);
  EXPECT_EQ(b->stats().queued_requests, 1);
  // The third rides in the next batch, alone.
  auto next = b->NextBatch(false, /*flush=*/true);
  ASSERT_TRUE(next);
  EXPECT_EQ(SliceRows(*next), (std::vector<int64_t>{1}));
  Run(*b, *next);
  ExpectServed(r3);
}

TEST_F(BatcherTest, BatchClosesAtLargestPreferredSize) {
  BatcherOptions o = BaseOptions();
  o.max_batch_rows = 16;
  o.preferred_batch_rows = {4, 8};
  auto b = Make(o);
  ASSERT_TRUE(Submit(*b, NewRequest(3, 0)).ok());
  ASSERT_TRUE(Submit(*b, NewRequest(3, 10)).ok());
  // 6 rows: past the smaller preferred size, short of the largest: waits for the delay.
  EXPECT_EQ(b->ReadyAt(false, clock_.Now()), clock_.Now() + microseconds(1000));
  EXPECT_FALSE(b->NextBatch(false));
  ASSERT_TRUE(Submit(*b, NewRequest(2, 20)).ok());
  auto batch = b->NextBatch(false);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->rows, 8);
  EXPECT_EQ(batch->slices.size(), 3u);
}

TEST_F(BatcherTest, PartialBatchClosesWhenOldestHasWaitedMaxQueueDelay) {
  auto b = Make(BaseOptions());  // delay 1000 us
  Owned& first = NewRequest(2, 0);
  ASSERT_TRUE(Submit(*b, first).ok());
  clock_.AdvanceMicros(400);
  Owned& second = NewRequest(2, 50);
  ASSERT_TRUE(Submit(*b, second).ok());
  clock_.AdvanceMicros(599);
  EXPECT_FALSE(b->NextBatch(false)) << "closed before the oldest waited max_queue_delay_us";
  clock_.AdvanceMicros(1);
  auto batch = b->NextBatch(false);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->rows, 4);
  Run(*b, *batch);
  ExpectServed(first);
  ExpectServed(second);
  EXPECT_EQ(first.call->result.timing.queue_us, 1000);
  EXPECT_EQ(second.call->result.timing.queue_us, 600);
}

TEST_F(BatcherTest, IdleDispatchClosesAtOnceOnlyWhenModelIsIdle) {
  BatcherOptions o = BaseOptions();
  o.idle_dispatch = true;
  auto b = Make(o);
  ASSERT_TRUE(Submit(*b, NewRequest(1, 0)).ok());
  EXPECT_FALSE(b->NextBatch(/*model_idle=*/false));
  auto batch = b->NextBatch(/*model_idle=*/true);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->rows, 1);
}

TEST_F(BatcherTest, LargeRequestIsSplitAndReassembledInRowOrderCompletingOnce) {
  BatcherOptions o = BaseOptions();
  o.max_batch_rows = 4;
  auto b = Make(o);
  Owned& big = NewRequest(10, 1000, 0.5f);
  ASSERT_TRUE(Submit(*b, big).ok());
  std::vector<std::unique_ptr<Batch>> batches;
  while (auto batch = b->NextBatch(false)) batches.push_back(std::move(batch));
  // The 2-row tail is a partial batch like any other: it waits for company up to the delay.
  ASSERT_EQ(batches.size(), 2u);
  clock_.AdvanceMicros(1000);
  batches.push_back(b->NextBatch(false));
  ASSERT_TRUE(batches.back());
  EXPECT_EQ(batches[0]->rows, 4);
  EXPECT_EQ(batches[1]->rows, 4);
  EXPECT_EQ(batches[2]->rows, 2);
  EXPECT_EQ(batches[1]->slices[0].row_begin, 4);
  // Parts finish out of order (two instances): the rows still land in order, completion fires once, last.
  Run(*b, *batches[2]);
  Run(*b, *batches[0]);
  EXPECT_EQ(big.call->fired, 0);
  Run(*b, *batches[1]);
  ExpectServed(big);
  EXPECT_EQ(big.call->result.timing.batches, 3);
  EXPECT_EQ(big.call->result.timing.batch_rows, 4);
}

TEST_F(BatcherTest, LargeRequestFillsAPartialBatchBeforeSplitting) {
  BatcherOptions o = BaseOptions();
  o.max_batch_rows = 4;
  auto b = Make(o);
  Owned& small = NewRequest(1, 0);
  Owned& big = NewRequest(6, 100);
  ASSERT_TRUE(Submit(*b, small).ok());
  ASSERT_TRUE(Submit(*b, big).ok());
  auto first = b->NextBatch(false);
  ASSERT_TRUE(first);
  EXPECT_EQ(SliceRows(*first), (std::vector<int64_t>{1, 3}));
  auto second = b->NextBatch(false, /*flush=*/true);
  ASSERT_TRUE(second);
  EXPECT_EQ(SliceRows(*second), (std::vector<int64_t>{3}));
  Run(*b, *first);
  Run(*b, *second);
  ExpectServed(small);
  ExpectServed(big);
}

TEST_F(BatcherTest, SubmitBeyondMaxQueueRowsIsRefusedAtOnce) {
  BatcherOptions o = BaseOptions();
  o.max_queue_rows = 10;
  o.max_request_rows = 10;
  auto b = Make(o);
  ASSERT_TRUE(Submit(*b, NewRequest(6, 0)).ok());
  Owned& refused = NewRequest(5, 0);
  Status status = Submit(*b, refused);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("max_queue_rows"), std::string::npos) << status.message();
  EXPECT_EQ(refused.call->fired, 0);
  EXPECT_EQ(b->stats().rejected_queue_full, 1u);
  EXPECT_EQ(b->stats().queued_rows, 6);
  // Once the queue drains there is room again.
  auto batch = b->NextBatch(false, true);
  ASSERT_TRUE(batch);
  Run(*b, *batch);
  EXPECT_TRUE(Submit(*b, refused).ok());
}

TEST_F(BatcherTest, ExpiredRequestIsNeverComputedAndCountedAsMissed) {
  auto b = Make(BaseOptions());
  Owned& late = NewRequest(2, 0);
  ASSERT_TRUE(Submit(*b, late, 0, clock_.Now() + microseconds(300)).ok());
  // No execution history yet: the batch is due the minimum slack (50 us) before the deadline. A
  // worker that only gets there at the deadline itself finds it passed.
  EXPECT_EQ(b->ReadyAt(false, clock_.Now()), clock_.Now() + microseconds(250));
  clock_.AdvanceMicros(300);
  EXPECT_FALSE(b->NextBatch(false));
  ASSERT_EQ(late.call->fired, 1);
  EXPECT_EQ(late.call->result.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(late.call->result.outputs.empty());
  EXPECT_EQ(backend_calls_, 0);
  BatcherStats s = b->stats();
  EXPECT_EQ(s.expired, 1u);
  EXPECT_EQ(s.shed, 0u);
  EXPECT_EQ(s.queued_requests, 0);
}

TEST_F(BatcherTest, ExpireOverdueAnswersQueuedRequestsAtTheirDeadlineWithoutABatch) {
  auto b = Make(BaseOptions());
  Owned& soon = NewRequest(2, 0);
  Owned& later = NewRequest(2, 10);
  Owned& never = NewRequest(2, 20);
  ASSERT_TRUE(Submit(*b, soon, 0, clock_.Now() + microseconds(100)).ok());
  ASSERT_TRUE(Submit(*b, later, 1, clock_.Now() + microseconds(500)).ok());
  ASSERT_TRUE(Submit(*b, never).ok());
  EXPECT_EQ(b->EarliestDeadline(), clock_.Now() + microseconds(100));
  clock_.AdvanceMicros(100);
  b->ExpireOverdue();
  ASSERT_EQ(soon.call->fired, 1);
  EXPECT_EQ(soon.call->result.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(later.call->fired, 0);
  EXPECT_EQ(b->EarliestDeadline(), clock_.Now() + microseconds(400));
  BatcherStats s = b->stats();
  EXPECT_EQ(s.expired, 1u);
  EXPECT_EQ(s.queued_rows, 4);
  EXPECT_EQ(s.queued_requests, 2);
  EXPECT_EQ(backend_calls_, 0);
}

TEST_F(BatcherTest, DeadlineAlreadyPassedIsRefusedAtSubmit) {
  auto b = Make(BaseOptions());
  Owned& o = NewRequest(1, 0);
  EXPECT_EQ(Submit(*b, o, 0, clock_.Now()).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(o.call->fired, 0);
  EXPECT_EQ(b->stats().rejected_expired, 1u);
}

TEST_F(BatcherTest, UnreachableDeadlineIsShedNotComputedAndCountedApart) {
  BatcherOptions o = BaseOptions();
  o.idle_dispatch = true;
  auto b = Make(o);
  for (int64_t rows : {2, 4, 8}) {
    ASSERT_TRUE(Submit(*b, NewRequest(rows, 0)).ok());
    auto batch = b->NextBatch(true);
    ASSERT_TRUE(batch);
    Run(*b, *batch, 100 * rows);
  }
  EXPECT_EQ(b->PredictExecution(4), microseconds(400));
  const int calls_before = backend_calls_;

  // Admitted (alone it needs ~400 us of its 500), then the batch it would ride in grows to 8 rows
  // (~800 us) while 100 us pass: unreachable when the batch forms.
  Owned& doomed = NewRequest(4, 0);
  Owned& fine = NewRequest(4, 10);  // has no deadline
  ASSERT_TRUE(Submit(*b, doomed, 0, clock_.Now() + microseconds(500)).ok());
  ASSERT_TRUE(Submit(*b, fine).ok());
  clock_.AdvanceMicros(100);
  auto batch = b->NextBatch(true);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->rows, 4) << "the doomed request rides in no batch";
  ASSERT_EQ(doomed.call->fired, 1);
  EXPECT_EQ(doomed.call->result.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(doomed.call->result.status.message().find("predicted"), std::string::npos);
  Run(*b, *batch, 400);
  ExpectServed(fine);
  EXPECT_EQ(backend_calls_, calls_before + 1);
  BatcherStats s = b->stats();
  EXPECT_EQ(s.shed, 1u);
  EXPECT_EQ(s.expired, 0u);
}

TEST_F(BatcherTest, BatchClosesEarlyWhenAMemberDeadlineRequiresIt) {
  auto b = Make(BaseOptions());  // delay 1000 us, no idle dispatch
  for (int64_t rows : {2, 4, 8}) {
    ASSERT_TRUE(Submit(*b, NewRequest(rows, 0)).ok());
    auto batch = b->NextBatch(false, true);
    ASSERT_TRUE(batch);
    Run(*b, *batch, 100 * rows);
  }
  Owned& urgent = NewRequest(4, 7);
  const TimePoint deadline = clock_.Now() + microseconds(700);
  ASSERT_TRUE(Submit(*b, urgent, 0, deadline).ok());
  // Predicted 400 us for 4 rows: the batch must close by deadline - 400 us - slack (max(50 us,
  // 400 / 10) = 50 us), not after 1000 us, and not a microsecond sooner than that.
  EXPECT_EQ(b->ReadyAt(false, clock_.Now()), deadline - microseconds(450));
  clock_.AdvanceMicros(249);
  EXPECT_FALSE(b->NextBatch(false));
  clock_.AdvanceMicros(1);
  auto batch = b->NextBatch(false);
  ASSERT_TRUE(batch);
  Run(*b, *batch, 400);
  ExpectServed(urgent);
  EXPECT_LE(clock_.Now(), deadline);
  EXPECT_EQ(b->stats().late, 0u);
}

// A real worker wakes a little after the ReadyAt it slept until (timer slack, scheduling): the
// request whose deadline closed the batch early must still ride in it, not be shed by it.
TEST_F(BatcherTest, WorkerWakingJustAfterAnEarlyCloseStillRunsTheUrgentRequest) {
  struct Case {
    int64_t exec_us;  // the history: 4-row batches took this long
    int64_t wake_late_us;
  };
  // 400 us: the 50 us floor applies; 2000 us: a tenth of the prediction (200 us) does.
  for (const Case c : {Case{400, 5}, Case{400, 45}, Case{2000, 150}}) {
    SCOPED_TRACE("exec " + std::to_string(c.exec_us) + " us, worker wakes " + std::to_string(c.wake_late_us) +
                 " us late");
    auto b = Make(BaseOptions());  // 8 rows, delay 1000 us, no idle dispatch: 4 rows wait
    ASSERT_TRUE(Submit(*b, NewRequest(4, 0)).ok());
    auto warmup = b->NextBatch(false, true);
    ASSERT_TRUE(warmup);
    Run(*b, *warmup, c.exec_us);
    const Duration exec = b->PredictExecution(4);
    ASSERT_EQ(exec, microseconds(c.exec_us));

    Owned& urgent = NewRequest(4, 7);
    const TimePoint deadline = clock_.Now() + exec + microseconds(600);
    ASSERT_TRUE(Submit(*b, urgent, 0, deadline).ok());
    const TimePoint ready = b->ReadyAt(false, clock_.Now());
    EXPECT_GT(ToMicros(deadline - exec - ready), 0) << "no slack left for the worker's wake-up";
    clock_.Advance(ready - clock_.Now() + microseconds(c.wake_late_us));
    auto batch = b->NextBatch(false);
    ASSERT_TRUE(batch) << "the urgent request was dropped instead of batched";
    EXPECT_EQ(batch->rows, 4);
    EXPECT_EQ(urgent.call->fired, 0) << urgent.call->result.status.ToString();
    Run(*b, *batch, c.exec_us);
    ExpectServed(urgent);
    EXPECT_LE(clock_.Now(), deadline);
    const BatcherStats s = b->stats();
    EXPECT_EQ(s.shed, 0u);
    EXPECT_EQ(s.expired, 0u);
    EXPECT_EQ(s.late, 0u);
  }
}

// With no execution sample yet the prediction is 0: closing "at deadline - 0" would hand a worker a
// request whose deadline has passed by the time it wakes.
TEST_F(BatcherTest, WithoutExecutionSamplesAnEarlyCloseStillLeavesTheWorkerTime) {
  auto b = Make(BaseOptions());  // delay 1000 us, no idle dispatch
  ASSERT_EQ(b->PredictExecution(2), Duration(0));
  Owned& urgent = NewRequest(2, 3);
  const TimePoint deadline = clock_.Now() + microseconds(300);
  ASSERT_TRUE(Submit(*b, urgent, 0, deadline).ok());
  const TimePoint ready = b->ReadyAt(false, clock_.Now());
  EXPECT_GT(ToMicros(deadline - ready), 0) << "no slack left for the worker's wake-up";
  clock_.Advance(ready - clock_.Now() + microseconds(5));
  auto batch = b->NextBatch(false);
  ASSERT_TRUE(batch) << "the urgent request expired before its batch formed";
  EXPECT_EQ(urgent.call->fired, 0) << urgent.call->result.status.ToString();
  Run(*b, *batch, 20);
  ExpectServed(urgent);
  EXPECT_LE(clock_.Now(), deadline);
  EXPECT_EQ(b->stats().expired, 0u);
  EXPECT_EQ(b->stats().late, 0u);
}

TEST_F(BatcherTest, RequestComputedPastItsDeadlineIsCountedLate) {
  BatcherOptions o = BaseOptions();
  o.idle_dispatch = true;
  auto b = Make(o);
  Owned& slow = NewRequest(1, 0);
  ASSERT_TRUE(Submit(*b, slow, 0, clock_.Now() + microseconds(100)).ok());
  auto batch = b->NextBatch(true);
  ASSERT_TRUE(batch);
  Run(*b, *batch, 500);
  ExpectServed(slow);
  BatcherStats s = b->stats();
  EXPECT_EQ(s.late, 1u);
  EXPECT_EQ(s.completed_ok, 1u);
}

TEST_F(BatcherTest, HigherPriorityClassIsBatchedFirst) {
  BatcherOptions o = BaseOptions();
  o.max_batch_rows = 4;
  auto b = Make(o);
  Owned& low = NewRequest(4, 0);
  Owned& high = NewRequest(4, 100);
  ASSERT_TRUE(Submit(*b, low, /*priority=*/1).ok());
  clock_.AdvanceMicros(10);
  ASSERT_TRUE(Submit(*b, high, /*priority=*/0).ok());
  auto first = b->NextBatch(false);
  ASSERT_TRUE(first);
  ASSERT_EQ(first->slices.size(), 1u);
  EXPECT_EQ(first->slices[0].request->priority(), 0);
  auto second = b->NextBatch(false);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->slices[0].request->priority(), 1);

  // With room for both, the high class still comes first in the batch.
  Owned& low2 = NewRequest(2, 0);
  Owned& high2 = NewRequest(2, 0);
  ASSERT_TRUE(Submit(*b, low2, 1).ok());
  ASSERT_TRUE(Submit(*b, high2, 0).ok());
  auto mixed = b->NextBatch(false);
  ASSERT_TRUE(mixed);
  ASSERT_EQ(mixed->slices.size(), 2u);
  EXPECT_EQ(mixed->slices[0].request->priority(), 0);
  EXPECT_EQ(mixed->slices[1].request->priority(), 1);
}

TEST_F(BatcherTest, CancelledRequestNotYetBatchedNeverRuns) {
  auto b = Make(BaseOptions());
  Owned& cancelled = NewRequest(3, 0);
  Owned& kept = NewRequest(3, 100);
  RequestHandle handle;
  ASSERT_TRUE(Submit(*b, cancelled, 0, kNoDeadline, &handle).ok());
  ASSERT_TRUE(Submit(*b, kept).ok());
  EXPECT_TRUE(b->Cancel(handle));
  ASSERT_EQ(cancelled.call->fired, 1);
  EXPECT_EQ(cancelled.call->result.status.code(), StatusCode::kCancelled);
  EXPECT_FALSE(b->Cancel(handle)) << "a second cancel is a no-op";
  auto batch = b->NextBatch(false, true);
  ASSERT_TRUE(batch);
  ASSERT_EQ(batch->slices.size(), 1u);
  Run(*b, *batch);
  ExpectServed(kept);
  EXPECT_EQ(cancelled.call->fired, 1);
  EXPECT_EQ(b->stats().cancelled, 1u);
  EXPECT_EQ(backend_rows_, (std::vector<int64_t>{3}));
}

TEST_F(BatcherTest, CancelAfterBatchingLetsTheBatchRun) {
  auto b = Make(BaseOptions());
  Owned& o = NewRequest(2, 0);
  RequestHandle handle;
  ASSERT_TRUE(Submit(*b, o, 0, kNoDeadline, &handle).ok());
  auto batch = b->NextBatch(false, true);
  ASSERT_TRUE(batch);
  EXPECT_FALSE(b->Cancel(handle));
  Run(*b, *batch);
  ExpectServed(o);
}

TEST_F(BatcherTest, BroadcastLayoutRepeatsEachRequestsContextForItsRows) {
  auto b = Make(BaseOptions());
  Owned& a = NewRequest(2, 0, 0.25f);
  Owned& c = NewRequest(3, 10, 0.75f);
  ASSERT_TRUE(Submit(*b, a).ok());
  ASSERT_TRUE(Submit(*b, c).ok());
  auto batch = b->NextBatch(false, true);
  ASSERT_TRUE(batch);
  ASSERT_TRUE(batch->Gather(b->signature(), ContextLayout::kBroadcast, pool_.get()).ok());
  const BatchTensor& ctx = batch->io().inputs[1];
  EXPECT_EQ(ctx.shape, (std::vector<int64_t>{5, 1}));
  const auto* v = static_cast<const float*>(ctx.data);
  EXPECT_EQ(std::vector<float>(v, v + 5), (std::vector<float>{0.25f, 0.25f, 0.75f, 0.75f, 0.75f}));
  EXPECT_EQ(batch->io().row_request_index, nullptr);
  Run(*b, *batch);
  ExpectServed(a);
  ExpectServed(c);
}

TEST_F(BatcherTest, PerRequestLayoutCarriesOneContextRowPerRequestAndARowIndex) {
  BatcherOptions o = BaseOptions();
  o.context_layout = ContextLayout::kPerRequest;
  auto b = Make(o);
  Owned& a = NewRequest(2, 0, 0.25f);
  Owned& c = NewRequest(3, 10, 0.75f);
  ASSERT_TRUE(Submit(*b, a).ok());
  ASSERT_TRUE(Submit(*b, c).ok());
  auto batch = b->NextBatch(false, true);
  ASSERT_TRUE(batch);
  ASSERT_TRUE(batch->Gather(b->signature(), ContextLayout::kPerRequest, pool_.get()).ok());
  const BatchIO& io = batch->io();
  EXPECT_EQ(io.num_requests, 2);
  EXPECT_EQ(io.inputs[1].shape, (std::vector<int64_t>{2, 1}));
  const auto* v = static_cast<const float*>(io.inputs[1].data);
  EXPECT_EQ(std::vector<float>(v, v + 2), (std::vector<float>{0.25f, 0.75f}));
  ASSERT_NE(io.row_request_index, nullptr);
  EXPECT_EQ(std::vector<int64_t>(io.row_request_index, io.row_request_index + 5),
            (std::vector<int64_t>{0, 0, 1, 1, 1}));
  Run(*b, *batch);  // the backend gathers ctx through the index
  ExpectServed(a);
  ExpectServed(c);
}

TEST_F(BatcherTest, PaddingToPreferredSizeRepeatsTheLastRowAndDropsItsOutputs) {
  BatcherOptions o = BaseOptions();
  o.preferred_batch_rows = {4, 8};
  o.pad_to_preferred = true;
  auto b = Make(o);
  Owned& r = NewRequest(3, 5, 1);
  ASSERT_TRUE(Submit(*b, r).ok());
  auto batch = b->NextBatch(false, true);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->padded_rows, 4);
  Run(*b, *batch);
  EXPECT_EQ(backend_rows_, (std::vector<int64_t>{4}));
  ExpectServed(r);
}

struct BadCase {
  const char* what;
  const char* names;  // the message must name this
  std::function<void(Request&)> spoil;
};

TEST_F(BatcherTest, BadSubmissionsGetInvalidArgumentNamingTheTensor) {
  auto b = Make(BaseOptions());
  std::vector<int64_t> scratch(64, 0);
  const std::vector<BadCase> cases = {
      {"zero rows", "'x'",
       [](Request& r) {
         r.candidates[0].shape[0] = 0;
         r.candidates[0].byte_size = 0;
       }},
      {"byte size", "'x'", [](Request& r) { r.candidates[0].byte_size -= 4; }},
      {"negative dim", "'x'", [](Request& r) { r.candidates[0].shape[1] = -2; }},
      {"mismatched dim", "'x'", [](Request& r) { r.candidates[0].shape = {1, 4}; }},
      {"wrong rank", "'x'", [](Request& r) { r.candidates[0].shape = {4}; }},
      {"unknown dtype", "'x'", [](Request& r) { r.candidates[0].dtype = static_cast<DType>(99); }},
      {"wrong dtype", "'x'", [](Request& r) { r.candidates[0].dtype = DType::kInt32; }},
      {"context rows", "'ctx'",
       [](Request& r) {
         r.context[0].shape = {2, 1};
         r.context[0].byte_size = 8;
       }},
      {"missing context", "'ctx'", [](Request& r) { r.context.clear(); }},
      {"context sent as candidate", "'ctx'",
       [](Request& r) {
         r.candidates.push_back(r.context[0]);
         r.context.clear();
       }},
      {"unknown tensor", "'bogus'",
       [&](Request& r) { r.candidates.push_back({"bogus", DType::kInt64, {2, 1}, scratch.data(), 16}); }},
      {"tensor twice", "'x'", [](Request& r) { r.candidates.push_back(r.candidates[0]); }},
      {"null data", "'x'", [](Request& r) { r.candidates[0].data = nullptr; }},
      {"no candidates", "candidate", [](Request& r) { r.candidates.clear(); }},
      {"priority", "priority", [](Request& r) { r.priority = 5; }},
  };
  for (const BadCase& c : cases) {
    Owned& o = NewRequest(2, 0);
    Request request = ToRequest(o);
    c.spoil(request);
    Status status = b->Submit(std::move(request));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << c.what << ": " << status.ToString();
    EXPECT_NE(status.message().find(c.names), std::string::npos) << c.what << ": " << status.message();
    EXPECT_EQ(o.call->fired, 0) << c.what;
  }
  Owned& huge = NewRequest(33, 0);  // max_request_rows 32
  Status status = Submit(*b, huge);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("max_request_rows"), std::string::npos);
  EXPECT_EQ(b->stats().rejected_invalid, cases.size() + 1);
  EXPECT_EQ(b->stats().queued_requests, 0);
}

TEST_F(BatcherTest, InvalidOptionsAreRefusedNamingTheOption) {
  struct OptCase {
    const char* name;
    std::function<void(BatcherOptions&)> spoil;
  };
  const std::vector<OptCase> cases = {
      {"max_batch_rows", [](BatcherOptions& o) { o.max_batch_rows = 0; }},
      {"max_batch_requests", [](BatcherOptions& o) { o.max_batch_requests = -1; }},
      {"preferred_batch_rows", [](BatcherOptions& o) { o.preferred_batch_rows = {8, 4}; }},
      {"preferred_batch_rows", [](BatcherOptions& o) { o.preferred_batch_rows = {16}; }},
      {"pad_to_preferred",
       [](BatcherOptions& o) {
         o.preferred_batch_rows = {4};
         o.pad_to_preferred = true;
       }},
      {"max_queue_delay_us", [](BatcherOptions& o) { o.max_queue_delay_us = -1; }},
      {"max_queue_rows", [](BatcherOptions& o) { o.max_queue_rows = 4; }},
      {"priority_levels", [](BatcherOptions& o) { o.priority_levels = 0; }},
  };
  for (const OptCase& c : cases) {
    BatcherOptions o = BaseOptions();
    c.spoil(o);
    std::unique_ptr<Batcher> b;
    Status status = Batcher::Create(o, TestSignature(), &clock_, &b);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(status.message().find(c.name), std::string::npos) << status.message();
  }
}

TEST_F(BatcherTest, ClosedBatcherRefusesAndFailQueuedCompletesEveryQueuedRequest) {
  auto b = Make(BaseOptions());
  Owned& queued = NewRequest(2, 0);
  ASSERT_TRUE(Submit(*b, queued).ok());
  b->Close();
  EXPECT_EQ(Submit(*b, NewRequest(1, 0)).code(), StatusCode::kUnavailable);
  EXPECT_EQ(b->stats().rejected_closed, 1u);
  b->FailQueued(Unavailable("model unloaded"));
  ASSERT_EQ(queued.call->fired, 1);
  EXPECT_EQ(queued.call->result.status.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(b->empty());
}

// ---- admission by predicted wait, the default deadline, tenants, priority classes, adaptive LIFO ----

TEST_F(BatcherTest, ARequestPredictedToMissItsDeadlineIsRefusedAtSubmitAndNeverComputed) {
  auto b = Make(BaseOptions());
  TrainHundredMicrosPerRow(*b);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Submit(*b, NewRequest(8, 100 * i)).ok());  // 24 rows: ~2400 us ahead
  const uint64_t submitted = b->stats().submitted;

  Owned& doomed = NewRequest(4, 7);  // ~2400 + 400 us of work, 2000 us left
  const Status status = Submit(*b, doomed, 0, clock_.Now() + microseconds(2000));
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(status.message(), "predicted")) << status.message();
  EXPECT_TRUE(Contains(status.message(), "24 rows ahead")) << status.message();
  EXPECT_EQ(doomed.call->fired, 0) << "a refusal at Submit never fires the completion";
  BatcherStats s = b->stats();
  EXPECT_EQ(s.shed, 1u);
  EXPECT_EQ(s.submitted, submitted);
  EXPECT_EQ(s.queued_rows, 24) << "a refused request holds no queue rows";

  EXPECT_TRUE(Submit(*b, NewRequest(4, 8), 0, clock_.Now() + microseconds(3000)).ok()) << "2800 us fit in 3000";
}

TEST_F(BatcherTest, AQueuedRequestStrandedBehindTheFormingBatchIsAnsweredAtOnce) {
  auto b = Make(BaseOptions());  // batches of at most 8 rows
  TrainHundredMicrosPerRow(*b);
  Owned& first = NewRequest(8, 0);
  Owned& stranded = NewRequest(8, 100);  // needs a batch after the first: ~1600 us
  Owned& patient = NewRequest(8, 200);
  ASSERT_TRUE(Submit(*b, first, 0, clock_.Now() + microseconds(10000)).ok());
  ASSERT_TRUE(Submit(*b, stranded, 0, clock_.Now() + microseconds(2000)).ok()) << "admitted: 1600 of 2000 us";
  ASSERT_TRUE(Submit(*b, patient, 0, clock_.Now() + microseconds(10000)).ok());
  // The first batch forms 500 us late and takes "first" only: 1500 us are left to "stranded", which needs 1600.
  clock_.AdvanceMicros(500);
  auto batch = b->NextBatch(false);
  ASSERT_TRUE(batch);
  EXPECT_EQ(SliceBases(*batch), std::vector<float>{0});
  ASSERT_EQ(stranded.call->fired, 1) << "answered when the batch formed, not at its deadline";
  EXPECT_EQ(stranded.call->result.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(stranded.call->result.status.message(), "cannot be met"));
  EXPECT_EQ(b->stats().shed, 1u);
  EXPECT_EQ(b->stats().queued_rows, 8) << "the patient request stays queued";
  EXPECT_EQ(patient.call->fired, 0);
}

TEST_F(BatcherTest, NothingIsRefusedOnAGuessBeforeTheModelHasRunABatch) {
  auto b = Make(BaseOptions());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Submit(*b, NewRequest(8, 0)).ok());
  EXPECT_TRUE(Submit(*b, NewRequest(4, 0), 0, clock_.Now() + microseconds(1)).ok());
}

TEST_F(BatcherTest, ARequestWithoutADeadlineGetsTheModelsDefault) {
  BatcherOptions o = BaseOptions();
  o.default_deadline_us = 1000;
  auto b = Make(o);
  Owned& request = NewRequest(2, 0);
  const TimePoint submitted_at = clock_.Now();
  ASSERT_TRUE(Submit(*b, request).ok());
  EXPECT_EQ(b->EarliestDeadline(), submitted_at + microseconds(1000));
  clock_.AdvanceMicros(1000);
  b->ExpireOverdue();
  ASSERT_EQ(request.call->fired, 1);
  EXPECT_EQ(request.call->result.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(b->stats().expired, 1u);

  o.default_deadline_us = 0;  // none: the request waits as long as it takes
  auto unbounded = Make(o);
  ASSERT_TRUE(Submit(*unbounded, NewRequest(2, 0)).ok());
  EXPECT_EQ(unbounded->EarliestDeadline(), kNoDeadline);
}

TEST_F(BatcherTest, OthersWorkAheadBeyondTheBoundInTimeRefusesWithResourceExhausted) {
  BatcherOptions o = BaseOptions();
  o.max_predicted_wait_us = 1000;
  auto b = Make(o);
  TrainHundredMicrosPerRow(*b);
  constexpr int kLower = 1;  // the probes ride below class 0, whose rows all run first
  ASSERT_TRUE(Submit(*b, NewRequest(8, 0)).ok());
  ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 0), "probe", kLower).ok()) << "800 us ahead: inside the bound";
  ASSERT_TRUE(Submit(*b, NewRequest(2, 0)).ok());
  ASSERT_TRUE(SubmitAs(*b, NewRequest(4, 0), "probe", kLower).ok())
      << "1000 us of others' rows ahead: at the bound; its own rows and its tenant's backlog do not count";
  ASSERT_TRUE(Submit(*b, NewRequest(1, 0)).ok());
  const Status full = SubmitAs(*b, NewRequest(1, 0), "probe", kLower);
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(full.message(), "max_predicted_wait_us")) << full.message();
  EXPECT_EQ(b->stats().rejected_queue_full, 1u);
}

TEST_F(BatcherTest, ATenantsOwnBacklogIsBoundedByItsDeadlinesNotByTheBoundInTime) {
  BatcherOptions o = BaseOptions();
  o.max_predicted_wait_us = 1000;
  o.max_queue_rows = 1024;
  auto b = Make(o);
  TrainHundredMicrosPerRow(*b);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(SubmitAs(*b, NewRequest(8, 0), "backlog").ok());  // 3200 us
  EXPECT_TRUE(SubmitAs(*b, NewRequest(8, 0), "backlog").ok()) << "queued behind its own rows, not refused";
  EXPECT_EQ(SubmitAs(*b, NewRequest(8, 0), "backlog", kDefaultPriority, clock_.Now() + microseconds(3000)).code(),
            StatusCode::kDeadlineExceeded)
      << "but a deadline its own backlog cannot meet still refuses it";
}

TEST_F(BatcherTest, AFullQueueRefusesOnlyATenantHoldingItsShare) {
  auto b = Make(BaseOptions());  // max_queue_rows 64
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(SubmitAs(*b, NewRequest(8, 0), "flood").ok());
  Status status = SubmitAs(*b, NewRequest(8, 0), "flood");
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(status.message(), "tenant 'flood' holds 64")) << status.message();
  ASSERT_TRUE(SubmitAs(*b, NewRequest(8, 1), "other").ok()) << "under its share (32 of 64): admitted";
  ASSERT_TRUE(SubmitAs(*b, NewRequest(8, 1), "other").ok());
  EXPECT_EQ(b->stats().queued_rows, 80) << "the bound is exceeded by tenants within their share only";
  EXPECT_EQ(SubmitAs(*b, NewRequest(8, 0), "flood").code(), StatusCode::kResourceExhausted);
}

TEST_F(BatcherTest, ALightTenantIsServedNextWhateverAHeavyOneHasQueued) {
  BatcherOptions o = BaseOptions();
  o.max_queue_rows = 1024;
  auto b = Make(o);
  TrainHundredMicrosPerRow(*b);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(SubmitAs(*b, NewRequest(32, 1000 + i), "heavy").ok());  // 16 batches
  // FIFO, it would wait ~12.8 ms behind the heavy rows; fair shared, only for its share of one batch.
  Owned& light = NewRequest(2, 1);
  ASSERT_TRUE(SubmitAs(*b, light, "light", kDefaultPriority, clock_.Now() + microseconds(2000)).ok());
  auto first = b->NextBatch(false);
  ASSERT_TRUE(first);
  Run(*b, *first);
  auto second = b->NextBatch(false);
  ASSERT_TRUE(second);
  const std::vector<float> bases = SliceBases(*second);
  EXPECT_TRUE(std::find(bases.begin(), bases.end(), 1.0f) != bases.end() ||
              std::find(SliceBases(*first).begin(), SliceBases(*first).end(), 1.0f) != SliceBases(*first).end())
      << "the light request rides in one of the first two batches";
  Run(*b, *second);
  ExpectServed(light);
}

TEST_F(BatcherTest, SaturatingTenantsShareRowsByWeight) {
  BatcherOptions o = BaseOptions();
  o.max_queue_rows = 1024;
  o.tenants.tenants["big"].weight = 3;
  o.tenants.tenants["small"].weight = 1;
  auto b = Make(o);
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 1000 + i), "big").ok());
    ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 2000 + i), "small").ok());
  }
  int big = 0, small = 0;
  for (int batch = 0; batch < 4; ++batch) {
    auto formed = b->NextBatch(false);
    ASSERT_TRUE(formed);
    for (float base : SliceBases(*formed)) (base >= 2000 ? small : big)++;
    Run(*b, *formed);
  }
  EXPECT_EQ(big + small, 32);
  EXPECT_NEAR(big, 24, 1) << "weight 3 of 4";
  EXPECT_NEAR(small, 8, 1) << "weight 1 of 4";
}

TEST_F(BatcherTest, ATenantReturningFromIdleGetsNoSavedUpCredit) {
  BatcherOptions o = BaseOptions();
  o.max_queue_rows = 1024;
  auto b = Make(o);
  for (int i = 0; i < 32; ++i) ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 1000 + i), "steady").ok());
  for (int batch = 0; batch < 3; ++batch) Run(*b, *b->NextBatch(false));  // "steady" alone: 24 rows
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 2000 + i), "late").ok());
  auto formed = b->NextBatch(false);
  ASSERT_TRUE(formed);
  int late = 0;
  for (float base : SliceBases(*formed)) late += base >= 2000 ? 1 : 0;
  EXPECT_NEAR(late, 4, 1) << "an even split from now on, not 24 rows of catching up";
}

TEST_F(BatcherTest, ATenantBeyondItsLimitsIsRefusedNamingItWhileOthersGetIn) {
  BatcherOptions o = BaseOptions();
  o.max_queue_rows = 1024;
  o.tenants.tenants["greedy"].max_queued_rows = 16;
  o.tenants.tenants["greedy"].max_in_flight = 3;
  auto b = Make(o);
  ASSERT_TRUE(SubmitAs(*b, NewRequest(8, 0), "greedy").ok());
  ASSERT_TRUE(SubmitAs(*b, NewRequest(8, 0), "greedy").ok());
  Status status = SubmitAs(*b, NewRequest(1, 0), "greedy");
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(status.message(), "tenant 'greedy'")) << status.message();
  EXPECT_TRUE(Contains(status.message(), "max_queued_rows (16)")) << status.message();
  EXPECT_TRUE(SubmitAs(*b, NewRequest(8, 0), "modest").ok()) << "another tenant is not refused for it";

  Run(*b, *b->NextBatch(false));  // one greedy request done: 8 rows and one in flight freed
  ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 0), "greedy").ok());
  ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 0), "greedy").ok());
  status = SubmitAs(*b, NewRequest(1, 0), "greedy");  // 3 accepted and unanswered: at max_in_flight
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(status.message(), "max_in_flight (3)")) << status.message();
  auto modest = b->NextBatch(false);  // fair share: "modest" is behind, its 8 rows go next
  ASSERT_TRUE(modest);
  EXPECT_EQ(SliceRows(*modest), std::vector<int64_t>{8});
  Run(*b, *modest);
  Run(*b, *b->NextBatch(false));  // greedy's second 8 rows: answered
  EXPECT_TRUE(SubmitAs(*b, NewRequest(1, 0), "greedy").ok()) << "an answered request frees its place";

  bool found = false;
  for (const TenantStats& t : b->tenant_stats()) {
    if (t.tenant != "greedy") continue;
    found = true;
    EXPECT_EQ(t.refused_limit, 2u);
    EXPECT_EQ(t.submitted, 5u);
    EXPECT_EQ(t.completed_ok, 2u);
    EXPECT_EQ(t.in_flight, 3);
  }
  EXPECT_TRUE(found);
}

TEST_F(BatcherTest, AClassAboveTheDefaultNeedsATenantConfiguredForIt) {
  BatcherOptions o = BaseOptions();
  o.priority_levels = 3;
  o.default_priority = 1;
  o.tenants.tenants["gold"].highest_priority = 0;
  auto b = Make(o);
  Status status = SubmitAs(*b, NewRequest(2, 0), "", 0);
  EXPECT_EQ(status.code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(Contains(status.message(), "tenant 'default'")) << status.message();
  EXPECT_TRUE(Contains(status.message(), "priority class 0")) << status.message();
  EXPECT_EQ(b->stats().rejected_denied, 1u);

  ASSERT_TRUE(SubmitAs(*b, NewRequest(2, 10), "bulk", 2).ok()) << "a lower class is open to all";
  ASSERT_TRUE(SubmitAs(*b, NewRequest(2, 20), "").ok()) << "no class asked: the default";
  ASSERT_TRUE(SubmitAs(*b, NewRequest(2, 30), "gold", 0).ok());
  EXPECT_EQ(SubmitAs(*b, NewRequest(2, 0), "", 3).code(), StatusCode::kInvalidArgument);
  auto batch = b->NextBatch(false, /*flush=*/true);
  ASSERT_TRUE(batch);
  EXPECT_EQ(SliceBases(*batch), (std::vector<float>{30, 20, 10})) << "gold's class 0, the default, then class 2";
}

TEST_F(BatcherTest, AStandingQueueIsServedNewestFirst) {
  for (int64_t lifo_us : {int64_t{0}, int64_t{1000}}) {
    BatcherOptions o = BaseOptions();
    o.max_batch_rows = 2;
    o.adaptive_lifo_us = lifo_us;
    auto b = Make(o);
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(Submit(*b, NewRequest(2, 10 * i)).ok());
      clock_.AdvanceMicros(10);
    }
    auto first = b->NextBatch(false);
    ASSERT_TRUE(first);
    EXPECT_EQ(SliceBases(*first), std::vector<float>{0}) << "calm: oldest first";
    clock_.AdvanceMicros(1000);
    auto second = b->NextBatch(false);
    ASSERT_TRUE(second);
    if (lifo_us == 0) {
      EXPECT_EQ(SliceBases(*second), std::vector<float>{10}) << "adaptive LIFO off: FIFO throughout";
    } else {
      EXPECT_EQ(SliceBases(*second), std::vector<float>{30}) << "oldest waited > 1 ms: newest first";
    }
  }
}

TEST_F(BatcherTest, TenantNamesAreCheckedAndTheirNumberBounded) {
  BatcherOptions o = BaseOptions();
  o.tenants.max_tenants = 2;  // "default" and one more
  auto b = Make(o);
  Status status = SubmitAs(*b, NewRequest(1, 0), "no/slashes");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "x-adrank-tenant")) << status.message();
  ASSERT_TRUE(SubmitAs(*b, NewRequest(1, 0), "first").ok());
  status = SubmitAs(*b, NewRequest(1, 0), "second");
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(status.message(), "max_tenants (2)")) << status.message();
  EXPECT_TRUE(SubmitAs(*b, NewRequest(1, 0), "first").ok()) << "a tenant already seen still gets in";
  EXPECT_TRUE(SubmitAs(*b, NewRequest(1, 0), "").ok()) << "and so does the default one";
}

TEST_F(BatcherTest, InvalidTenantOrAdmissionOptionsAreRefusedNamingTheOption) {
  struct OptCase {
    const char* name;
    void (*spoil)(BatcherOptions&);
  };
  const std::vector<OptCase> cases = {
      {"default_priority", [](BatcherOptions& o) { o.default_priority = o.priority_levels; }},
      {"max_predicted_wait_us", [](BatcherOptions& o) { o.max_predicted_wait_us = -1; }},
      {"default_deadline_us", [](BatcherOptions& o) { o.default_deadline_us = -1; }},
      {"adaptive_lifo_us", [](BatcherOptions& o) { o.adaptive_lifo_us = -1; }},
      {"instances", [](BatcherOptions& o) { o.instances = 0; }},
      {"weight", [](BatcherOptions& o) { o.tenants.tenants["x"].weight = -1; }},
  };
  for (const OptCase& c : cases) {
    BatcherOptions o = BaseOptions();
    c.spoil(o);
    std::unique_ptr<Batcher> b;
    Status status = Batcher::Create(o, TestSignature(), &clock_, &b);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_TRUE(Contains(status.message(), c.name)) << status.message();
  }
}

}  // namespace
}  // namespace adrank
