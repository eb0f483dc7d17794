// Thread priorities on one host: the model workers run ahead of everything else the process runs.
//
// Why: a model worker's batch is the server's useful work; the transport's threads (gRPC's pollers and
// executors) parse, refuse and answer calls, which can wait a millisecond without any caller noticing.
// Where both share a core, a transport thread woken by each arriving call preempts the worker in the middle
// of its batch: two context switches per call and the batch's working set (embedding rows, activations)
// evicted from the core's caches. Measured (perf/overload_bench.py, one core, 100-candidate ctr requests at
// 1.5x saturation): ~11 % of the core in context switches, and the refused calls cost twice what a closed loop
// of refusals does. Under SCHED_BATCH (sched(7)) a woken thread does not preempt a running SCHED_OTHER one:
// it runs when the worker blocks (its batch done, nothing queued) or its time slice ends, and then handles
// every call that arrived meanwhile in one wake-up.
//
// Contract:
//   ScopedYieldingThreads  while it lives, the calling thread runs SCHED_BATCH, so every thread it creates
//                          (and those threads create) starts SCHED_BATCH; its destructor restores the calling
//                          thread's policy. Wrap the creation of a transport (grpc_init's threads, the server's
//                          pollers) in one. Best effort: where the kernel refuses, nothing changes.
//   RunAsServingThread     the calling thread runs SCHED_OTHER at its nice level, whatever it inherited: the
//                          model workers call it first.
//   RunAsBackgroundThread  SCHED_OTHER at nice 19 (~1.5 % of a core against one busy nice-0 thread, preempted
//                          by any of them that wakes): the shadow worker (thread_pool.h).
// Neither needs privileges: moving between SCHED_OTHER and SCHED_BATCH at an unchanged nice level, or raising
// the nice level, is allowed to any thread (sched(7)). Latency: a transport thread may wait for the end of the
// worker's batch or slice (~1-3 ms at most) while the worker is busy; an idle worker delays nothing.
// Thread-safety: each call changes only the calling thread.
#pragma once

namespace adrank {

class ScopedYieldingThreads {
 public:
  ScopedYieldingThreads();
  ~ScopedYieldingThreads();
  ScopedYieldingThreads(const ScopedYieldingThreads&) = delete;
  ScopedYieldingThreads& operator=(const ScopedYieldingThreads&) = delete;

  bool active() const { return previous_policy_ >= 0; }  // false: the kernel refused, nothing changed

 private:
  int previous_policy_ = -1;
};

void RunAsServingThread();
void RunAsBackgroundThread();

// The calling thread's scheduling policy (SCHED_OTHER, SCHED_BATCH, ...), -1 where unknown.
int ThisThreadsPolicy();

}  // namespace adrank
