// ThreadPool: the fixed set of worker threads shared by every model, and the scheduler that picks
// which model's batch runs next.
//
// Each model is registered as a ModelQueue: its batcher, its backend, and its number of instances
// (how many of its batches may run at once; each running batch gets an instance index in
// [0, instances), so a backend can keep one session or CUDA stream per instance). Any free worker
// may run any model's instance: binding instances to fixed workers would idle a worker whenever its
// model has nothing queued.
//
// Scheduling. A worker looks for models with a free instance whose batcher says a batch is due
// (batcher.h: full, idle model, delay elapsed, deadline pressure). Among those it picks by stride
// scheduling: each dispatch advances the model's pass by 1/instances and the lowest pass goes next,
// so with several models saturated their batches interleave in proportion to their instances, and a
// model returning from idle gets no burst of saved-up credit. With nothing due, a worker sleeps
// until the earliest moment a batch becomes due or a submission wakes it.
//
// Background models (a rollout's shadow version, SetBackground) run on a worker of their own, never on
// the num_workers workers, at the lowest CPU priority (nice 19): the kernel gives their batches only the
// CPU time the serving threads leave and preempts them when one wakes, so mirrored traffic takes no
// worker from, and (measured: perf/rollout_bench.py) adds little latency to, the traffic it mirrors.
//
// Running a batch: lease pooled buffers, gather, call the backend (no scheduler lock held), scatter,
// return the buffers, fire the completions, feed the execution time to the batcher's predictor.
//
// Options (defaults and why):
//   num_workers = 0     0 means one per core this process may run on (its CPU affinity, which
//                       `taskset` narrows; hardware_concurrency() ignores it): every allowed core
//                       busy, no two workers time-slicing one core.
//   clock = nullptr     SteadyClock; tests inject a FakeClock.
//   memory_pool         Where batch buffers come from; nullptr creates one with default options.
//
// Shutdown (also run by the destructor): new submissions are refused with UNAVAILABLE; everything
// already queued is run (flushed without waiting for the delay) and the batches in flight finish;
// then the workers exit. Nothing accepted is lost. RemoveModel does the same for one model.
//
// Thread-safety: every method may be called from any thread. A ModelQueue may outlive the pool; its
// Submit then returns UNAVAILABLE.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "batch.h"
#include "batcher.h"
#include "clock.h"
#include "memory_pool.h"
#include "status.h"

namespace adrank {

struct ThreadPoolOptions {
  int num_workers = 0;
  const Clock* clock = nullptr;
  std::shared_ptr<MemoryPool> memory_pool;
};

struct ModelOptions {
  std::string name;
  ModelSignature signature;
  BatcherOptions batching;
  int instances = 1;
  Backend backend;
};

class ThreadPool;

// The cores this process may run on (its CPU affinity), at least 1.
int AllowedCores();

class ModelQueue {
 public:
  // Submits to the model's batcher and wakes a worker. Errors are prefixed with the model's name.
  Status Submit(Request request, RequestHandle* handle = nullptr);
  // Cancels at the batcher (see Batcher::Cancel) and wakes a RemoveModel waiting for the queue to
  // drain: a cancelled request leaves no batch behind whose end would wake it.
  bool Cancel(const RequestHandle& handle);

  const std::string& name() const { return name_; }
  int instances() const { return instances_; }
  // Background: batches run only when no foreground model has one due (see ThreadPool).
  void SetBackground(bool background);
  bool background() const;
  BatcherStats stats() const { return batcher_->stats(); }
  const Batcher& batcher() const { return *batcher_; }

  // Implementation details follow. API users need not read.
  struct Wakeup {
    std::mutex mu;                          // also the scheduler's lock
    std::condition_variable cv;             // the serving workers wait here
    std::condition_variable background_cv;  // the background worker waits here
    void NotifyAll() {
      cv.notify_all();
      background_cv.notify_all();
    }
    // A model's queue or running batches shrank (a batch ended, a request was cancelled or
    // expired): a waiting RemoveModel re-checks.
    std::condition_variable drained;
  };
  ModelQueue(ModelOptions options, std::unique_ptr<Batcher> batcher, std::shared_ptr<Wakeup> wakeup);

 private:
  friend class ThreadPool;

  const std::string name_;
  const int instances_;
  const Backend backend_;
  const std::unique_ptr<Batcher> batcher_;
  const std::shared_ptr<Wakeup> wakeup_;

  // Guarded by wakeup_->mu.
  int busy_ = 0;
  std::vector<bool> instance_busy_;
  double pass_ = 0;
  bool removing_ = false;
  bool background_ = false;
};

class ThreadPool {
 public:
  static Status Create(const ThreadPoolOptions& options, std::unique_ptr<ThreadPool>* out);
  ~ThreadPool();

  Status AddModel(ModelOptions options, std::shared_ptr<ModelQueue>* out);
  // Refuses new submissions to the model, runs what is queued for it, waits for its batches in
  // flight, then forgets it. Blocks; the caller must not be a worker (not from a backend).
  Status RemoveModel(const std::shared_ptr<ModelQueue>& model);
  // Idempotent; blocks until the workers have exited.
  void Shutdown();

  MemoryPool* memory_pool() const { return memory_pool_.get(); }
  int num_workers() const { return static_cast<int>(workers_.size()); }

  // Implementation details follow. API users need not read.
 private:
  struct Dispatch {
    std::shared_ptr<ModelQueue> model;
    int instance = -1;
  };

  ThreadPool(const ThreadPoolOptions& options, std::shared_ptr<MemoryPool> memory_pool);
  void WorkerLoop(bool background);
  Dispatch ReserveLocked(TimePoint now, TimePoint* wake, bool background);
  void ReleaseLocked(const Dispatch& dispatch);
  void RunBatch(const Dispatch& dispatch, Batch* batch);
  bool AnyQueuedLocked() const;
  // Expires overdue requests of every model (releasing the lock meanwhile); true if it did any. The
  // references it takes are dropped before it re-locks: a model removed meanwhile may be released
  // here, and releasing a backend (a Python callable: the GIL) must not happen under the lock.
  bool ExpireOverdueUnlocked(std::unique_lock<std::mutex>& lock, TimePoint now, TimePoint* wake);

  const Clock* const clock_;
  const std::shared_ptr<MemoryPool> memory_pool_;
  const std::shared_ptr<ModelQueue::Wakeup> wakeup_ = std::make_shared<ModelQueue::Wakeup>();

  // Guarded by wakeup_->mu.
  std::vector<std::shared_ptr<ModelQueue>> models_;
  double virtual_pass_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  std::thread background_worker_;  // runs the background models only
  std::mutex shutdown_mu_;         // serialises Shutdown callers around the join
};

}  // namespace adrank
