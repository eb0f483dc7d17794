#include "version_stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
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

RequestRecord Ok(int64_t queue_us, int64_t compute_us, int64_t request_us = 0, int64_t candidates = 1) {
  RequestRecord r;
  r.queue_us = queue_us;
  r.compute_us = compute_us;
  r.request_us = request_us;
  r.candidates = candidates;
  return r;
}

// The bucket index a histogram's only count is in.
size_t OnlyBucket(const std::vector<uint64_t>& counts) {
  size_t found = counts.size();
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    EXPECT_EQ(found, counts.size()) << "more than one bucket counted";
    found = i;
  }
  return found;
}

// A worker may record an outcome while the process exits, after the static destructors have begun (a pool still
// running at exit: the Python server's, the fuzz targets'). The child process below registers an exit handler
// before anything reads the latency buckets, so that it runs after the destructors of statics made later, and
// records from there; a bucket table destroyed at exit is ASan's heap-use-after-free (make test-asan).
std::shared_ptr<VersionStats>* exiting_stats = nullptr;  // reachable: never a leak

void RecordAtExit() {
  (*exiting_stats)->Record(Ok(100, 200, 400));
  if ((*exiting_stats)->Snapshot().ok != 2) std::_Exit(3);
}

void RecordWhileTheProcessExits() {
  std::atexit(RecordAtExit);
  exiting_stats = new std::shared_ptr<VersionStats>(Make());  // the first to read the buckets
  (*exiting_stats)->Record(Ok(100, 200, 400));
  std::exit(0);
}

TEST(VersionStatsTest, RecordsWhileTheProcessExits) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";  // a fresh process: the buckets not yet read
  EXPECT_EXIT(RecordWhileTheProcessExits(), ::testing::ExitedWithCode(0), "");
}

TEST(VersionStatsTest, CountsOutcomesApart) {
  auto stats = Make();
  stats->Record(Ok(100, 400, 600, 50));
  stats->Record(RequestRecord{StatusCode::kInternal});
  stats->Record(RequestRecord{StatusCode::kInvalidArgument});
  stats->Record(RequestRecord{StatusCode::kDeadlineExceeded});
  stats->Record(RequestRecord{StatusCode::kResourceExhausted});
  stats->Record(RequestRecord{static_cast<StatusCode>(99)});  // not a gRPC code: UNKNOWN
  stats->RecordShadowShed();
  const VersionStatsSnapshot s = stats->Snapshot();
  EXPECT_EQ(s.ok, 1u);
  EXPECT_EQ(s.failed, 3u);
  EXPECT_EQ(s.dropped, 3u);
  EXPECT_EQ(s.shadow_shed, 1u);
  EXPECT_EQ(s.codes[0], 1u);
  EXPECT_EQ(s.codes[2], 1u);
  EXPECT_EQ(s.codes[static_cast<size_t>(StatusCode::kInternal)], 1u);
  EXPECT_EQ(s.codes[static_cast<size_t>(StatusCode::kInvalidArgument)], 1u);
  EXPECT_EQ(s.codes[static_cast<size_t>(StatusCode::kDeadlineExceeded)], 1u);
  EXPECT_EQ(s.codes[static_cast<size_t>(StatusCode::kResourceExhausted)], 1u);
  uint64_t by_code = 0;
  for (uint64_t c : s.codes) by_code += c;
  EXPECT_EQ(by_code, s.ok + s.failed + s.dropped - s.shadow_shed);  // a shed mirror has no code
  EXPECT_EQ(s.candidates, 50u);                                     // OK requests only
  EXPECT_EQ(s.request_us_sum, 600.0);
  EXPECT_EQ(s.queue_us_sum, 100.0);
  EXPECT_EQ(s.compute_us_sum, 400.0);
}

TEST(VersionStatsTest, DisabledRecordsNothing) {
  auto stats = Make();
  stats->set_enabled(false);
  stats->Record(Ok(1, 2, 3));
  stats->Record(RequestRecord{StatusCode::kInternal});
  stats->RecordShadowShed();
  const VersionStatsSnapshot s = stats->Snapshot();
  EXPECT_EQ(s.ok + s.failed + s.dropped, 0u);
  stats->set_enabled(true);
  stats->Record(Ok(1, 2, 3));
  EXPECT_EQ(stats->Snapshot().ok, 1u);
}

TEST(VersionStatsTest, EachPhaseHasItsOwnHistogram) {
  auto stats = Make();
  stats->Record(Ok(9000, 1000, 12000));
  const VersionStatsSnapshot s = stats->Snapshot();
  const std::vector<double>& bounds = VersionStats::LatencyBucketBounds();
  const auto holds = [&](size_t bucket, double us) {
    EXPECT_GE(bounds[bucket], us);
    EXPECT_LT(bounds[bucket - 1], us);
  };
  holds(OnlyBucket(s.request_counts), 12000);
  holds(OnlyBucket(s.queue_counts), 9000);
  holds(OnlyBucket(s.compute_counts), 1000);
  holds(OnlyBucket(s.latency_counts), 10000);  // service: queue + compute
}

TEST(VersionStatsTest, LatencyLandsInTheFirstBucketWhoseBoundHoldsIt) {
  auto stats = Make();
  stats->Record(Ok(0, 1000));
  stats->Record(Ok(0, 1'000'000'000));  // beyond every bound
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
  RequestRecord record = Ok(0, 10, 10, static_cast<int64_t>(scores.size()));
  record.scores = scores.data();
  stats->Record(record);
  for (uint64_t c : stats->Snapshot().score_counts) EXPECT_EQ(c, 0u);
  stats->set_record_scores(true);
  stats->Record(record);
  const std::vector<uint64_t> counts = stats->Snapshot().score_counts;
  ASSERT_EQ(counts.size(), 12u);
  EXPECT_EQ(counts[0], 1u);   // -0.1: below low
  EXPECT_EQ(counts[1], 2u);   // 0.0 and 0.05
  EXPECT_EQ(counts[6], 1u);   // 0.55
  EXPECT_EQ(counts[10], 1u);  // 1.0: the top bin holds its upper edge
  EXPECT_EQ(counts[11], 2u);  // 1.5 and NaN
}

TEST(VersionStatsTest, RefusesAnEmptyScoreRange) {
  std::shared_ptr<VersionStats> stats;
  EXPECT_EQ(VersionStats::Create(VersionStatsOptions{1.0, 1.0, 10}, &stats).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(VersionStats::Create(VersionStatsOptions{0.0, 1.0, 0}, &stats).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adrank
