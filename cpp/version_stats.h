// VersionStats: what one served model version did — its requests by final status code, the candidates
// it scored, histograms of its latencies, and (when asked) a histogram of the scores it returned — for
// the Prometheus metrics and the dashboard (python/adrank/metrics/), and for the rollout guardrails,
// which compare a canary or shadow version with the stable one over a sliding window.
//
// Counters and histograms are cumulative from creation; a reader takes two snapshots and subtracts
// them, so a window of any length costs nothing here and histograms of several replicas add up (they
// are exported as Prometheus histograms, never as summaries).
//
// Outcomes: every request is counted under its final status code (gRPC's numbering). The guardrails
// group them: OK; failed (the model could not answer: INTERNAL, INVALID_ARGUMENT at its queue, …);
// dropped (not answered for lack of time or room — DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED,
// UNAVAILABLE — and a shadow request shed before it was queued, counted apart as `shadow_shed` and
// under no code: it was never a caller's request). The guardrails' error rate counts failures only:
// dropping is the load's doing, and latency has its own guardrail.
//
// Latency histograms, of OK requests: request (the call's arrival at the front end until this model's
// part completed: what the server adds to a caller's wait for this model), queue (in the batcher),
// compute (the batch's execution), and service = queue + compute (the canary guardrail's measure;
// a shadow's queueing is deferred by design, so a shadow is compared on compute).
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
// Switches: `set_enabled(false)` makes Record a no-op (a server started without metrics, for versions
// no rollout compares); scores are binned only while a rollout compares this version
// (`set_record_scores`).
//
// Cost: Record finds four buckets (binary searches over 141 bounds) outside the lock, then takes one
// uncontended mutex for a few increments (~100 ns in all); with scores enabled it bins N floats
// (~1 ns each).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <array>
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

// gRPC's status codes are 0..16; a code beyond them is counted as UNKNOWN (2).
constexpr size_t kStatusCodeCount = 17;

// One request's outcome at one model version.
struct RequestRecord {
  StatusCode code = StatusCode::kOk;
  int64_t request_us = 0;  // the call's arrival at the front end until this part completed
  int64_t queue_us = 0;
  int64_t compute_us = 0;
  int64_t candidates = 0;         // N
  const float* scores = nullptr;  // N scores of an OK request, or null
};

struct VersionStatsSnapshot {
  uint64_t ok = 0;
  uint64_t failed = 0;
  uint64_t dropped = 0;  // including shadow_shed
  uint64_t shadow_shed = 0;
  std::array<uint64_t, kStatusCodeCount> codes{};  // requests by final status code
  uint64_t candidates = 0;                         // rows of OK requests
  // Histograms: LatencyBucketBounds().size() + 1 counts, the last above every bound; sums in us.
  std::vector<uint64_t> request_counts;
  std::vector<uint64_t> queue_counts;
  std::vector<uint64_t> compute_counts;
  std::vector<uint64_t> latency_counts;  // service: queue + compute
  double request_us_sum = 0;
  double queue_us_sum = 0;
  double compute_us_sum = 0;
  std::vector<uint64_t> score_counts;  // score_bins + 2: below low, the bins, above high (and NaN)
};

class VersionStats {
 public:
  static Status Create(const VersionStatsOptions& options, std::shared_ptr<VersionStats>* out);

  // One request's outcome. Latencies and candidates count for OK only; scores when recording them.
  void Record(const RequestRecord& record);
  // A mirror not even queued (a shadow shed for lack of room): dropped.
  void RecordShadowShed();

  void set_enabled(bool on) { enabled_.store(on, std::memory_order_relaxed); }
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }
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
  void BinScoresLocked(const float* scores, int64_t n);

  const VersionStatsOptions options_;
  std::atomic<bool> enabled_{true};
  std::atomic<bool> record_scores_{false};
  mutable std::mutex mu_;
  VersionStatsSnapshot counts_;
};

}  // namespace adrank
