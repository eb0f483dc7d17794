#include "completion_queue.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace adrank {
namespace {

// What asyncio's add_reader relies on: is the fd readable right now?
bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  const int n = poll(&p, 1, 0);
  return n == 1 && (p.revents & POLLIN) != 0;
}

TEST(CompletionQueueTest, CreatesANonBlockingCloseOnExecFd) {
  CompletionQueue queue;
  ASSERT_TRUE(queue.status().ok()) << queue.status().ToString();
  ASSERT_GE(queue.fd(), 0);
  EXPECT_NE(fcntl(queue.fd(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(fcntl(queue.fd(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(CompletionQueueTest, EmptyQueueIsNotReadableAndDrainsNothing) {
  CompletionQueue queue;
  ASSERT_GE(queue.fd(), 0);
  EXPECT_FALSE(Readable(queue.fd()));
  EXPECT_TRUE(queue.Drain().empty());
  EXPECT_FALSE(Readable(queue.fd()));
}

TEST(CompletionQueueTest, DrainReturnsTokensInPushOrder) {
  CompletionQueue queue;
  const std::vector<uint64_t> tokens = {7, 3, 3, 0, UINT64_MAX, 42};
  for (uint64_t token : tokens) queue.Push(token);
  EXPECT_EQ(queue.Drain(), tokens);
  EXPECT_TRUE(queue.Drain().empty());  // a token is handed out once
}

TEST(CompletionQueueTest, FdIsReadableAfterPushAndNotAfterDrain) {
  CompletionQueue queue;
  ASSERT_GE(queue.fd(), 0);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    queue.Push(static_cast<uint64_t>(round));
    EXPECT_TRUE(Readable(queue.fd()));
    queue.Push(100 + static_cast<uint64_t>(round));  // a second push before the drain: still one wake
    EXPECT_TRUE(Readable(queue.fd()));
    EXPECT_EQ(queue.Drain(), (std::vector<uint64_t>{static_cast<uint64_t>(round), 100 + static_cast<uint64_t>(round)}));
    EXPECT_FALSE(Readable(queue.fd()));
  }
}

TEST(CompletionQueueTest, ConcurrentPushersDeliverEveryTokenExactlyOnce) {
  CompletionQueue queue;
  ASSERT_GE(queue.fd(), 0);
  constexpr int kThreads = 8;
  constexpr uint64_t kPerThread = 5000;
  std::atomic<int> running{kThreads};
  std::vector<std::thread> pushers;
  for (int t = 0; t < kThreads; ++t) {
    pushers.emplace_back([&, t] {
      for (uint64_t i = 0; i < kPerThread; ++i) queue.Push(static_cast<uint64_t>(t) * kPerThread + i);
      running.fetch_sub(1);
    });
  }
  // The consumer drains while the pushers run, as the event loop would: whenever the fd is readable.
  std::vector<uint64_t> seen;
  std::vector<uint64_t> last_of_thread(kThreads, UINT64_MAX);
  bool in_order = true;
  auto take = [&] {
    for (uint64_t token : queue.Drain()) {
      const size_t thread = static_cast<size_t>(token / kPerThread);
      // Each pusher's tokens must come out in the order it pushed them.
      if (last_of_thread[thread] != UINT64_MAX && token <= last_of_thread[thread]) in_order = false;
      last_of_thread[thread] = token;
      seen.push_back(token);
    }
  };
  while (running.load() > 0) {
    pollfd p{queue.fd(), POLLIN, 0};
    if (poll(&p, 1, 10) == 1) take();
  }
  for (std::thread& pusher : pushers) pusher.join();
  // Every push after the last drain left the fd readable: the loop would wake for the rest.
  if (seen.size() < kThreads * kPerThread) {
    EXPECT_TRUE(Readable(queue.fd()));
  }
  take();
  EXPECT_FALSE(Readable(queue.fd()));

  EXPECT_TRUE(in_order);
  ASSERT_EQ(seen.size(), kThreads * kPerThread);
  std::sort(seen.begin(), seen.end());
  for (uint64_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], i) << "token missing or duplicated";
}

}  // namespace
}  // namespace adrank
