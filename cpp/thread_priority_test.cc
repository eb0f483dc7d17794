#include "thread_priority.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

namespace adrank {
namespace {

int ThisThreadsNice() {
  errno = 0;
  return getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)));
}

// Runs `body` on a fresh thread (so that a test's policy changes never reach the test runner's thread).
template <typename Body>
void OnNewThread(Body body) {
  std::thread thread(body);
  thread.join();
}

TEST(ThreadPriorityTest, ThreadsCreatedUnderTheScopeStartBatchAndTheCreatorIsRestored) {
  OnNewThread([] {
    ASSERT_EQ(ThisThreadsPolicy(), SCHED_OTHER);
    int inherited = -1;
    {
      ScopedYieldingThreads yielding;
      ASSERT_TRUE(yielding.active());
      EXPECT_EQ(ThisThreadsPolicy(), SCHED_BATCH);
      std::thread child([&] { inherited = ThisThreadsPolicy(); });
      child.join();
    }
    EXPECT_EQ(inherited, SCHED_BATCH);
    EXPECT_EQ(ThisThreadsPolicy(), SCHED_OTHER);
    int after = -1;
    std::thread child([&] { after = ThisThreadsPolicy(); });
    child.join();
    EXPECT_EQ(after, SCHED_OTHER) << "threads created after the scope are not batch";
  });
}

TEST(ThreadPriorityTest, NestedScopesRestoreTheirOwnCallersPolicy) {
  OnNewThread([] {
    ScopedYieldingThreads outer;
    {
      ScopedYieldingThreads inner;
      EXPECT_EQ(ThisThreadsPolicy(), SCHED_BATCH);
    }
    EXPECT_EQ(ThisThreadsPolicy(), SCHED_BATCH) << "the inner scope restores what the outer one set";
  });
}

TEST(ThreadPriorityTest, ServingThreadLeavesBatchWithoutPrivilege) {
  OnNewThread([] {
    ScopedYieldingThreads yielding;
    ASSERT_EQ(ThisThreadsPolicy(), SCHED_BATCH);
    const int nice = ThisThreadsNice();
    RunAsServingThread();
    EXPECT_EQ(ThisThreadsPolicy(), SCHED_OTHER);
    EXPECT_EQ(ThisThreadsNice(), nice) << "the nice level is left alone";
  });
}

TEST(ThreadPriorityTest, BackgroundThreadRunsOtherAtNice19) {
  OnNewThread([] {
    ScopedYieldingThreads yielding;
    RunAsBackgroundThread();
    EXPECT_EQ(ThisThreadsPolicy(), SCHED_OTHER);
    EXPECT_EQ(ThisThreadsNice(), 19);
  });
}

}  // namespace
}  // namespace adrank
