#include "outcome.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace adrank {
namespace {

using std::chrono::milliseconds;

TEST(OutcomeTest, TheFirstSetWinsAndLaterOnesChangeNothing) {
  Outcome<std::string> outcome;
  EXPECT_FALSE(outcome.done());
  EXPECT_TRUE(outcome.Set("first"));
  EXPECT_FALSE(outcome.Set("second"));
  EXPECT_TRUE(outcome.done());
  EXPECT_EQ(outcome.value(), "first");
}

TEST(OutcomeTest, WaitForTimesOutUnsetAndReturnsOnceSet) {
  Outcome<int> outcome;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(outcome.WaitFor(milliseconds(20)));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(20));
  outcome.Set(7);
  EXPECT_TRUE(outcome.WaitFor(milliseconds(0)));
  EXPECT_EQ(outcome.value(), 7);
}

TEST(OutcomeTest, EveryWaiterWakesWhenAnotherThreadSetsIt) {
  Outcome<int> outcome;
  std::vector<std::thread> waiters;
  std::vector<int> seen(4, 0);
  for (int i = 0; i < 4; ++i) {
    waiters.emplace_back([&, i] {
      outcome.Wait();
      seen[i] = outcome.value();
    });
  }
  std::this_thread::sleep_for(milliseconds(10));
  std::thread setter([&] { outcome.Set(42); });
  setter.join();
  for (std::thread& waiter : waiters) waiter.join();
  EXPECT_EQ(seen, (std::vector<int>(4, 42)));
}

TEST(OutcomeTest, TheWaiterMayDestroyItAsSoonAsItsWaitReturns) {
  // The setter is still inside Set when the waiter wakes: ASan and TSan see any touch after the wait.
  for (int i = 0; i < 200; ++i) {
    auto outcome = std::make_unique<Outcome<int>>();
    Outcome<int>* shared = outcome.get();
    std::thread setter([shared] { shared->Set(1); });
    ASSERT_TRUE(outcome->WaitFor(std::chrono::seconds(10)));
    outcome.reset();
    setter.join();
  }
}

}  // namespace
}  // namespace adrank
