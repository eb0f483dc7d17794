// CompletionQueue: hands finished requests from the core's worker threads to an event loop without
// taking the Python GIL on the worker.
//
// A worker that completes a request pushes the request's token and writes to an eventfd; the event
// loop (asyncio's add_reader on fd()) wakes, calls Drain() and resolves its futures. One eventfd
// write per wake-up, not per token: a burst of completions costs the loop one wake.
//
// Contract: Push is wait-free for the caller apart from one short mutex; Drain returns every token
// pushed before it, in push order, and resets the fd's readiness. Thread-safe. The fd is
// non-blocking and close-on-exec, closed by the destructor.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "status.h"

namespace adrank {

class CompletionQueue {
 public:
  CompletionQueue();
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  // OK unless the eventfd could not be created (then fd() is -1 and Push/Drain still work,
  // for callers that poll).
  const Status& status() const { return status_; }
  int fd() const { return fd_; }

  void Push(uint64_t token);
  std::vector<uint64_t> Drain();

 private:
  Status status_;
  int fd_ = -1;
  std::mutex mu_;
  std::vector<uint64_t> tokens_;
  bool signalled_ = false;  // an eventfd write is pending since the last Drain
};

}  // namespace adrank
