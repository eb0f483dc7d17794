// VersionStats: what one served model version did — its requests by outcome, a histogram of its service
// latency and (when asked) a histogram of the scores it returned — for the rollout guardrails, which
// compare a canary or shadow version with the stable one over a sliding window.
//
// Counters and histograms are cumulative from creation; a reader takes two snapshots and subtracts
// them, so a window of any length costs nothing here and histograms of several replicas add up.
//
// Outcomes: OK; failed (the model could not answer: INTERNAL, INVALID_ARGUMENT at its queue, …);
// dropped (not answered for lack of time or room — DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED,
// UNAVAILABLE — and a shadow request shed before it was queued). The guardrails' error rate counts
// failures only: dropping is the load's doing, and latency has its own guardrail.
//
// Two latency histograms: service latency (queue + compute: what a caller waits for in the model) and
// compute alone — a shadow's queueing is deferred by design, so a shadow is compared on compute.
//
// Latency buckets: 20 per decade (each bound 1.122x the previous) from 10 us to 100 s, plus one below
// and one above: a p99 read from them is within 12 % of the true one, finer than any ratio a guardrail
// is set to. Score buckets: `score_bins` equal bins over [score_low, score_high] plus one below and one
// above; the population stability index regroups them into deciles of the stable version's scores.
//
// Options (defaults and why):
//   score_low = 0, score_high = 1   A click probability's range; a model declares its own (config range).
//   score_bins = 1000               Fine enough to regroup into deciles of any smooth distribution.
//
// Cost: Record takes one uncontended mutex and, with scores enabled, bins N floats (~1 ns each); scores
// are recorded only while a rollout compares this version (`set_record_scores`).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "status.h"

namespace adrank {

struct VersionStatsOptions {
  double score_low = 0.0;
  double score_high = 1.0;
  int score_bins = 1000;
};

struct VersionStatsSnapshot {
  uint64_t ok = 0;
  uint64_t failed = 0;
  uint64_t dropped = 0;
  std::vector<uint64_t> latency_counts;  // LatencyBucketBounds().size() + 1: the last is above every bound
  std::vector<uint64_t> compute_counts;  // the same buckets, compute alone
  std::vector<uint64_t> score_counts;    // score_bins + 2: below low, the bins, above high (and NaN)
};

class VersionStats {
 public:
  static Status Create(const VersionStatsOptions& options, std::shared_ptr<VersionStats>* out);

  // One request's outcome. Latencies count for OK only; `scores` (N floats) when recording them.
  void Record(const Status& status, int64_t queue_us, int64_t compute_us, const float* scores, int64_t n);
  // A request not even queued (a shadow shed for lack of room): dropped.
  void RecordDropped();

  void set_record_scores(bool on) { record_scores_.store(on, std::memory_order_relaxed); }
  bool record_scores() const { return record_scores_.load(std::memory_order_relaxed); }

  VersionStatsSnapshot Snapshot() const;
  const VersionStatsOptions& options() const { return options_; }

  // Upper bounds (us) of the latency buckets, ascending; shared by every VersionStats.
  static const std::vector<double>& LatencyBucketBounds();

  // Implementation details follow. API users need not read.
  explicit VersionStats(const VersionStatsOptions& options);

 private:
  static bool Dropped(StatusCode code);
  static size_t LatencyBucket(int64_t us);

  const VersionStatsOptions options_;
  std::atomic<bool> record_scores_{false};
  mutable std::mutex mu_;
  VersionStatsSnapshot counts_;
};

}  // namespace adrank
