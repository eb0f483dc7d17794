// EchoWorker: the echo servers' stand-in for adrank's batch worker (their `--reply worker` modes): one thread that
// takes calls off a queue in arrival order and hands each to `reply`, outside its lock.
//
// Contract: `reply` runs on the worker's thread (named "echo-worker", so that perf's per-thread counts tell it
// apart), once per submitted call, in submission order. The destructor lets the worker finish every call already
// queued, then joins it. Thread-safety: Submit from any thread.
#pragma once

#include <pthread.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

template <typename Call>
class EchoWorker {
 public:
  explicit EchoWorker(std::function<void(Call*)> reply) : reply_(std::move(reply)), thread_([this] { Run(); }) {}
  ~EchoWorker() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_one();
    thread_.join();
  }
  EchoWorker(const EchoWorker&) = delete;
  EchoWorker& operator=(const EchoWorker&) = delete;

  void Submit(Call* call) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(call);
    }
    ready_.notify_one();
  }

 private:
  void Run() {
    pthread_setname_np(pthread_self(), "echo-worker");
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      Call* call = queue_.front();
      queue_.pop_front();
      lock.unlock();
      reply_(call);
      lock.lock();
    }
  }

  const std::function<void(Call*)> reply_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Call*> queue_;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the rest is built
};
