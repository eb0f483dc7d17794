#include "rank_call.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace adrank {
namespace {

using std::chrono::milliseconds;

// What a transport sees: the one answer, delivered to a future. The call deletes itself in Answer, as
// the C++ front end's reactor may: the contract must not touch it afterwards (ASan checks).
struct Answered {
  Status status;
  v1::RankResponse response;
  int32_t batch_requests = -1;  // RankCall::batch_requests() as Answer saw it
};

class FutureCall final : public RankCall {
 public:
  explicit FutureCall(std::promise<Answered>* answer) : answer_(answer) {}

 private:
  void Answer(const Status& status, v1::RankResponse* response) override {
    ++answers_;
    EXPECT_EQ(answers_, 1);
    std::promise<Answered>* answer = answer_;
    Answered answered{status, *response, batch_requests()};
    delete this;
    answer->set_value(std::move(answered));
  }

  std::promise<Answered>* const answer_;
  int answers_ = 0;
};

// "sum" (score = x[0] + x[1] + bias + offset per version) behind a gate the test can close, so that a
// call can be held in the backend while another waits in the queue.
class RankCallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ThreadPoolOptions options;
    options.num_workers = 1;
    ASSERT_TRUE(ThreadPool::Create(options, &pool_).ok());
    stable_ = AddSum(1, 0.0f, true);
  }

  void TearDown() override {
    OpenGate();
    pool_.reset();
  }

  std::shared_ptr<ServedModel> AddSum(int64_t version, float offset, bool serving, int64_t max_request_rows = 0) {
    ModelOptions model;
    model.name = "sum:" + std::to_string(version);
    model.signature.inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate},
                              {"bias", DType::kFloat32, {}, Role::kContext}};
    model.signature.outputs = {{"score", DType::kFloat32, {}, Role::kCandidate}};
    model.batching.max_queue_delay_us = 0;
    model.batching.priority_levels = 2;
    if (max_request_rows > 0) model.batching.max_request_rows = max_request_rows;
    model.backend = [this, offset](BatchIO& io) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        ++entered_;
        cv_.notify_all();
        cv_.wait(lock, [this] { return gate_open_; });
        if (failing_) return Internal("backend raised RuntimeError: boom");
      }
      const auto* x = static_cast<const float*>(io.inputs[0].data);
      const auto* bias = static_cast<const float*>(io.inputs[1].data);
      auto* score = static_cast<float*>(io.outputs[0].data);
      for (int64_t r = 0; r < io.rows; ++r) score[r] = x[2 * r] + x[2 * r + 1] + bias[r] + offset;
      return Status::Ok();
    };
    auto served = std::make_shared<ServedModel>();
    EXPECT_TRUE(pool_->AddModel(std::move(model), &served->queue).ok());
    served->name = "sum";
    served->version = version;
    served->inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate, false, 0},
                      {"bias", DType::kFloat32, {}, Role::kContext, true, 0}};
    served->score_output = "score";
    served->max_candidates = 64;
    served->lowest_priority = 1;
    EXPECT_TRUE(VersionStats::Create(VersionStatsOptions{0, 100, 100}, &served->stats).ok());
    registry_.Add(served, serving);
    return served;
  }

  // `rows` candidates x = (r, r + 0.5), bias 1, scored by "sum" (pinned to `version` unless 0).
  static v1::RankRequest Request(int rows, int64_t version = 0) {
    v1::RankRequest request;
    request.set_request_id("auction-7");
    v1::ModelSpec* spec = request.add_models();
    spec->set_name("sum");
    spec->set_version(version);
    std::vector<float> x;
    for (int r = 0; r < rows; ++r) x.insert(x.end(), {static_cast<float>(r), r + 0.5f});
    v1::Tensor* candidates = request.add_candidates();
    candidates->set_name("x");
    candidates->set_dtype(v1::DATA_TYPE_FLOAT32);
    candidates->add_shape(rows);
    candidates->add_shape(2);
    candidates->set_raw_data(std::string(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float)));
    v1::Tensor* bias = request.add_context();
    const float one = 1.0f;
    bias->set_name("bias");
    bias->set_dtype(v1::DATA_TYPE_FLOAT32);
    bias->add_shape(1);
    bias->set_raw_data(std::string(reinterpret_cast<const char*>(&one), sizeof(one)));
    return request;
  }

  // Starts a call over `bytes`; its answer arrives on the returned future.
  std::future<Answered> Start(const std::string& bytes, const RankCallOptions& options = {},
                              FutureCall** started = nullptr) {
    promises_.push_back(std::make_unique<std::promise<Answered>>());
    std::future<Answered> answer = promises_.back()->get_future();
    auto* call = new FutureCall(promises_.back().get());  // deletes itself in Answer
    if (started != nullptr) *started = call;
    call->Parse(bytes);
    call->Start(registry_, options);
    return answer;
  }

  Answered Rank(const v1::RankRequest& request, const RankCallOptions& options = {}) {
    return Start(request.SerializeAsString(), options).get();
  }

  static std::vector<float> Scores(const v1::ModelScores& scores) {
    std::vector<float> out(scores.scores().size() / sizeof(float));
    std::memcpy(out.data(), scores.scores().data(), scores.scores().size());
    return out;
  }

  void CloseGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = false;
  }
  void OpenGate() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      gate_open_ = true;
    }
    cv_.notify_all();
  }
  void AwaitEntered(int batches) {
    std::unique_lock<std::mutex> lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(10), [&] { return entered_ >= batches; }));
  }

  std::unique_ptr<ThreadPool> pool_;
  ModelRegistry registry_;
  std::shared_ptr<ServedModel> stable_;
  std::vector<std::unique_ptr<std::promise<Answered>>> promises_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool gate_open_ = true;
  bool failing_ = false;  // every batch fails, as one whose backend raised
  int entered_ = 0;
};

