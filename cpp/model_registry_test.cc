#include "model_registry.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "status_testing.h"

namespace adrank {
namespace {

class ModelRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ThreadPoolOptions options;
    options.num_workers = 1;
    ASSERT_TRUE(ThreadPool::Create(options, &pool_).ok());
    for (int64_t version : {1, 2, 3}) Register(version, version == 1);
  }

  void Register(int64_t version, bool serving) {
    ModelOptions model;
    model.name = "ctr:" + std::to_string(version);
    model.signature.inputs.push_back({"x", DType::kFloat32, {2}, Role::kCandidate});
    model.signature.outputs.push_back({"score", DType::kFloat32, {}, Role::kCandidate});
    model.backend = [](BatchIO&) { return Status::Ok(); };
    auto served = std::make_shared<ServedModel>();
    ASSERT_TRUE(pool_->AddModel(std::move(model), &served->queue).ok());
    served->name = "ctr";
    served->version = version;
    served->score_output = "score";
    served->max_candidates = 8;
    registry_.Add(served, serving);
  }

  int64_t RoutedVersion(const std::string& key, bool* shadowed = nullptr) {
    Routed routed;
    const Status status = registry_.Route("ctr", 0, key, &routed);
    EXPECT_TRUE(status.ok()) << status.ToString();
    if (shadowed) *shadowed = routed.shadow != nullptr;
    return routed.model ? routed.model->version : -1;
  }

  std::unique_ptr<ThreadPool> pool_;
  ModelRegistry registry_;
};

TEST(RoutingBucketTest, IsDeterministicInRangeAndUniform) {
  EXPECT_EQ(RoutingBucket("user-42"), RoutingBucket("user-42"));
  EXPECT_NE(RoutingBucket("user-42"), RoutingBucket("user-42", kShadowSalt));
  std::vector<int> deciles(10, 0);
  for (int i = 0; i < 10000; ++i) {
    const int bucket = RoutingBucket("user-" + std::to_string(i));
    ASSERT_GE(bucket, 0);
    ASSERT_LT(bucket, 10000);
    deciles[static_cast<size_t>(bucket / 1000)]++;
  }
  for (int count : deciles) EXPECT_NEAR(count, 1000, 100);  // ~3 standard deviations
}

TEST_F(ModelRegistryTest, UnpinnedRequestsGetStableUntilARolloutSaysOtherwise) {
  EXPECT_EQ(RoutedVersion("any"), 1);
  std::shared_ptr<const ServedModel> pinned;
  ASSERT_TRUE(registry_.Resolve("ctr", 3, &pinned).ok());
  EXPECT_EQ(pinned->version, 3);
}

TEST_F(ModelRegistryTest, CanarySplitIsWithinTwoPointsAndStickyPerKey) {
  ASSERT_TRUE(registry_.SetRollout("ctr", RolloutRoute{1, 2, 1000}).ok());
  int canary = 0;
  for (int i = 0; i < 10000; ++i) {
    const std::string key = "user-" + std::to_string(i);
    const int64_t version = RoutedVersion(key);
    ASSERT_TRUE(version == 1 || version == 2);
    canary += version == 2;
    ASSERT_EQ(RoutedVersion(key), version) << key;  // the same key, the same version
  }
  EXPECT_NEAR(canary / 100.0, 10.0, 2.0);
  // Growing the canary keeps every key that already saw it there.
  ASSERT_TRUE(registry_.SetRollout("ctr", RolloutRoute{1, 2, 2500}).ok());
  for (int i = 0; i < 2000; ++i) {
    const std::string key = "user-" + std::to_string(i);
    if (RoutingBucket(key) < 1000) {
      ASSERT_EQ(RoutedVersion(key), 2) << key;
    }
  }
}

TEST_F(ModelRegistryTest, RequestsWithoutKeyAreStillSplitInProportion) {
  ASSERT_TRUE(registry_.SetRollout("ctr", RolloutRoute{1, 2, 3000}).ok());
  int canary = 0;
  for (int i = 0; i < 10000; ++i) canary += RoutedVersion("") == 2;
  EXPECT_NEAR(canary / 100.0, 30.0, 2.0);
}

TEST_F(ModelRegistryTest, PinnedVersionIgnoresTheRolloutAndIsNeverMirrored) {
  ASSERT_TRUE(registry_.SetRollout("ctr", RolloutRoute{1, 2, 10000, 3, 10000}).ok());
  Routed routed;
  ASSERT_TRUE(registry_.Route("ctr", 1, "user-1", &routed).ok());
  EXPECT_EQ(routed.model->version, 1);
  EXPECT_EQ(routed.shadow, nullptr);
  bool shadowed = false;
  EXPECT_EQ(RoutedVersion("user-1", &shadowed), 2);
  EXPECT_TRUE(shadowed);
}

