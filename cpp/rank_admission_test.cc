#include "rank_admission.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

namespace adrank {
namespace {

using std::chrono::milliseconds;

// A registry whose one model takes requests of at most MaxRequestBytes(model) bytes.
class RankAdmissionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ThreadPoolOptions options;
    options.num_workers = 1;
    ASSERT_TRUE(ThreadPool::Create(options, &pool_).ok());
    ModelOptions model;
    model.name = "sum:1";
    model.signature.inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate}};
    model.signature.outputs = {{"score", DType::kFloat32, {}, Role::kCandidate}};
    model.backend = [](BatchIO&) { return Status::Ok(); };
    auto served = std::make_shared<ServedModel>();
    ASSERT_TRUE(pool_->AddModel(std::move(model), &served->queue).ok());
    served->name = "sum";
    served->version = 1;
    served->inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate, true, 0}};
    served->score_output = "score";
    served->max_candidates = 16;
    registry_->Add(served, true);
  }

  std::unique_ptr<ThreadPool> pool_;
  std::shared_ptr<ModelRegistry> registry_ = std::make_shared<ModelRegistry>();
};

TEST_F(RankAdmissionTest, RefusesEveryCallWhileLoadingAndDrainingAndHoldsNothingForThem) {
  RankAdmission admission(registry_, {});
  Status status = admission.Admit(100);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "the server is loading its models");
  admission.SetState(RankAdmission::State::kDraining);
  status = admission.Admit(100);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "the server is draining (shutting down)");
  EXPECT_EQ(admission.in_flight(), 0);
  EXPECT_EQ(admission.in_flight_bytes(), 0);
}

TEST_F(RankAdmissionTest, RefusesARequestLargerThanTheServedModelsTakeByItsSize) {
  RankAdmission admission(registry_, {});
  admission.SetState(RankAdmission::State::kServing);
  const int64_t largest = registry_->max_request_bytes();
  ASSERT_GT(largest, 0);
  EXPECT_TRUE(admission.Admit(largest).ok());
  const Status status = admission.Admit(largest + 1);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find(std::to_string(largest + 1) + " bytes exceed the largest request"), std::string::npos)
      << status.message();
  EXPECT_EQ(admission.in_flight(), 1);
  EXPECT_EQ(admission.in_flight_bytes(), largest);
}

TEST_F(RankAdmissionTest, BoundsTheBytesInFlightUntilTheyAreReleased) {
  RankAdmission admission(registry_, RankAdmissionOptions{1000});
  admission.SetState(RankAdmission::State::kServing);
  ASSERT_TRUE(admission.Admit(600).ok());
  const Status refused = admission.Admit(600);
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("(1000, max_in_flight_bytes); retry shortly"), std::string::npos);
  admission.CallDone();  // answered, but the transport still holds its bytes
  EXPECT_EQ(admission.Admit(600).code(), StatusCode::kResourceExhausted);
  admission.ReleaseBytes(600);
  EXPECT_TRUE(admission.Admit(600).ok());
  EXPECT_EQ(admission.released_bytes(), 600u);
  EXPECT_FALSE(RankAdmission::Validate(RankAdmissionOptions{0}).ok());
}

TEST_F(RankAdmissionTest, CountsEveryAnswerByItsCode) {
  RankAdmission admission(registry_, {});
  admission.Answered(StatusCode::kOk);
  admission.Answered(StatusCode::kOk);
  admission.Answered(StatusCode::kUnavailable);
  const auto counts = admission.CallCounts();
  EXPECT_EQ(counts[0], 2u);
  EXPECT_EQ(counts[static_cast<int>(StatusCode::kUnavailable)], 1u);
}

TEST_F(RankAdmissionTest, DrainWaitsForTheLastCallAndThenForQuiet) {
  RankAdmission admission(registry_, {});
  admission.SetState(RankAdmission::State::kServing);
  ASSERT_TRUE(admission.Admit(10).ok());
  admission.SetState(RankAdmission::State::kDraining);
  EXPECT_FALSE(admission.WaitDrained(milliseconds(0), milliseconds(30))) << "a call is still in flight";
  const auto start = std::chrono::steady_clock::now();
  std::thread done([&] {
    std::this_thread::sleep_for(milliseconds(50));
    admission.CallDone();
  });
  EXPECT_TRUE(admission.WaitDrained(milliseconds(20), std::chrono::seconds(10)));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(50));
  done.join();
}

}  // namespace
}  // namespace adrank
