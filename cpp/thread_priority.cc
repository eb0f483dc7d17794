#include "thread_priority.h"

#include <sched.h>

#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace adrank {
namespace {

// pid 0: the calling thread (on Linux the policy is per thread).
bool SetThisThreadsPolicy(int policy) {
#ifdef __linux__
  sched_param param{};
  param.sched_priority = 0;
  return sched_setscheduler(0, policy, &param) == 0;
#else
  (void)policy;
  return false;
#endif
}

}  // namespace

ScopedYieldingThreads::ScopedYieldingThreads() {
#ifdef __linux__
  const int policy = ThisThreadsPolicy();
  if (policy >= 0 && SetThisThreadsPolicy(SCHED_BATCH)) previous_policy_ = policy;
#endif
}

ScopedYieldingThreads::~ScopedYieldingThreads() {
  if (active()) SetThisThreadsPolicy(previous_policy_);
}

void RunAsServingThread() {
#ifdef __linux__
  SetThisThreadsPolicy(SCHED_OTHER);
#endif
}

void RunAsBackgroundThread() {
#ifdef __linux__
  SetThisThreadsPolicy(SCHED_OTHER);
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
#endif
}

int ThisThreadsPolicy() {
#ifdef __linux__
  return sched_getscheduler(0);
#else
  return -1;
#endif
}

}  // namespace adrank
