#include "version_stats.h"

#include <algorithm>
#include <cmath>

namespace adrank {

const std::vector<double>& VersionStats::LatencyBucketBounds() {
  static const std::vector<double> bounds = [] {
    std::vector<double> b;
    for (int i = 0; i <= 7 * 20; ++i) b.push_back(10.0 * std::pow(10.0, i / 20.0));  // 10 us .. 100 s
    return b;
  }();
  return bounds;
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
  counts_.latency_counts.assign(LatencyBucketBounds().size() + 1, 0);
  counts_.compute_counts.assign(LatencyBucketBounds().size() + 1, 0);
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

void VersionStats::Record(const Status& status, int64_t queue_us, int64_t compute_us, const float* scores, int64_t n) {
  const size_t latency_bucket = LatencyBucket(queue_us + compute_us);
  const size_t compute_bucket = LatencyBucket(compute_us);
  const bool with_scores = status.ok() && scores != nullptr && record_scores();
  const double scale = options_.score_bins / (options_.score_high - options_.score_low);
  std::lock_guard<std::mutex> lock(mu_);
  if (!status.ok()) {
    (Dropped(status.code()) ? counts_.dropped : counts_.failed)++;
    return;
  }
  counts_.ok++;
  counts_.latency_counts[latency_bucket]++;
  counts_.compute_counts[compute_bucket]++;
  if (!with_scores) return;
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

void VersionStats::RecordDropped() {
  std::lock_guard<std::mutex> lock(mu_);
  counts_.dropped++;
}

VersionStatsSnapshot VersionStats::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

}  // namespace adrank