TEST_F(ModelRegistryTest, ShadowSamplesItsShareAndItsQueueRunsInTheBackground) {
  ASSERT_TRUE(registry_.SetRollout("ctr", RolloutRoute{1, 0, 0, 3, 2500}).ok());
  int mirrored = 0;
  for (int i = 0; i < 10000; ++i) {
    bool shadowed = false;
    ASSERT_EQ(RoutedVersion("user-" + std::to_string(i), &shadowed), 1);
    mirrored += shadowed;
  }
  EXPECT_NEAR(mirrored / 100.0, 25.0, 2.0);
  std::shared_ptr<const ServedModel> shadow, stable;
  ASSERT_TRUE(registry_.Resolve("ctr", 3, &shadow).ok());
  ASSERT_TRUE(registry_.Resolve("ctr", 1, &stable).ok());
  EXPECT_TRUE(shadow->queue->background());
  EXPECT_FALSE(stable->queue->background());
  ASSERT_TRUE(registry_.SetServing("ctr", 1).ok());
  EXPECT_FALSE(shadow->queue->background());
}

TEST_F(ModelRegistryTest, RefusesARolloutNamingAVersionNotLoaded) {
  Status status = registry_.SetRollout("ctr", RolloutRoute{1, 7, 500});
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(status.message(), "canary version 7")) << status.message();
  EXPECT_EQ(registry_.SetRollout("ctr", RolloutRoute{0}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_.SetRollout("ctr", RolloutRoute{1, 1, 500}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_.SetRollout("ctr", RolloutRoute{1, 2, 10001}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_.SetRollout("cvr", RolloutRoute{1}).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.rollout("ctr").stable, 1);  // nothing of a refused rollout applies
  EXPECT_EQ(registry_.rollout("ctr").canary, 0);
}

TEST_F(ModelRegistryTest, RemovedVersionIsReleasedWhenItsLastRequestIsDone) {
  ASSERT_TRUE(registry_.SetRollout("ctr", RolloutRoute{1, 2, 5000}).ok());
  std::shared_ptr<const ServedModel> in_flight;
  ASSERT_TRUE(registry_.Resolve("ctr", 2, &in_flight).ok());
  const VersionRelease removed = registry_.Remove("ctr", 2);
  EXPECT_FALSE(removed.released());  // a request still holds it
  EXPECT_FALSE(removed.Wait(std::chrono::milliseconds(20)));
  EXPECT_EQ(registry_.rollout("ctr").canary, 0);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(RoutedVersion("user-" + std::to_string(i)), 1);
  // The last holder lets go on another thread: the waiter wakes for it, well before its timeout.
  std::thread last_request([&in_flight] {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    in_flight.reset();
  });
  const auto started = std::chrono::steady_clock::now();
  EXPECT_TRUE(removed.Wait(std::chrono::seconds(30)));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));
  last_request.join();
  EXPECT_TRUE(removed.released());
  EXPECT_TRUE(registry_.Remove("ctr", 7).released());  // never registered: nothing to wait for
}

TEST_F(ModelRegistryTest, RemovingTheStableVersionLeavesUnpinnedRequestsNotFound) {
  registry_.Remove("ctr", 1);
  Routed routed;
  const Status status = registry_.Route("ctr", 0, "k", &routed);
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(status.message(), "no serving version")) << status.message();
  EXPECT_TRUE(registry_.Route("ctr", 2, "k", &routed).ok());
}

TEST_F(ModelRegistryTest, CountsRequestsForAModelItDoesNotServeButNotOtherMisses) {
  Routed routed;
  std::shared_ptr<const ServedModel> resolved;
  EXPECT_EQ(registry_.unknown_model_requests(), 0u);
  EXPECT_EQ(registry_.Route("nope", 0, "k", &routed).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.Route("nope", 3, "k", &routed).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.unknown_model_requests(), 2u);
  // A version it does not have is not an unknown model; Resolve (metadata, statistics) counts nothing.
  EXPECT_EQ(registry_.Route("ctr", 9, "k", &routed).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.Resolve("nope", 0, &resolved).code(), StatusCode::kNotFound);
  EXPECT_TRUE(registry_.Route("ctr", 0, "k", &routed).ok());
  EXPECT_EQ(registry_.unknown_model_requests(), 2u);
  registry_.CountUnknownModel();
  EXPECT_EQ(registry_.unknown_model_requests(), 3u);
}

}  // namespace
TEST(VersionReleaseTest, ACopyOfAModelNeverReleasesTheOriginal) {
  auto original = std::make_shared<ServedModel>();
  const VersionRelease release(*original);
  {
    const ServedModel copy = *original;
  }  // a test's template model, say
  EXPECT_FALSE(release.released());
  original.reset();
  EXPECT_TRUE(release.released());
  EXPECT_TRUE(release.Wait(Duration::zero()));
}

}  // namespace adrank
