#include "batch.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "status_testing.h"

namespace adrank {
namespace {

constexpr int64_t kAdWidth = 2;   // candidate "ad": float32 [rows, 2]
constexpr int64_t kCtxWidth = 3;  // context "user": float32 [1, 3]

// Inputs in the order candidate, context; the RequestState slots below follow it.
ModelSignature TestSignature() {
  ModelSignature signature;
  TensorSpec ad;
  ad.name = "ad";
  ad.row_shape = {kAdWidth};
  TensorSpec user;
  user.name = "user";
  user.row_shape = {kCtxWidth};
  user.role = Role::kContext;
  TensorSpec score;
  score.name = "score";  // one float per row
  TensorSpec pair;
  pair.name = "pair";
  pair.row_shape = {2};
  signature.inputs = {ad, user};
  signature.outputs = {score, pair};
  return signature;
}

// Values that say where they came from: request `id`, row `r`, column `c`.
float AdValue(int id, int64_t r, int64_t c) { return static_cast<float>(id * 1000 + r * 10 + c); }
float CtxValue(int id, int64_t c) { return static_cast<float>(-(id * 100 + c + 1)); }

// One request of `rows` candidates, its input bytes and everything its completion reported.
struct TestRequest {
  int id = 0;
  std::vector<float> ad;
  std::vector<float> user;
  int fired = 0;
  RequestResult result;
  RequestHandle state;
};

class BatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MemoryPoolOptions options;
    options.max_bytes = size_t{16} << 20;
    options.use_cuda = false;
    options.lock_memory = false;
    ASSERT_OK(MemoryPool::Create(options, &pool_));
  }

  // Built without a Batcher: the batch code must not depend on how requests got queued.
  TestRequest* MakeRequest(int id, int64_t rows) {
    auto request = std::make_unique<TestRequest>();
    TestRequest* t = request.get();
    t->id = id;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < kAdWidth; ++c) t->ad.push_back(AdValue(id, r, c));
    }
    for (int64_t c = 0; c < kCtxWidth; ++c) t->user.push_back(CtxValue(id, c));
    Request req;
    req.candidates.push_back(
        TensorView{"ad", DType::kFloat32, {rows, kAdWidth}, t->ad.data(), t->ad.size() * sizeof(float)});
    req.context.push_back(
        TensorView{"user", DType::kFloat32, {1, kCtxWidth}, t->user.data(), t->user.size() * sizeof(float)});
    req.on_complete = [t](RequestResult&& result) {
      ++t->fired;
      t->result = std::move(result);
    };
    const std::vector<RequestState::InputSlot> slots = {{Role::kCandidate, 0}, {Role::kContext, 0}};
    t->state = std::make_shared<RequestState>(std::move(req), rows, slots, counters_, nullptr, 0, enqueue_time_);
    t->state->AllocateOutputs(signature_);
    requests_.push_back(std::move(request));
    return t;
  }

  static void AddSlice(Batch* batch, TestRequest* request, int64_t row_begin, int64_t rows) {
    batch->slices.push_back(BatchSlice{request->state, row_begin, rows});
    batch->rows += rows;
    batch->padded_rows = batch->rows;
  }

  // What a model would do: score = ad[0] + ad[1], pair = (ad[0], user[0]) of the row's own request.
  // Reads the context through the layout, so it also checks the layout is self-consistent.
  static void RunFakeModel(BatchIO& io) {
    const auto* ad = static_cast<const float*>(io.inputs[0].data);
    const auto* user = static_cast<const float*>(io.inputs[1].data);
    auto* score = static_cast<float*>(io.outputs[0].data);
    auto* pair = static_cast<float*>(io.outputs[1].data);
    for (int64_t r = 0; r < io.rows; ++r) {
      const int64_t ctx_row = io.context_layout == ContextLayout::kPerRequest ? io.row_request_index[r] : r;
      score[r] = ad[r * kAdWidth] + ad[r * kAdWidth + 1];
      pair[r * 2] = ad[r * kAdWidth];
      pair[r * 2 + 1] = user[ctx_row * kCtxWidth];
    }
  }

  static std::vector<float> Floats(const BatchTensor& tensor) {
    std::vector<float> out(tensor.byte_size / sizeof(float));
    std::memcpy(out.data(), tensor.data, tensor.byte_size);
    return out;
  }

  static std::vector<float> Floats(const OutputTensor& tensor) {
    std::vector<float> out(tensor.data.size() / sizeof(float));
    std::memcpy(out.data(), tensor.data.data(), tensor.data.size());
    return out;
  }

  // The outputs a request of `rows` rows must get back, in candidate order.
  static void ExpectOutputs(const TestRequest& t, int64_t rows) {
    SCOPED_TRACE("request " + std::to_string(t.id));
    ASSERT_EQ(t.fired, 1);
    ASSERT_TRUE(t.result.status.ok()) << t.result.status.ToString();
    ASSERT_EQ(t.result.outputs.size(), 2u);
    EXPECT_EQ(t.result.outputs[0].name, "score");
    EXPECT_EQ(t.result.outputs[0].shape, (std::vector<int64_t>{rows}));
    EXPECT_EQ(t.result.outputs[1].name, "pair");
    EXPECT_EQ(t.result.outputs[1].shape, (std::vector<int64_t>{rows, 2}));
    const std::vector<float> score = Floats(t.result.outputs[0]);
    const std::vector<float> pair = Floats(t.result.outputs[1]);
    ASSERT_EQ(score.size(), static_cast<size_t>(rows));
    ASSERT_EQ(pair.size(), static_cast<size_t>(rows * 2));
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(score[r], AdValue(t.id, r, 0) + AdValue(t.id, r, 1)) << "row " << r;
      EXPECT_EQ(pair[r * 2], AdValue(t.id, r, 0)) << "row " << r;
      EXPECT_EQ(pair[r * 2 + 1], CtxValue(t.id, 0)) << "row " << r;
    }
  }

  // Gather, fake model, scatter, finish: what a worker does with a batch.
  void Run(Batch* batch, ContextLayout layout) {
    batch->started_at = enqueue_time_ + std::chrono::microseconds(30);
    ASSERT_OK(batch->Gather(signature_, layout, pool_.get()));
    RunFakeModel(batch->io());
    batch->Scatter();
    batch->Finish(Status::Ok(), std::chrono::microseconds(7), batch->started_at + std::chrono::microseconds(7));
  }

  const ModelSignature signature_ = TestSignature();
  const std::shared_ptr<RequestCounters> counters_ = std::make_shared<RequestCounters>();
  const TimePoint enqueue_time_ = TimePoint(std::chrono::seconds(100));
  std::shared_ptr<MemoryPool> pool_;
  std::vector<std::unique_ptr<TestRequest>> requests_;
};