TEST_F(RankCallTest, AnswersEachModelsScoresTheVersionAndItsTimingAndRecordsTheOutcome) {
  const Answered answered = Rank(Request(3));
  ASSERT_TRUE(answered.status.ok()) << answered.status.ToString();
  EXPECT_EQ(answered.response.request_id(), "auction-7");
  ASSERT_EQ(answered.response.results_size(), 1);
  const v1::ModelScores& scores = answered.response.results(0);
  EXPECT_EQ(scores.model(), "sum");
  EXPECT_EQ(scores.version(), 1);
  EXPECT_EQ(Scores(scores), (std::vector<float>{1.5f, 3.5f, 5.5f}));
  EXPECT_EQ(scores.timing().batch_rows(), 3);
  EXPECT_GE(answered.response.server_us(), scores.timing().compute_us());
  const VersionStatsSnapshot recorded = stable_->stats->Snapshot();
  EXPECT_EQ(recorded.ok, 1u);
  EXPECT_EQ(recorded.candidates, 3u);
}

TEST_F(RankCallTest, BytesThatAreNotARankRequestAreRefusedNamingTheFieldAndByte) {
  std::string bytes = Request(2).SerializeAsString();
  bytes.resize(bytes.size() - 3);  // the last field (the candidate tensor, field order) is cut off
  const Answered answered = Start(bytes).get();
  EXPECT_EQ(answered.status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(answered.status.message().rfind("request: not an adrank.v1.RankRequest (", 0), 0u)
      << answered.status.message();
  EXPECT_NE(answered.status.message().find("candidates[0] at byte 37: claims 27 bytes, 24 remain"), std::string::npos)
      << answered.status.message();
  EXPECT_EQ(answered.response.results_size(), 0);
  EXPECT_EQ(stable_->stats->Snapshot().codes[static_cast<int>(StatusCode::kInvalidArgument)], 0u)
      << "a call that is not a request belongs to no version";
}

TEST_F(RankCallTest, APriorityBeyondTheCoresIntIsRefused) {
  v1::RankRequest request = Request(1);
  request.set_priority(static_cast<uint32_t>(INT32_MAX) + 1);
  const Answered answered = Rank(request);
  EXPECT_EQ(answered.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(answered.status.message().find("priority 2147483648 is outside [0, 2147483647]"), std::string::npos);
}

TEST_F(RankCallTest, AnUnknownModelIsNotFoundAndRunsNothing) {
  v1::RankRequest request = Request(1);
  request.mutable_models(0)->set_name("nope");
  const Answered answered = Rank(request);
  EXPECT_EQ(answered.status.code(), StatusCode::kNotFound);
  EXPECT_NE(answered.status.message().find("'nope'"), std::string::npos) << answered.status.message();
  EXPECT_EQ(entered_, 0);
}

TEST_F(RankCallTest, ADeadlineWithinTheReplyMarginIsRefusedAtOnceNamingTheMargin) {
  RankCallOptions options;
  options.reply_margin = milliseconds(50);
  options.deadline = SteadyClock::Get()->Now() + milliseconds(20);
  const Answered refused = Rank(Request(1), options);
  EXPECT_EQ(refused.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(refused.status.message().find("reply margin 50000 µs"), std::string::npos) << refused.status.message();
  EXPECT_EQ(entered_, 0);
  options.deadline = SteadyClock::Get()->Now() + std::chrono::seconds(10);
  EXPECT_TRUE(Rank(Request(1), options).status.ok());
}

TEST_F(RankCallTest, TheModelsGetTheDeadlineLessTheMarginAndAQueuedCallPastItExpires) {
  CloseGate();
  std::future<Answered> holding = Start(Request(1).SerializeAsString());
  AwaitEntered(1);
  // 300 ms to the caller's deadline, 250 of them the reply's: the models have ~50 ms. The worker frees up
  // after 100 ms, long before the caller's deadline: the queued part has expired by then.
  RankCallOptions options;
  options.reply_margin = milliseconds(250);
  options.deadline = SteadyClock::Get()->Now() + milliseconds(300);
  std::future<Answered> queued = Start(Request(1).SerializeAsString(), options);
  std::this_thread::sleep_for(milliseconds(100));
  OpenGate();
  EXPECT_EQ(queued.get().status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_LT(SteadyClock::Get()->Now(), options.deadline) << "answered before the caller's own deadline";
  EXPECT_TRUE(holding.get().status.ok());
}

TEST_F(RankCallTest, AnswerKnowsWhetherItsBatchCarriedOtherCalls) {
  EXPECT_EQ(Rank(Request(2)).batch_requests, 1) << "alone in its batch";
  v1::RankRequest unknown = Request(1);
  unknown.mutable_models(0)->set_name("nope");
  EXPECT_EQ(Rank(unknown).batch_requests, 0) << "refused before any model ran";
  // Two calls queued behind a held batch ride the next one together.
  CloseGate();
  std::future<Answered> holding = Start(Request(1).SerializeAsString());
  AwaitEntered(2);  // the first call's batch, then this one's
  std::future<Answered> first = Start(Request(2).SerializeAsString());
  std::future<Answered> second = Start(Request(3).SerializeAsString());
  OpenGate();
  EXPECT_EQ(holding.get().batch_requests, 1);
  EXPECT_EQ(first.get().batch_requests, 2);
  EXPECT_EQ(second.get().batch_requests, 2);
}

TEST_F(RankCallTest, CancelCompletesTheQueuedPartsCancelled) {
  CloseGate();
  std::future<Answered> holding = Start(Request(1).SerializeAsString());
  AwaitEntered(1);
  FutureCall* call = nullptr;
  std::future<Answered> queued = Start(Request(2).SerializeAsString(), {}, &call);
  call->Cancel();
  const Answered cancelled = queued.get();
  EXPECT_EQ(cancelled.status.code(), StatusCode::kCancelled);
  OpenGate();
  EXPECT_TRUE(holding.get().status.ok());
  EXPECT_EQ(entered_, 1) << "the cancelled call never ran";
}

TEST_F(RankCallTest, AnInternalAnswerIsReportedWithModelVersionTenantAndRequestIdAndNoOtherIs) {
  std::mutex mu;
  std::vector<ServerError> reported;
  SetServerErrorSink([&](const ServerError& error) {
    std::lock_guard<std::mutex> lock(mu);
    reported.push_back(error);
  });
  RankCallOptions options;
  options.tenant = "gold";
  EXPECT_TRUE(Rank(Request(3), options).status.ok());  // OK: nothing to report
  v1::RankRequest unknown = Request(3);
  unknown.mutable_models(0)->set_name("nope");
  EXPECT_EQ(Rank(unknown, options).status.code(), StatusCode::kNotFound);  // the caller's: not reported
  {
    std::lock_guard<std::mutex> lock(mu_);
    failing_ = true;
  }
  const Answered failed = Rank(Request(3), options);
  SetServerErrorSink(nullptr);
  EXPECT_EQ(Rank(Request(3)).status.code(), StatusCode::kInternal);  // no sink: dropped
  ASSERT_EQ(failed.status.code(), StatusCode::kInternal);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(reported.size(), 1u);
  EXPECT_EQ(reported[0].model, "sum");
  EXPECT_EQ(reported[0].version, 1);
  EXPECT_EQ(reported[0].tenant, "gold");
  EXPECT_EQ(reported[0].request_id, "auction-7");
  EXPECT_EQ(reported[0].message, failed.status.message());
  EXPECT_NE(reported[0].message.find("boom"), std::string::npos);
}

TEST_F(RankCallTest, AModelsRefusalFailsTheCallAndIsCountedAtItsVersion) {
  std::shared_ptr<ServedModel> strict = AddSum(2, 0.0f, false, /*max_request_rows=*/2);
  const Answered answered = Rank(Request(3, 2));
  EXPECT_EQ(answered.status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(answered.response.results_size(), 0);
  EXPECT_EQ(strict->stats->Snapshot().codes[static_cast<int>(StatusCode::kInvalidArgument)], 1u);
  EXPECT_TRUE(Rank(Request(2, 2)).status.ok());
}

TEST_F(RankCallTest, TheShadowIsMirroredAtItsLowestPriorityAndNeverAnswers) {
  std::shared_ptr<ServedModel> shadow = AddSum(3, 10.0f, false);
  ASSERT_TRUE(registry_.SetRollout("sum", RolloutRoute{1, 0, 0, 3, 10000}).ok());
  const Answered answered = Rank(Request(2));
  ASSERT_TRUE(answered.status.ok()) << answered.status.ToString();
  ASSERT_EQ(answered.response.results_size(), 1);
  EXPECT_EQ(answered.response.results(0).version(), 1);
  EXPECT_EQ(Scores(answered.response.results(0)), (std::vector<float>{1.5f, 3.5f}));
  for (int i = 0; i < 1000 && shadow->stats->Snapshot().ok == 0; ++i) std::this_thread::sleep_for(milliseconds(2));
  EXPECT_EQ(shadow->stats->Snapshot().ok, 1u);
  EXPECT_EQ(shadow->stats->Snapshot().candidates, 2u);
}

TEST_F(RankCallTest, ConcurrentCallsEachGetTheirOwnScores) {
  std::vector<std::future<Answered>> answers;
  for (int rows = 1; rows <= 32; ++rows) answers.push_back(Start(Request(rows).SerializeAsString()));
  for (int rows = 1; rows <= 32; ++rows) {
    const Answered answered = answers[rows - 1].get();
    ASSERT_TRUE(answered.status.ok()) << answered.status.ToString();
    const std::vector<float> scores = Scores(answered.response.results(0));
    ASSERT_EQ(scores.size(), static_cast<size_t>(rows));
    EXPECT_EQ(scores.back(), 2.0f * (rows - 1) + 1.5f);
  }
}

TEST_F(RankCallTest, StartRankKeepsTheSerializedAnswerAndTellsOnceItIsThere) {
  auto answer = std::make_shared<Outcome<RankAnswer>>();
  std::atomic<int> told{0};
  Outcome<bool> told_once;  // `answered` runs after the answer is set: wait for it, not only the answer
  StartRank(Request(2).SerializeAsString(), registry_, {}, answer, [&] {
    ++told;
    told_once.Set(true);
  });
  ASSERT_TRUE(told_once.WaitFor(std::chrono::seconds(10)));
  ASSERT_TRUE(answer->done()) << "the answer is kept before the transport is told";
  ASSERT_TRUE(answer->value().status.ok()) << answer->value().status.ToString();
  v1::RankResponse response;
  ASSERT_TRUE(response.ParseFromString(answer->value().reply));
  EXPECT_EQ(Scores(response.results(0)), (std::vector<float>{1.5f, 3.5f}));
  EXPECT_EQ(told.load(), 1);
  // Refused at once: answered on the starting thread, before StartRank returns.
  auto refused = std::make_shared<Outcome<RankAnswer>>();
  StartRank("\xff", registry_, {}, refused);
  ASSERT_TRUE(refused->done());
  EXPECT_EQ(refused->value().status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(refused->value().reply.empty());
}

TEST_F(RankCallTest, StartRanksHandleCancelsUntilTheAnswerAndNothingAfter) {
  CloseGate();
  auto holding = std::make_shared<Outcome<RankAnswer>>();
  const RankCallHandle running = StartRank(Request(1).SerializeAsString(), registry_, {}, holding);
  AwaitEntered(1);
  auto queued = std::make_shared<Outcome<RankAnswer>>();
  const RankCallHandle handle = StartRank(Request(1).SerializeAsString(), registry_, {}, queued);
  handle.Cancel();
  ASSERT_TRUE(queued->WaitFor(std::chrono::seconds(10)));
  EXPECT_EQ(queued->value().status.code(), StatusCode::kCancelled);
  handle.Cancel();  // the call is gone: nothing happens
  OpenGate();
  ASSERT_TRUE(holding->WaitFor(std::chrono::seconds(10)));
  EXPECT_TRUE(holding->value().status.ok());
  running.Cancel();
}

}  // namespace
}  // namespace adrank
