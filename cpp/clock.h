// Clock: the one source of time for the batcher and the scheduler, injectable so that every timing
// behaviour (queue delay, deadlines, execution-time prediction) is tested without sleeping.
//
// Contract: Now() is monotonic and thread-safe. SteadyClock reads std::chrono::steady_clock
// (a vDSO call, ~20 ns). FakeClock only moves when a test advances it.
#pragma once

#include <atomic>
#include <chrono>

namespace adrank {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::time_point<std::chrono::steady_clock, Duration>;

// "No deadline": later than any time the process will see.
constexpr TimePoint kNoDeadline = TimePoint::max();

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
};

class SteadyClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  // One shared instance: it has no state, so sharing it is safe and saves every owner a member.
  static SteadyClock* Get();
};

class FakeClock final : public Clock {
 public:
  TimePoint Now() const override { return TimePoint(Duration(now_ns_.load())); }
  void Advance(Duration d) { now_ns_.fetch_add(d.count()); }
  void AdvanceMicros(int64_t us) { Advance(std::chrono::microseconds(us)); }

 private:
  // Starts well away from zero so that "now - delay" never underflows in tests.
  std::atomic<int64_t> now_ns_{int64_t{1000000000}};
};

inline int64_t ToMicros(Duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

// The steady clock in nanoseconds, for the front end's own stamps (a call's arrival, its server time):
// wall durations a fake clock must not bend.
inline int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace adrank
