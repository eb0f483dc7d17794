// RankAdmission: which Rank calls a server takes, written once for every transport (the C++ gRPC front
// end and the Python one): the server's state, the calls in flight, the request bytes they hold, the
// drain, and the count of answers by status code.
//
// A call, by its declared size and before a byte of it is parsed (Admit):
//   - while the server loads its models or drains, UNAVAILABLE ("the server is loading its models" /
//     "draining (shutting down)"): a client may take it to another replica;
//   - larger than the registry's max_request_bytes (the largest request the served models take
//     together, model_registry.h), RESOURCE_EXHAUSTED naming both sizes;
//   - beyond max_in_flight_bytes with the calls not yet released, RESOURCE_EXHAUSTED, retryable;
//   - else admitted: in flight until CallDone (its answer is ready), its bytes held until ReleaseBytes
//     (the transport is done with it: reply sent, or the call cancelled). A client that stops reading
//     keeps its own calls' bytes and no more.
// Every answer, admitted or refused, is counted once by the transport (Answered); a call that a client's
// gRPC retry policy sent again (its `grpc-previous-rpc-attempts` metadata says so) or its hedging sent as
// another copy (`x-adrank-previous-attempts`) is counted too (Retried), so that a fleet's retries add up
// across its replicas.
//
// Options (defaults and why):
//   max_in_flight_bytes = 256 MiB  64 of the largest bundled requests (4 MiB) at once: far more work than
//                                  the models' queues hold within any caller's deadline, and a bound on
//                                  what calls can pin (a parsed request costs about its size again).
//
// States: loading until SetState(kServing); serving; draining (final, by the transport's choice).
//
// Latency: Admit, CallDone, ReleaseBytes and Answered are a few atomic operations (CallDone also takes a
// mutex, only to wake a drain). Thread-safety: every method may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "clock.h"
#include "model_registry.h"
#include "status.h"
#include "version_stats.h"

namespace adrank {

struct RankAdmissionOptions {
  int64_t max_in_flight_bytes = int64_t{256} << 20;
};

class RankAdmission {
 public:
  enum class State { kLoading, kServing, kDraining };

  // INVALID_ARGUMENT for an option out of range (naming it).
  static Status Validate(const RankAdmissionOptions& options);
  RankAdmission(std::shared_ptr<const ModelRegistry> registry, const RankAdmissionOptions& options);

  // OK: the call is admitted (in flight, its bytes reserved). Otherwise nothing is held.
  Status Admit(int64_t bytes);
  void CallDone();
  void ReleaseBytes(int64_t bytes);
  void Answered(StatusCode code);
  void Retried() { retried_calls_.fetch_add(1, std::memory_order_relaxed); }

  void SetState(State state) { state_.store(state, std::memory_order_seq_cst); }
  State state() const { return state_.load(std::memory_order_seq_cst); }

  // Blocks until no call is in flight and none has arrived for `quiet`, or `grace` has passed; true if it
  // drained. A call that reaches the transport just as the server stops would be cancelled unseen, so the
  // port closes only after callers have gone quiet.
  bool WaitDrained(Duration quiet, Duration grace);

  int64_t in_flight() const { return in_flight_.load(std::memory_order_acquire); }
  int64_t in_flight_bytes() const { return in_flight_bytes_.load(std::memory_order_acquire); }
  // All calls together: a memory trimmer's cue (python/adrank/server/memory_release.py).
  uint64_t released_bytes() const { return released_bytes_.load(std::memory_order_relaxed); }
  int64_t max_in_flight_bytes() const { return max_in_flight_bytes_; }
  std::array<uint64_t, kStatusCodeCount> CallCounts() const;
  // Calls that were a client's retry of an attempt that failed (on this replica or another).
  uint64_t retried_calls() const { return retried_calls_.load(std::memory_order_relaxed); }

  // Implementation details follow. API users need not read.
 private:
  bool ReserveBytes(int64_t bytes);
  int64_t QuietForNanos() const;

  const std::shared_ptr<const ModelRegistry> registry_;
  const int64_t max_in_flight_bytes_;
  std::atomic<State> state_{State::kLoading};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> last_call_ns_{0};
  std::atomic<int64_t> in_flight_bytes_{0};
  std::atomic<uint64_t> released_bytes_{0};
  std::mutex mu_;  // only for done_: a drain never misses the last CallDone
  std::condition_variable done_;
  std::array<std::atomic<uint64_t>, kStatusCodeCount> calls_by_code_{};
  std::atomic<uint64_t> retried_calls_{0};
};

}  // namespace adrank
