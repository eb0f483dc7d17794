#include "version_stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace adrank {
namespace {

std::shared_ptr<VersionStats> Make(int bins = 10) {
  std::shared_ptr<VersionStats> stats;
  EXPECT_TRUE(VersionStats::Create(VersionStatsOptions{0.0, 1.0, bins}, &stats).ok());
  return stats;
}

TEST(VersionStatsTest, CountsOutcomesApart) {
  auto stats = Make();
  stats->Record(Status::Ok(), 100, 400, nullptr, 0);
  stats->Record(Internal("backend failed"), 0, 0, nullptr, 0);
  stats->Record(Status(StatusCode::kInvalidArgument, "x"), 0, 0, nullptr, 0);
  stats->Record(DeadlineExceeded("late"), 0, 0, nullptr, 0);
  stats->Record(ResourceExhausted("full"), 0, 0, nullptr, 0);
  stats->RecordDropped();
  const VersionStatsSnapshot s = stats->Snapshot();
  EXPECT_EQ(s.ok, 1u);
  EXPECT_EQ(s.failed, 2u);
  EXPECT_EQ(s.dropped, 3u);
}

TEST(VersionStatsTest, LatencyLandsInTheFirstBucketWhoseBoundHoldsIt) {
  auto stats = Make();
  stats->Record(Status::Ok(), 0, 1000, nullptr, 0);
  stats->Record(Status::Ok(), 0, 1'000'000'000, nullptr, 0);  // beyond every bound
  const std::vector<double>& bounds = VersionStats::LatencyBucketBounds();
  const VersionStatsSnapshot s = stats->Snapshot();
  ASSERT_EQ(s.latency_counts.size(), bounds.size() + 1);
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (s.latency_counts[i] == 0) continue;
    EXPECT_GE(bounds[i], 1000.0);
    EXPECT_LT(bounds[i - 1], 1000.0);
    EXPECT_LT(bounds[i] / bounds[i - 1], 1.13);  // 20 buckets per decade
  }
  EXPECT_EQ(s.latency_counts.back(), 1u);
  EXPECT_EQ(s.compute_counts, s.latency_counts);  // no queueing: both histograms agree
  EXPECT_EQ(bounds.front(), 10.0);
}

TEST(VersionStatsTest, ScoresAreBinnedOnlyWhileRecordingThem) {
  auto stats = Make(10);
  const std::vector<float> scores = {0.0f, 0.05f, 0.55f, 1.0f, -0.1f, 1.5f, std::numeric_limits<float>::quiet_NaN()};
  stats->Record(Status::Ok(), 0, 10, scores.data(), static_cast<int64_t>(scores.size()));
  for (uint64_t c : stats->Snapshot().score_counts) EXPECT_EQ(c, 0u);
  stats->set_record_scores(true);
  stats->Record(Status::Ok(), 0, 10, scores.data(), static_cast<int64_t>(scores.size()));
  const std::vector<uint64_t> counts = stats->Snapshot().score_counts;
  ASSERT_EQ(counts.size(), 12u);
  EXPECT_EQ(counts[0], 1u);   // -0.1: below low
  EXPECT_EQ(counts[1], 2u);   // 0.0 and 0.05
  EXPECT_EQ(counts[6], 1u);   // 0.55
  EXPECT_EQ(counts[10], 1u);  // 1.0: the top bin holds its upper edge
  EXPECT_EQ(counts[11], 2u);  // 1.5 and NaN
}

TEST(VersionStatsTest, ServiceLatencyAddsQueueingToCompute) {
  auto stats = Make();
  stats->Record(Status::Ok(), 9000, 1000, nullptr, 0);
  const VersionStatsSnapshot s = stats->Snapshot();
  const std::vector<double>& bounds = VersionStats::LatencyBucketBounds();
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (s.latency_counts[i]) {
      EXPECT_GE(bounds[i], 10000.0);
    }
    if (s.compute_counts[i]) {
      EXPECT_LT(bounds[i], 1200.0);
    }
  }
}

TEST(VersionStatsTest, RefusesAnEmptyScoreRange) {
  std::shared_ptr<VersionStats> stats;
  EXPECT_EQ(VersionStats::Create(VersionStatsOptions{1.0, 1.0, 10}, &stats).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(VersionStats::Create(VersionStatsOptions{0.0, 1.0, 0}, &stats).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adrank
