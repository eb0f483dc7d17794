#include "rank_admission.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

namespace adrank {

Status RankAdmission::Validate(const RankAdmissionOptions& options) {
  if (options.max_in_flight_bytes < 1) return InvalidArgument("max_in_flight_bytes must be >= 1");
  return Status::Ok();
}

RankAdmission::RankAdmission(std::shared_ptr<const ModelRegistry> registry, const RankAdmissionOptions& options)
    : registry_(std::move(registry)), max_in_flight_bytes_(options.max_in_flight_bytes) {}

Status RankAdmission::Admit(int64_t bytes) {
  last_call_ns_.store(SteadyNanos(), std::memory_order_seq_cst);
  // Counted before the state is read, so that a drain that sees no call in flight never misses one that
  // is about to start.
  in_flight_.fetch_add(1, std::memory_order_seq_cst);
  Status refused;
  const State state = state_.load(std::memory_order_seq_cst);
  const int64_t largest = registry_->max_request_bytes();
  if (state != State::kServing) {
    refused = Unavailable(std::string("the server is ") +
                          (state == State::kLoading ? "loading its models" : "draining (shutting down)"));
  } else if (largest > 0 && bytes > largest) {  // with no model served, routing says so (NOT_FOUND)
    refused = ResourceExhausted("request: " + std::to_string(bytes) +
                                " bytes exceed the largest request the served models take (" + std::to_string(largest) +
                                " bytes: every model at its max_candidates)");
  } else if (!ReserveBytes(bytes)) {
    refused = ResourceExhausted("request: " + std::to_string(bytes) +
                                " bytes would pass the server's bound on request bytes in flight (" +
                                std::to_string(max_in_flight_bytes_) + ", max_in_flight_bytes); retry shortly");
  }
  if (!refused.ok()) CallDone();
  return refused;
}

void RankAdmission::CallDone() {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_.fetch_sub(1, std::memory_order_acq_rel);
  done_.notify_all();
}

bool RankAdmission::ReserveBytes(int64_t bytes) {
  const int64_t before = in_flight_bytes_.fetch_add(bytes, std::memory_order_acq_rel);
  if (before + bytes <= max_in_flight_bytes_) return true;
  in_flight_bytes_.fetch_sub(bytes, std::memory_order_acq_rel);
  return false;
}

void RankAdmission::ReleaseBytes(int64_t bytes) {
  in_flight_bytes_.fetch_sub(bytes, std::memory_order_acq_rel);
  released_bytes_.fetch_add(static_cast<uint64_t>(bytes), std::memory_order_relaxed);
}

void RankAdmission::Answered(StatusCode code) {
  const auto index = static_cast<size_t>(code);
  calls_by_code_[index < kStatusCodeCount ? index : 2].fetch_add(1, std::memory_order_relaxed);  // 2: UNKNOWN
}

std::array<uint64_t, kStatusCodeCount> RankAdmission::CallCounts() const {
  std::array<uint64_t, kStatusCodeCount> counts{};
  for (size_t i = 0; i < counts.size(); ++i) counts[i] = calls_by_code_[i].load(std::memory_order_relaxed);
  return counts;
}

int64_t RankAdmission::QuietForNanos() const { return SteadyNanos() - last_call_ns_.load(std::memory_order_acquire); }

bool RankAdmission::WaitDrained(Duration quiet, Duration grace) {
  const auto give_up = std::chrono::steady_clock::now() + grace;
  const int64_t quiet_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(quiet).count();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (std::chrono::steady_clock::now() >= give_up) return in_flight() == 0 && QuietForNanos() >= quiet_ns;
    if (in_flight() > 0) {
      // CallDone notifies under mu_: no wake-up is missed, and nothing to poll meanwhile.
      done_.wait_until(lock, give_up);
      continue;
    }
    const int64_t quiet_for = QuietForNanos();
    if (quiet_for >= quiet_ns) return true;
    done_.wait_until(
        lock, std::min(give_up, std::chrono::steady_clock::now() + std::chrono::nanoseconds(quiet_ns - quiet_for)));
  }
}

}  // namespace adrank
