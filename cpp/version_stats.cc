#include "version_stats.h"

#include <algorithm>
#include <cmath>

namespace adrank {

// Never destroyed: a worker may still record an outcome while the process exits (a pool alive at exit, its static
// destructors running), and each record reads these.
const std::vector<double>& VersionStats::LatencyBucketBounds() {
  static const std::vector<double>* const bounds = [] {
    auto* b = new std::vector<double>;
    for (int i = 0; i <= 7 * 20; ++i) b->push_back(10.0 * std::pow(10.0, i / 20.0));  // 10 us .. 100 s
    return b;
  }();
  return *bounds;
}

Status VersionStats::Create(const VersionStatsOptions& options, std::shared_ptr<VersionStats>* out) {
  if (!(options.score_low < options.score_high) || !std::isfinite(options.score_low) ||
      !std::isfinite(options.score_high)) {
    return InvalidArgument("version stats: score_low must be < score_high, both finite");
  }
  if (options.score_bins < 1 || options.score_bins > 100000) {
    return InvalidArgument("version stats: score_bins must be in [1, 100000]");
  }
  *out = std::make_shared<VersionStats>(options);
  return Status::Ok();
}

VersionStats::VersionStats(const VersionStatsOptions& options) : options_(options) {
  const size_t buckets = LatencyBucketBounds().size() + 1;
  counts_.request_counts.assign(buckets, 0);
  counts_.queue_counts.assign(buckets, 0);
  counts_.compute_counts.assign(buckets, 0);
  counts_.latency_counts.assign(buckets, 0);
  counts_.score_counts.assign(static_cast<size_t>(options.score_bins) + 2, 0);
}

bool VersionStats::Dropped(StatusCode code) {
  return code == StatusCode::kDeadlineExceeded || code == StatusCode::kResourceExhausted ||
         code == StatusCode::kCancelled || code == StatusCode::kUnavailable;
}

size_t VersionStats::LatencyBucket(int64_t us) {
  const std::vector<double>& bounds = LatencyBucketBounds();
  return static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), static_cast<double>(us)) - bounds.begin());
}

void VersionStats::Record(const RequestRecord& r) {
  if (!enabled()) return;
  const auto code_index = static_cast<size_t>(r.code);
  const size_t code = code_index < kStatusCodeCount ? code_index : 2;  // UNKNOWN
  if (r.code != StatusCode::kOk) {
    std::lock_guard<std::mutex> lock(mu_);
    counts_.codes[code]++;
    (Dropped(r.code) ? counts_.dropped : counts_.failed)++;
    return;
  }
  const size_t request_bucket = LatencyBucket(r.request_us);
  const size_t queue_bucket = LatencyBucket(r.queue_us);
  const size_t compute_bucket = LatencyBucket(r.compute_us);
  const size_t latency_bucket = LatencyBucket(r.queue_us + r.compute_us);
  const bool with_scores = r.scores != nullptr && record_scores();
  std::lock_guard<std::mutex> lock(mu_);
  counts_.codes[code]++;
  counts_.ok++;
  counts_.candidates += static_cast<uint64_t>(std::max<int64_t>(r.candidates, 0));
  counts_.request_counts[request_bucket]++;
  counts_.queue_counts[queue_bucket]++;
  counts_.compute_counts[compute_bucket]++;
  counts_.latency_counts[latency_bucket]++;
  counts_.request_us_sum += static_cast<double>(r.request_us);
  counts_.queue_us_sum += static_cast<double>(r.queue_us);
  counts_.compute_us_sum += static_cast<double>(r.compute_us);
  if (with_scores) BinScoresLocked(r.scores, r.candidates);
}

void VersionStats::BinScoresLocked(const float* scores, int64_t n) {
  const double scale = options_.score_bins / (options_.score_high - options_.score_low);
  const auto last = static_cast<int64_t>(options_.score_bins) + 1;
  for (int64_t i = 0; i < n; ++i) {
    const double x = scores[i];
    int64_t bin = last;  // above high, and NaN
    if (x < options_.score_low) {
      bin = 0;
    } else if (x <= options_.score_high) {
      bin = std::min<int64_t>(static_cast<int64_t>((x - options_.score_low) * scale), options_.score_bins - 1) + 1;
    }
    counts_.score_counts[static_cast<size_t>(bin)]++;
  }
}

void VersionStats::RecordShadowShed() {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mu_);
  counts_.dropped++;
  counts_.shadow_shed++;
}

VersionStatsSnapshot VersionStats::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

}  // namespace adrank
