// ServerQueues: the C++ front end's gRPC completion queues and the threads that drain them. Every service of
// the front end is on gRPC's async completion-queue API and is served here; none is a callback or sync service,
// since one of those in the server brings gRPC's own polling threads back (perf/results/
// echo-cq-2026-12-07-decision.md: 1.0 against 6.5 context switches per call, ~110 against ~205 µs of CPU).
//
// Contract:
//   - Add(builder, count) before the server is built: `count` server completion queues, each drained by one
//     thread (Start), named adrank-grpc-<i>. One per core the server is given: a second thread on a core takes
//     the poller role from the first at every call (measured: 3.5 switches per call against 1.0).
//   - An event's tag is a CqEvent; its Proceed(ok) runs on the thread of the queue it came back on, inline.
//     Everything one call does with gRPC goes through one queue (the queue its request was armed on), so a
//     call's events are handled by one thread, one at a time.
//   - Ownership of what gRPC holds a tag of: a call object (GrpcCall, UnaryCall, HealthWatch, ReflectionStream)
//     owns itself from Arm, which hands it to its queue, until its last event has come back, when it retires
//     (Retire: destroys itself) on its queue's thread. While it exists it is counted (its Ticket); Shutdown
//     waits for the count to reach 0. gRPC's CQ API needs this: a tag is a bare pointer, and only the object
//     knows when the last of its events is back.
//   - Shutdown, once the gRPC server has shut down (its waiting requests come back !ok, its calls end): waits
//     until no call object is left (a call whose answer the core has yet to give still hands it back through
//     its queue), then shuts each queue down and joins its thread. The destructor does it too. Idempotent.
//   - OnQueueThread(cq): whether the calling thread is the one that drains `cq`.
//
// Threads: started by the caller's thread and inheriting its scheduling policy (RankServer::Create starts
// them under ScopedYieldingThreads: SCHED_BATCH, thread_priority.h).
// Thread-safety: Add, Start and Shutdown from one thread (the server's owner); Ticket and OnQueueThread from any.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace adrank {

// What a completion queue's tag points to.
class CqEvent {
 public:
  virtual void Proceed(bool ok) = 0;

 protected:
  ~CqEvent() = default;
};

// A tag that calls `(owner->*kStep)(ok)`: one per kind of event a call waits for.
template <typename Owner, void (Owner::*kStep)(bool)>
class CqStep final : public CqEvent {
 public:
  explicit CqStep(Owner* owner) : owner_(owner) {}
  void Proceed(bool ok) override { (owner_->*kStep)(ok); }
  void* tag() { return static_cast<CqEvent*>(this); }

 private:
  Owner* const owner_;
};

class ServerQueues {
 public:
  ServerQueues() = default;
  ~ServerQueues();  // Shutdown()
  ServerQueues(const ServerQueues&) = delete;
  ServerQueues& operator=(const ServerQueues&) = delete;

  void Add(grpc::ServerBuilder& builder, int count);
  void Start();
  void Shutdown();

  const std::vector<std::unique_ptr<grpc::ServerCompletionQueue>>& queues() const { return queues_; }
  static bool OnQueueThread(const grpc::ServerCompletionQueue* cq);

  // Counts a call object from its construction to its destruction (a member of it, declared first).
  class Ticket {
   public:
    explicit Ticket(ServerQueues* queues);
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    ServerQueues* const queues_;
  };

  // Implementation details follow. API users need not read.
 private:
  static void Drain(grpc::ServerCompletionQueue* cq);

  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> threads_;
  bool shut_down_ = false;
  std::mutex mu_;  // guards calls_
  std::condition_variable no_calls_;
  int64_t calls_ = 0;
};

// A call object's ownership of itself (see ServerQueues' contract): Arm creates one and gives it to gRPC (its
// constructor asks for a call or starts an operation whose tag is one of its CqSteps); Retire, called by the
// object on its queue's thread once no tag of it is left with gRPC, destroys it.
template <typename Call, typename... Args>
void Arm(Args&&... args) {
  std::make_unique<Call>(std::forward<Args>(args)...).release();  // owned by its tags: see Retire
}

template <typename Call>
void Retire(Call* call) {
  std::unique_ptr<Call> owned(call);  // its last tag is back: it owns itself no more
}

}  // namespace adrank
