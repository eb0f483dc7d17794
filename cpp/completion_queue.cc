#include "completion_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace adrank {

CompletionQueue::CompletionQueue() {
  fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd_ < 0) status_ = Internal(std::string("eventfd failed: ") + std::strerror(errno));
}

CompletionQueue::~CompletionQueue() {
  if (fd_ >= 0) close(fd_);
}

void CompletionQueue::Push(uint64_t token) {
  bool signal = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_.push_back(token);
    signal = !signalled_;
    signalled_ = true;
  }
  if (signal && fd_ >= 0) {
    const uint64_t one = 1;
    // Can only fail if the counter would overflow, which one pending write per drain rules out.
    [[maybe_unused]] ssize_t n = write(fd_, &one, sizeof(one));
  }
}

std::vector<uint64_t> CompletionQueue::Drain() {
  std::vector<uint64_t> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(tokens_);
    if (signalled_ && fd_ >= 0) {
      uint64_t value = 0;
      // Reset readiness under the lock, so a Push after this sees signalled_ == false and writes.
      [[maybe_unused]] ssize_t n = read(fd_, &value, sizeof(value));
    }
    signalled_ = false;
  }
  return out;
}

}  // namespace adrank
