// Outcome<T>: a value that one thread sets once and others wait for — a request's result as the Python
// binding hands it to its caller (bindings.cc PendingRequest), a Rank call's answer (rank_call.h
// StartRank).
//
// Contract: the first Set wins and wakes every waiter; later ones are refused (false) and change
// nothing. value() may be read, and moved from, once done() or a wait has returned true: after that
// nothing writes it again. Waiting blocks on a condition variable, never polls. Once a wait has returned
// true, the Outcome may be destroyed: Set touches it no more.
//
// Thread-safety: every method may be called from any thread. Latency: Set and done() take one short
// mutex; Set wakes the waiters while holding it (they run once it is released).
#pragma once

#include <condition_variable>
#include <mutex>
#include <utility>

#include "clock.h"

namespace adrank {

template <typename T>
class Outcome {
 public:
  bool Set(T value) {
    // Notified under the lock: a waiter returns only after Set has let go of the Outcome, so whoever
    // waited may destroy it at once.
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    value_ = std::move(value);
    done_ = true;
    cv_.notify_all();
    return true;
  }

  bool done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  void Wait() const {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

  // True once set; false if `timeout` passed first.
  bool WaitFor(Duration timeout) const {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return done_; });
  }

  // Only once done (see the contract above).
  T& value() { return value_; }
  const T& value() const { return value_; }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  T value_{};
};

}  // namespace adrank