TEST_F(BatchTest, GathersCandidateRowsOfSplitSlicesInOrder) {
  TestRequest* a = MakeRequest(1, 5);
  TestRequest* b = MakeRequest(2, 3);
  Batch batch;
  AddSlice(&batch, a, 2, 3);  // the tail of a request split across batches
  AddSlice(&batch, b, 0, 2);  // the head of another
  ASSERT_OK(batch.Gather(signature_, ContextLayout::kBroadcast, pool_.get()));

  const BatchIO& io = batch.io();
  EXPECT_EQ(io.rows, 5);
  EXPECT_EQ(io.real_rows, 5);
  EXPECT_EQ(io.num_requests, 2);
  EXPECT_EQ(io.context_layout, ContextLayout::kBroadcast);
  EXPECT_EQ(io.row_request_index, nullptr);
  ASSERT_EQ(io.inputs.size(), 2u);
  EXPECT_EQ(io.inputs[0].spec->name, "ad");
  EXPECT_EQ(io.inputs[0].shape, (std::vector<int64_t>{5, kAdWidth}));
  EXPECT_EQ(io.inputs[0].byte_size, 5 * kAdWidth * sizeof(float));

  const std::vector<std::pair<int, int64_t>> expected_rows = {{1, 2}, {1, 3}, {1, 4}, {2, 0}, {2, 1}};
  const std::vector<float> ad = Floats(io.inputs[0]);
  for (size_t r = 0; r < expected_rows.size(); ++r) {
    for (int64_t c = 0; c < kAdWidth; ++c) {
      EXPECT_EQ(ad[r * kAdWidth + c], AdValue(expected_rows[r].first, expected_rows[r].second, c))
          << "batch row " << r << " col " << c;
    }
  }

  ASSERT_EQ(io.outputs.size(), 2u);
  EXPECT_EQ(io.outputs[0].shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(io.outputs[0].byte_size, 5 * sizeof(float));
  EXPECT_EQ(io.outputs[1].shape, (std::vector<int64_t>{5, 2}));
  EXPECT_NE(io.outputs[0].data, nullptr);
  EXPECT_NE(io.outputs[1].data, nullptr);
}

TEST_F(BatchTest, BroadcastRepeatsEachRequestsContextForEveryOneOfItsRows) {
  TestRequest* a = MakeRequest(1, 4);
  TestRequest* b = MakeRequest(2, 1);
  TestRequest* c = MakeRequest(3, 7);
  Batch batch;
  AddSlice(&batch, a, 0, 4);
  AddSlice(&batch, b, 0, 1);
  AddSlice(&batch, c, 2, 5);
  ASSERT_OK(batch.Gather(signature_, ContextLayout::kBroadcast, pool_.get()));
  const BatchTensor& user = batch.io().inputs[1];
  EXPECT_EQ(user.spec->name, "user");
  EXPECT_EQ(user.shape, (std::vector<int64_t>{10, kCtxWidth}));
  const std::vector<float> ctx = Floats(user);
  const std::vector<int> owner = {1, 1, 1, 1, 2, 3, 3, 3, 3, 3};
  for (size_t r = 0; r < owner.size(); ++r) {
    for (int64_t col = 0; col < kCtxWidth; ++col) {
      EXPECT_EQ(ctx[r * kCtxWidth + col], CtxValue(owner[r], col)) << "batch row " << r;
    }
  }
}

TEST_F(BatchTest, PerRequestLayoutHasOneContextRowPerSliceAndARowIndex) {
  TestRequest* a = MakeRequest(1, 3);
  TestRequest* b = MakeRequest(2, 6);
  TestRequest* c = MakeRequest(3, 1);
  Batch batch;
  AddSlice(&batch, a, 0, 3);
  AddSlice(&batch, b, 4, 2);
  AddSlice(&batch, c, 0, 1);
  ASSERT_OK(batch.Gather(signature_, ContextLayout::kPerRequest, pool_.get()));

  const BatchIO& io = batch.io();
  EXPECT_EQ(io.context_layout, ContextLayout::kPerRequest);
  EXPECT_EQ(io.num_requests, 3);
  EXPECT_EQ(io.rows, 6);
  EXPECT_EQ(io.inputs[0].shape, (std::vector<int64_t>{6, kAdWidth}));  // candidates are unchanged
  EXPECT_EQ(io.inputs[1].shape, (std::vector<int64_t>{3, kCtxWidth}));
  EXPECT_EQ(io.inputs[1].byte_size, 3 * kCtxWidth * sizeof(float));
  const std::vector<float> ctx = Floats(io.inputs[1]);
  for (int k = 0; k < 3; ++k) {
    for (int64_t col = 0; col < kCtxWidth; ++col) EXPECT_EQ(ctx[k * kCtxWidth + col], CtxValue(k + 1, col));
  }
  ASSERT_NE(io.row_request_index, nullptr);
  const std::vector<int64_t> expected_index = {0, 0, 0, 1, 1, 2};
  EXPECT_EQ(std::vector<int64_t>(io.row_request_index, io.row_request_index + 6), expected_index);

  RunFakeModel(batch.io());
  batch.Scatter();
  batch.Finish(Status::Ok(), std::chrono::microseconds(1), enqueue_time_);
  ExpectOutputs(*a, 3);
  ExpectOutputs(*c, 1);
  EXPECT_EQ(b->fired, 0);  // rows 0..3 of b are still outstanding
}

TEST_F(BatchTest, PaddingRepeatsTheLastRealRow) {
  for (ContextLayout layout : {ContextLayout::kBroadcast, ContextLayout::kPerRequest}) {
    SCOPED_TRACE(layout == ContextLayout::kBroadcast ? "broadcast" : "per request");
    TestRequest* a = MakeRequest(1, 2);
    TestRequest* b = MakeRequest(2, 3);
    Batch batch;
    AddSlice(&batch, a, 0, 2);
    AddSlice(&batch, b, 0, 3);
    batch.padded_rows = 8;
    ASSERT_OK(batch.Gather(signature_, layout, pool_.get()));

    const BatchIO& io = batch.io();
    EXPECT_EQ(io.rows, 8);
    EXPECT_EQ(io.real_rows, 5);
    EXPECT_EQ(io.inputs[0].shape, (std::vector<int64_t>{8, kAdWidth}));
    EXPECT_EQ(io.outputs[0].shape, (std::vector<int64_t>{8}));
    EXPECT_EQ(io.outputs[1].shape, (std::vector<int64_t>{8, 2}));
    const std::vector<float> ad = Floats(io.inputs[0]);
    for (int64_t r = 5; r < 8; ++r) {
      for (int64_t col = 0; col < kAdWidth; ++col) EXPECT_EQ(ad[r * kAdWidth + col], AdValue(2, 2, col)) << r;
    }
    const std::vector<float> ctx = Floats(io.inputs[1]);
    if (layout == ContextLayout::kBroadcast) {
      EXPECT_EQ(io.inputs[1].shape, (std::vector<int64_t>{8, kCtxWidth}));
      for (int64_t r = 5; r < 8; ++r) EXPECT_EQ(ctx[r * kCtxWidth], CtxValue(2, 0)) << r;
    } else {
      EXPECT_EQ(io.inputs[1].shape, (std::vector<int64_t>{2, kCtxWidth}));
      const std::vector<int64_t> expected_index = {0, 0, 1, 1, 1, 1, 1, 1};
      EXPECT_EQ(std::vector<int64_t>(io.row_request_index, io.row_request_index + 8), expected_index);
    }

    RunFakeModel(batch.io());
    // A padded row's output is garbage as far as any request is concerned.
    auto* score = static_cast<float*>(batch.io().outputs[0].data);
    for (int64_t r = 5; r < 8; ++r) score[r] = -12345.0f;
    batch.Scatter();
    batch.Finish(Status::Ok(), std::chrono::microseconds(1), enqueue_time_);
    ExpectOutputs(*a, 2);
    ExpectOutputs(*b, 3);
  }
}

TEST_F(BatchTest, PaddedRowsBelowRealRowsAreRaisedToRealRows) {
  TestRequest* a = MakeRequest(1, 4);
  Batch batch;
  AddSlice(&batch, a, 0, 4);
  batch.padded_rows = 0;  // never run fewer rows than the requests brought
  ASSERT_OK(batch.Gather(signature_, ContextLayout::kBroadcast, pool_.get()));
  EXPECT_EQ(batch.io().rows, 4);
  EXPECT_EQ(batch.padded_rows, 4);
}

TEST_F(BatchTest, ScatterWritesEachSliceToItsRequestsOffsetsAndFinishFiresOnceAllRowsAreDone) {
  TestRequest* a = MakeRequest(1, 6);
  TestRequest* b = MakeRequest(2, 2);
  TestRequest* c = MakeRequest(3, 5);

  Batch first;
  AddSlice(&first, a, 0, 4);
  AddSlice(&first, b, 0, 2);
  AddSlice(&first, c, 0, 1);
  Run(&first, ContextLayout::kBroadcast);
  EXPECT_EQ(a->fired, 0) << "a fired with rows 4..5 still outstanding";
  EXPECT_EQ(c->fired, 0);
  ExpectOutputs(*b, 2);
  EXPECT_EQ(b->result.timing.batches, 1);
  EXPECT_EQ(b->result.timing.batch_requests, 3);
  EXPECT_EQ(counters_->completed_ok.load(), 1u);

  // The rest of a and c, in a different order, and c's rows in two slices of two batches.
  Batch second;
  AddSlice(&second, c, 1, 3);
  AddSlice(&second, a, 4, 2);
  Run(&second, ContextLayout::kBroadcast);
  ExpectOutputs(*a, 6);
  EXPECT_EQ(c->fired, 0);

  Batch third;
  AddSlice(&third, c, 4, 1);
  Run(&third, ContextLayout::kBroadcast);
  ExpectOutputs(*c, 5);

  EXPECT_EQ(a->fired, 1);
  EXPECT_EQ(b->fired, 1);
  EXPECT_EQ(a->result.timing.batches, 2);
  EXPECT_EQ(c->result.timing.batches, 3);
  EXPECT_EQ(a->result.timing.batch_rows, 7);  // the worst (largest) batch it rode in
  EXPECT_EQ(a->result.timing.batch_requests, 3);
  EXPECT_EQ(c->result.timing.batch_requests, 3);  // its first batch's, not its last's (1)
  EXPECT_EQ(a->result.timing.compute_us, 7);
  EXPECT_EQ(a->result.timing.queue_us, 30);
  EXPECT_EQ(counters_->completed_ok.load(), 3u);
  EXPECT_EQ(counters_->failed.load(), 0u);
}

TEST_F(BatchTest, FinishReleasesTheBuffers) {
  TestRequest* a = MakeRequest(1, 64);
  Batch batch;
  AddSlice(&batch, a, 0, 64);
  ASSERT_OK(batch.Gather(signature_, ContextLayout::kBroadcast, pool_.get()));
  EXPECT_GT(pool_->stats().in_use_bytes, 0u);
  RunFakeModel(batch.io());
  batch.Scatter();
  batch.Finish(Status::Ok(), std::chrono::microseconds(1), enqueue_time_);
  EXPECT_EQ(pool_->stats().in_use_bytes, 0u);
  ExpectOutputs(*a, 64);
}

TEST_F(BatchTest, FirstErrorWins) {
  TestRequest* a = MakeRequest(1, 4);
  Batch first;
  AddSlice(&first, a, 0, 2);
  Batch second;
  AddSlice(&second, a, 2, 2);
  ASSERT_OK(first.Gather(signature_, ContextLayout::kBroadcast, pool_.get()));
  ASSERT_OK(second.Gather(signature_, ContextLayout::kBroadcast, pool_.get()));
  first.Finish(Internal("model 'm': first failure"), std::chrono::microseconds(1), enqueue_time_);
  EXPECT_EQ(a->fired, 0);
  EXPECT_TRUE(a->state->failed());
  second.Finish(Unavailable("model 'm': second failure"), std::chrono::microseconds(1), enqueue_time_);
  ASSERT_EQ(a->fired, 1);
  EXPECT_EQ(a->result.status.code(), StatusCode::kInternal);
  EXPECT_EQ(a->result.status.message(), "model 'm': first failure");
  EXPECT_TRUE(a->result.outputs.empty()) << "a failed request carries no partial outputs";
  EXPECT_EQ(counters_->failed.load(), 1u);
  EXPECT_EQ(counters_->completed_ok.load(), 0u);
}

TEST_F(BatchTest, AnErrorInAnyPartFailsTheWholeRequest) {
  // The successful part finishes first: its scattered rows must not leak out as a partial answer.
  TestRequest* a = MakeRequest(1, 4);
  Batch first;
  AddSlice(&first, a, 0, 2);
  Run(&first, ContextLayout::kBroadcast);
  EXPECT_EQ(a->fired, 0);
  Batch second;
  AddSlice(&second, a, 2, 2);
  ASSERT_OK(second.Gather(signature_, ContextLayout::kBroadcast, pool_.get()));
  second.Finish(Status(StatusCode::kFailedPrecondition, "backend said no"), std::chrono::microseconds(1),
                enqueue_time_);
  ASSERT_EQ(a->fired, 1);
  EXPECT_EQ(a->result.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(a->result.outputs.empty());
}

TEST_F(BatchTest, GatherFailsWithResourceExhaustedAtThePoolCap) {
  MemoryPoolOptions options;
  options.max_bytes = 8192;
  options.min_block_bytes = 4096;
  options.use_cuda = false;
  options.lock_memory = false;
  std::shared_ptr<MemoryPool> tiny;
  ASSERT_OK(MemoryPool::Create(options, &tiny));

  TestRequest* a = MakeRequest(1, 600);  // 600 * 8 B of "ad" = 4800 B: an 8 KiB block, then no room
  Batch batch;
  AddSlice(&batch, a, 0, 600);
  const Status status = batch.Gather(signature_, ContextLayout::kBroadcast, tiny.get());
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status.ToString();
  batch.Finish(status, std::chrono::microseconds(0), enqueue_time_);
  ASSERT_EQ(a->fired, 1);
  EXPECT_EQ(a->result.status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(tiny->stats().in_use_bytes, 0u) << "the leases of a failed gather must be returned";
}

TEST(CopyIntoOutputTest, CopiesAnOutputOfItsDtypeAndSizeAndNamesOneThatIsNot) {
  TensorSpec spec{"score", DType::kFloat32, {}, Role::kCandidate};
  float buffer[3] = {0, 0, 0};
  BatchTensor out{&spec, {3}, buffer, sizeof(buffer)};
  const float returned[3] = {1.5f, -2.0f, 3.25f};
  ASSERT_TRUE(CopyIntoOutput(out, DType::kFloat32, returned, sizeof(returned)).ok());
  EXPECT_EQ(buffer[2], 3.25f);
  const Status short_one = CopyIntoOutput(out, DType::kFloat32, returned, 2 * sizeof(float));
  EXPECT_EQ(short_one.code(), StatusCode::kInternal);
  EXPECT_EQ(short_one.message(), "backend output 'score' has dtype float32 and 8 bytes, expected float32 and 12");
  const double wide[3] = {9, 9, 9};
  EXPECT_EQ(CopyIntoOutput(out, DType::kFloat64, wide, 12).code(), StatusCode::kInternal);
  EXPECT_EQ(buffer[0], 1.5f) << "a refused output writes nothing";
}

}  // namespace
}  // namespace adrank
