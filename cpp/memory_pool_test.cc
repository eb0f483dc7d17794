#include "memory_pool.h"

#include <grp.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_runtime.h"
#include "status_testing.h"

namespace adrank {
namespace {

using Lease = MemoryPool::Lease;

constexpr size_t kPage = 4096;

constexpr uid_t kNobody = 65534;

// CUDA off so that results do not depend on the machine; warnings collected rather than printed.
MemoryPoolOptions TestOptions(std::vector<std::string>* warnings = nullptr) {
  MemoryPoolOptions options;
  options.max_bytes = size_t{64} << 20;
  options.use_cuda = false;
  options.on_warning = [warnings](const std::string& message) {
    if (warnings) warnings->push_back(message);
  };
  return options;
}

std::shared_ptr<MemoryPool> MakePool(const MemoryPoolOptions& options) {
  std::shared_ptr<MemoryPool> pool;
  const Status status = MemoryPool::Create(options, &pool);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return pool;
}

// Fills the whole block with a pattern derived from `seed` and reads it back; returns the mismatches.
size_t FillAndCheck(const Lease& lease, unsigned seed) {
  auto* bytes = static_cast<unsigned char*>(lease.data());
  for (size_t i = 0; i < lease.capacity(); ++i) bytes[i] = static_cast<unsigned char>(i * 131 + seed);
  size_t mismatches = 0;
  for (size_t i = 0; i < lease.capacity(); ++i) mismatches += bytes[i] != static_cast<unsigned char>(i * 131 + seed);
  return mismatches;
}

// msync fails with ENOMEM on an unmapped range: tells whether a block went back to the OS.
bool IsMapped(void* data, size_t bytes) { return msync(data, bytes, MS_ASYNC) == 0; }

// VmLck of this process in KiB, or -1 where /proc does not say.
long LockedKiB() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmLck:") {
      long kib = -1;
      status >> kib;
      return kib;
    }
    status.ignore(1 << 16, '\n');
  }
  return -1;
}

TEST(MemoryPoolTest, RoundsLeasesUpToPowerOfTwoClasses) {
  auto pool = MakePool(TestOptions());
  ASSERT_NE(pool, nullptr);
  const std::pair<size_t, size_t> cases[] = {{0, 4096},    {1, 4096},     {4096, 4096},     {4097, 8192},
                                             {8192, 8192}, {8193, 16384}, {100000, 131072}, {1 << 20, 1 << 20}};
  for (const auto& [bytes, capacity] : cases) {
    SCOPED_TRACE("bytes=" + std::to_string(bytes));
    Lease lease;
    ASSERT_OK(pool->Acquire(bytes, &lease));
    ASSERT_TRUE(lease.valid());
    EXPECT_EQ(lease.capacity(), capacity);
    EXPECT_EQ(lease.size(), std::max<size_t>(bytes, 1));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(lease.data()) % 64, 0u);
    EXPECT_EQ(FillAndCheck(lease, 7), 0u);
  }
}

TEST(MemoryPoolTest, SmallestClassIsMinBlockBytes) {
  MemoryPoolOptions options = TestOptions();
  options.min_block_bytes = 64;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  const std::pair<size_t, size_t> cases[] = {{1, 64}, {64, 64}, {65, 128}, {129, 256}, {5000, 8192}};
  for (const auto& [bytes, capacity] : cases) {
    SCOPED_TRACE("bytes=" + std::to_string(bytes));
    Lease lease;
    ASSERT_OK(pool->Acquire(bytes, &lease));
    EXPECT_EQ(lease.capacity(), capacity);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(lease.data()) % 64, 0u);
    EXPECT_EQ(FillAndCheck(lease, 3), 0u);
  }
}

TEST(MemoryPoolTest, ReusesAReturnedBlockWithoutAllocating) {
  auto pool = MakePool(TestOptions());
  ASSERT_NE(pool, nullptr);
  void* first = nullptr;
  {
    Lease lease;
    ASSERT_OK(pool->Acquire(5000, &lease));
    first = lease.data();
  }
  const MemoryPoolStats before = pool->stats();
  EXPECT_EQ(before.leases, 1u);
  EXPECT_EQ(before.misses, 1u);
  EXPECT_EQ(before.total_bytes, 8192u);
  EXPECT_EQ(before.in_use_bytes, 0u);

  Lease again;
  ASSERT_OK(pool->Acquire(6000, &again));  // same class (8 KiB)
  EXPECT_EQ(again.data(), first);
  const MemoryPoolStats after = pool->stats();
  EXPECT_EQ(after.leases, 2u);
  EXPECT_EQ(after.misses, 1u);
  EXPECT_EQ(after.total_bytes, 8192u);
  EXPECT_EQ(after.in_use_bytes, 8192u);

  Lease other_class;
  ASSERT_OK(pool->Acquire(100, &other_class));
  EXPECT_EQ(pool->stats().misses, 2u);
  EXPECT_EQ(pool->stats().total_bytes, 8192u + 4096u);
}

TEST(MemoryPoolTest, ConcurrentLeasesNeverOverlap) {
  auto pool = MakePool(TestOptions());
  ASSERT_NE(pool, nullptr);
  const size_t sizes[] = {1, 4096, 5000, 9000, 20000, 70000};
  std::vector<Lease> leases(48);
  for (size_t i = 0; i < leases.size(); ++i) {
    ASSERT_OK(pool->Acquire(sizes[i % std::size(sizes)], &leases[i]));
    if (i % 5 == 4) leases[i - 2].Reset();  // returned blocks get handed out again below
  }
  for (size_t i = 3; i < leases.size(); i += 5) ASSERT_OK(pool->Acquire(sizes[i % std::size(sizes)], &leases[i]));

  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (size_t i = 0; i < leases.size(); ++i) {
    if (!leases[i].valid()) continue;
    const auto begin = reinterpret_cast<uintptr_t>(leases[i].data());
    ranges.emplace_back(begin, begin + leases[i].capacity());
    std::fill_n(static_cast<unsigned char*>(leases[i].data()), leases[i].capacity(), static_cast<unsigned char>(i));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first) << "blocks overlap";
  for (size_t i = 0; i < leases.size(); ++i) {
    if (!leases[i].valid()) continue;
    const auto* bytes = static_cast<const unsigned char*>(leases[i].data());
    EXPECT_EQ(std::count(bytes, bytes + leases[i].capacity(), static_cast<unsigned char>(i)),
              static_cast<std::ptrdiff_t>(leases[i].capacity()))
        << "lease " << i << " was overwritten";
  }
}

TEST(MemoryPoolTest, AccountsThroughMoveResetAndDestruction) {
  auto pool = MakePool(TestOptions());
  ASSERT_NE(pool, nullptr);
  Lease a;
  ASSERT_OK(pool->Acquire(4096, &a));
  EXPECT_EQ(pool->stats().in_use_bytes, 4096u);
  EXPECT_EQ(pool->stats().total_bytes, 4096u);

  Lease b(std::move(a));
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(a.capacity(), 0u);
  ASSERT_TRUE(b.valid());
  EXPECT_EQ(b.capacity(), 4096u);
  EXPECT_EQ(pool->stats().in_use_bytes, 4096u);

  Lease c;
  ASSERT_OK(pool->Acquire(8192, &c));
  EXPECT_EQ(pool->stats().in_use_bytes, 12288u);
  c = std::move(b);         // c's 8 KiB block goes back to the pool
  EXPECT_FALSE(b.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.capacity(), 4096u);
  EXPECT_EQ(pool->stats().in_use_bytes, 4096u);
  EXPECT_EQ(pool->stats().total_bytes, 12288u);

  Lease& alias = c;
  c = std::move(alias);  // self-move keeps the block
  ASSERT_TRUE(c.valid());
  EXPECT_EQ(pool->stats().in_use_bytes, 4096u);

  {
    Lease d;
    ASSERT_OK(pool->Acquire(8000, &d));
    EXPECT_EQ(pool->stats().in_use_bytes, 12288u);
  }
  EXPECT_EQ(pool->stats().in_use_bytes, 4096u);

  c.Reset();
  EXPECT_FALSE(c.valid());
  EXPECT_EQ(pool->stats().in_use_bytes, 0u);
  c.Reset();  // harmless twice
  EXPECT_EQ(pool->stats().in_use_bytes, 0u);
  EXPECT_EQ(pool->stats().total_bytes, 12288u);

  // Acquiring into a valid lease returns its block first.
  Lease e;
  ASSERT_OK(pool->Acquire(4096, &e));
  ASSERT_OK(pool->Acquire(8192, &e));
  EXPECT_EQ(e.capacity(), 8192u);
  EXPECT_EQ(pool->stats().in_use_bytes, 8192u);
  EXPECT_EQ(pool->stats().misses, 2u);
  EXPECT_EQ(pool->stats().leases, 5u);
}

TEST(MemoryPoolTest, TrimReturnsCachedBlocksToTheOs) {
  auto pool = MakePool(TestOptions());
  ASSERT_NE(pool, nullptr);
  Lease kept;
  ASSERT_OK(pool->Acquire(4096, &kept));
  void* cached_data = nullptr;
  {
    Lease returned;
    ASSERT_OK(pool->Acquire(65536, &returned));
    cached_data = returned.data();
  }
  ASSERT_TRUE(IsMapped(cached_data, 65536));
  pool->Trim();
  EXPECT_FALSE(IsMapped(cached_data, 65536));
  EXPECT_TRUE(IsMapped(kept.data(), kept.capacity()));
  const MemoryPoolStats stats = pool->stats();
  EXPECT_EQ(stats.total_bytes, 4096u);
  EXPECT_EQ(stats.in_use_bytes, 4096u);
  EXPECT_LE(stats.locked_bytes, stats.total_bytes);
  EXPECT_EQ(FillAndCheck(kept, 1), 0u);
}

TEST(MemoryPoolTest, RefusesLeasesBeyondTheCap) {
  MemoryPoolOptions options = TestOptions();
  options.max_bytes = 4 * kPage;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  std::vector<Lease> leases(4);
  for (Lease& lease : leases) ASSERT_OK(pool->Acquire(kPage, &lease));

  Lease refused;
  Status status = pool->Acquire(100, &refused);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_PRED2(Contains, status.message(), "100 bytes");
  EXPECT_PRED2(Contains, status.message(), "max_bytes is 16384");
  EXPECT_PRED2(Contains, status.message(), "16384 bytes are in use");
  EXPECT_FALSE(refused.valid());
  MemoryPoolStats stats = pool->stats();
  EXPECT_EQ(stats.cap_rejections, 1u);
  EXPECT_EQ(stats.leases, 4u);
  EXPECT_EQ(stats.total_bytes, 4 * kPage);
  EXPECT_EQ(stats.in_use_bytes, 4 * kPage);

  // Bigger than the cap on its own: refused even though its lease gave a block back first.
  status = pool->Acquire(5 * kPage, &leases[0]);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_PRED2(Contains, status.message(), "20480 bytes");
  EXPECT_PRED2(Contains, status.message(), "max_bytes is 16384");
  EXPECT_FALSE(leases[0].valid());
  EXPECT_EQ(pool->stats().cap_rejections, 2u);
  EXPECT_EQ(pool->stats().in_use_bytes, 3 * kPage);

  ASSERT_OK(pool->Acquire(kPage, &refused));  // room again
  EXPECT_EQ(pool->stats().total_bytes, 4 * kPage);
}

TEST(MemoryPoolTest, FreesCachedBlocksOfOtherClassesToMakeRoom) {
  MemoryPoolOptions options = TestOptions();
  options.max_bytes = 4 * kPage;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  void* cached_data = nullptr;
  {
    Lease two_pages;
    ASSERT_OK(pool->Acquire(2 * kPage, &two_pages));
    cached_data = two_pages.data();
  }
  Lease a, b, c, d;
  ASSERT_OK(pool->Acquire(kPage, &a));
  ASSERT_OK(pool->Acquire(kPage, &b));
  EXPECT_EQ(pool->stats().total_bytes, 4 * kPage);  // at the cap: 2 pages cached, 2 in use
  EXPECT_TRUE(IsMapped(cached_data, 2 * kPage));

  ASSERT_OK(pool->Acquire(kPage, &c));  // only fits once the cached 2-page block is freed
  EXPECT_FALSE(IsMapped(cached_data, 2 * kPage));
  MemoryPoolStats stats = pool->stats();
  EXPECT_EQ(stats.total_bytes, 3 * kPage);
  EXPECT_EQ(stats.in_use_bytes, 3 * kPage);
  EXPECT_EQ(stats.misses, 4u);
  EXPECT_EQ(stats.cap_rejections, 0u);

  ASSERT_OK(pool->Acquire(kPage, &d));
  Lease e;
  EXPECT_EQ(pool->Acquire(kPage, &e).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->stats().total_bytes, 4 * kPage);
}

TEST(MemoryPoolTest, RefusedLeaseLeavesTheCacheAlone) {
  MemoryPoolOptions options = TestOptions();
  options.max_bytes = 4 * kPage;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  Lease two_pages;
  ASSERT_OK(pool->Acquire(2 * kPage, &two_pages));
  void* cached_data = nullptr;
  {
    Lease one_page;
    ASSERT_OK(pool->Acquire(kPage, &one_page));
    cached_data = one_page.data();
  }
  Lease four_pages;
  EXPECT_EQ(pool->Acquire(4 * kPage, &four_pages).code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(IsMapped(cached_data, kPage));
  EXPECT_EQ(pool->stats().total_bytes, 3 * kPage);

  // 2 in use + 2 asked fits the cap once the cached page is freed.
  Lease second;
  ASSERT_OK(pool->Acquire(2 * kPage, &second));
  EXPECT_EQ(pool->stats().total_bytes, 4 * kPage);
  EXPECT_EQ(pool->stats().in_use_bytes, 4 * kPage);
}

TEST(MemoryPoolTest, LeaseMayOutliveThePool) {
  Lease lease;
  void* cached_data = nullptr;
  {
    auto pool = MakePool(TestOptions());
    ASSERT_NE(pool, nullptr);
    ASSERT_OK(pool->Acquire(10000, &lease));
    {
      Lease cached;
      ASSERT_OK(pool->Acquire(100, &cached));
      cached_data = cached.data();
    }
    pool.reset();
    EXPECT_FALSE(IsMapped(cached_data, kPage)) << "~MemoryPool frees cached blocks";
  }
  ASSERT_TRUE(lease.valid());
  EXPECT_EQ(FillAndCheck(lease, 9), 0u);
  Lease moved(std::move(lease));
  void* data = moved.data();
  const size_t capacity = moved.capacity();
  moved.Reset();
  EXPECT_FALSE(moved.valid());
  EXPECT_FALSE(IsMapped(data, capacity)) << "the last lease frees its block once the pool is gone";
}

TEST(MemoryPoolTest, UnlockedByRequestUsesPlainMmap) {
  std::vector<std::string> warnings;
  MemoryPoolOptions options = TestOptions(&warnings);
  options.lock_memory = false;
  options.use_cuda = true;  // pinned CUDA memory would be locked too, against the request
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->stats().allocator, "mmap");
  EXPECT_TRUE(pool->stats().locked) << "an empty pool holds nothing unlocked";

  const long locked_before = LockedKiB();
  Lease lease;
  ASSERT_OK(pool->Acquire(64 * 1024, &lease));
  EXPECT_FALSE(lease.locked());
  if (locked_before >= 0) {
    EXPECT_EQ(LockedKiB(), locked_before);
  }
  const MemoryPoolStats stats = pool->stats();
  EXPECT_EQ(stats.locked_bytes, 0u);
  EXPECT_FALSE(stats.locked);
  EXPECT_EQ(stats.lock_failures, 0u);
  EXPECT_TRUE(warnings.empty());
  EXPECT_EQ(FillAndCheck(lease, 5), 0u);
}

TEST(MemoryPoolTest, LocksBlocksWhereTheLimitAllows) {
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &limit), 0);
  constexpr rlim_t kNeeded = 1 << 20;
  if (geteuid() != 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < kNeeded) {
    GTEST_SKIP() << "not root and RLIMIT_MEMLOCK is " << limit.rlim_cur << " bytes (< " << kNeeded
                 << "), so mlock is not expected to work here";
  }
  std::vector<std::string> warnings;
  auto pool = MakePool(TestOptions(&warnings));
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->stats().allocator, "mlock");

  const long locked_before = LockedKiB();
  Lease lease;
  ASSERT_OK(pool->Acquire(64 * 1024, &lease));
  EXPECT_TRUE(lease.locked());
  if (locked_before >= 0) {
    EXPECT_GE(LockedKiB(), locked_before + 64) << "VmLck must grow by the block";
  }
  const MemoryPoolStats stats = pool->stats();
  EXPECT_TRUE(stats.locked);
  EXPECT_EQ(stats.locked_bytes, stats.total_bytes);
  EXPECT_EQ(stats.locked_bytes, 64u * 1024);
  EXPECT_EQ(stats.lock_failures, 0u);
  EXPECT_TRUE(warnings.empty());

  lease.Reset();
  pool->Trim();
  EXPECT_EQ(pool->stats().locked_bytes, 0u);
  if (locked_before >= 0) {
    EXPECT_EQ(LockedKiB(), locked_before) << "munmap must unlock";
  }
}

TEST(MemoryPoolTest, UsesCudaHostAllocWhereARuntimeIsPresent) {
  MemoryPoolOptions options = TestOptions();
  options.use_cuda = true;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  // Everywhere: the pool pins with CUDA exactly when a runtime with a device loaded.
  EXPECT_EQ(pool->stats().allocator == "cuda_host", CudaRuntime::Default() != nullptr);
  if (!CudaRuntime::Default()) {
    GTEST_SKIP() << "needs a CUDA device: " << CudaRuntime::DefaultProbe().reason;
  }
  Lease lease;
  ASSERT_OK(pool->Acquire(3 << 20, &lease));
  EXPECT_EQ(lease.capacity(), size_t{4} << 20);
  EXPECT_TRUE(lease.locked());
  EXPECT_TRUE(pool->stats().locked);
  EXPECT_EQ(pool->stats().locked_bytes, size_t{4} << 20);
  EXPECT_EQ(FillAndCheck(lease, 11), 0u);
}

TEST(MemoryPoolTest, RejectsInvalidOptions) {
  for (size_t min_block_bytes : {size_t{0}, size_t{1}, size_t{32}, size_t{100}, size_t{3000}, size_t{4097}}) {
    MemoryPoolOptions options = TestOptions();
    options.min_block_bytes = min_block_bytes;
    std::shared_ptr<MemoryPool> pool;
    const Status status = MemoryPool::Create(options, &pool);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << min_block_bytes;
    EXPECT_PRED2(Contains, status.message(), "min_block_bytes");
    EXPECT_EQ(pool, nullptr);
  }
  MemoryPoolOptions options = TestOptions();
  options.max_bytes = 4095;
  std::shared_ptr<MemoryPool> pool;
  const Status status = MemoryPool::Create(options, &pool);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_PRED2(Contains, status.message(), "max_bytes");
  EXPECT_EQ(pool, nullptr);

  // The smallest valid pool: one 64-byte class.
  options.min_block_bytes = 64;
  options.max_bytes = 64;
  ASSERT_OK(MemoryPool::Create(options, &pool));
  Lease lease;
  ASSERT_OK(pool->Acquire(64, &lease));
  lease.Reset();
  EXPECT_EQ(pool->Acquire(65, &lease).code(), StatusCode::kResourceExhausted);
}

// Each thread keeps a few leases, stamps every block it gets and checks the stamp before giving it
// back, so that a block handed to two holders at once shows up as a mismatch.
void Churn(MemoryPool* pool, int thread, int rounds, std::atomic<int>* errors, std::atomic<int>* refused) {
  std::mt19937 random(thread);
  std::uniform_int_distribution<size_t> size(0, 40000);
  std::vector<Lease> slots(4);
  auto stamp_ok = [](const Lease& lease, uint64_t stamp) {
    uint64_t head = 0;
    uint64_t tail = 0;
    std::memcpy(&head, lease.data(), sizeof(head));
    std::memcpy(&tail, static_cast<char*>(lease.data()) + lease.capacity() - sizeof(tail), sizeof(tail));
    return head == stamp && tail == stamp;
  };
  std::vector<uint64_t> stamps(slots.size());
  for (int i = 0; i < rounds; ++i) {
    const size_t slot = random() % slots.size();
    if (slots[slot].valid() && !stamp_ok(slots[slot], stamps[slot])) ++*errors;
    const Status status = pool->Acquire(size(random), &slots[slot]);
    if (!status.ok()) {
      if (status.code() != StatusCode::kResourceExhausted) ++*errors;
      ++*refused;
      continue;
    }
    stamps[slot] = (uint64_t{static_cast<uint32_t>(thread)} << 32) | static_cast<uint32_t>(i);
    std::memcpy(slots[slot].data(), &stamps[slot], sizeof(uint64_t));
    std::memcpy(static_cast<char*>(slots[slot].data()) + slots[slot].capacity() - sizeof(uint64_t), &stamps[slot],
                sizeof(uint64_t));
    if (i % 64 == 0 && pool->stats().total_bytes > pool->options().max_bytes) ++*errors;
  }
}

void Stress(size_t max_bytes, bool expect_refusals) {
  MemoryPoolOptions options = TestOptions();
  options.max_bytes = max_bytes;
  options.on_warning = [](const std::string&) {};  // called from any thread
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  constexpr int kThreads = 8;
  constexpr int kRounds = 2000;
  std::atomic<int> errors{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(Churn, pool.get(), t, kRounds, &errors, &refused);
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(errors.load(), 0);
  const MemoryPoolStats stats = pool->stats();
  EXPECT_EQ(stats.in_use_bytes, 0u);
  EXPECT_LE(stats.total_bytes, max_bytes);
  EXPECT_EQ(stats.leases + stats.cap_rejections, uint64_t{kThreads} * kRounds);
  EXPECT_EQ(stats.cap_rejections, static_cast<uint64_t>(refused.load()));
  EXPECT_LE(stats.misses, stats.leases);
  if (expect_refusals) {
    EXPECT_GT(stats.cap_rejections, 0u);
  } else {
    EXPECT_EQ(stats.cap_rejections, 0u);
  }
  pool->Trim();
  EXPECT_EQ(pool->stats().total_bytes, 0u);
  EXPECT_EQ(pool->stats().locked_bytes, 0u);
}

TEST(MemoryPoolTest, StressManyThreads) { Stress(size_t{64} << 20, /*expect_refusals=*/false); }

// 8 threads x 4 slots x up to 64 KiB is far above 256 KiB: misses, evictions and refusals race.
TEST(MemoryPoolTest, StressManyThreadsAtATightCap) { Stress(256 * 1024, /*expect_refusals=*/true); }

// The death tests below run their body in a child process (the parent keeps its privileges).

// Makes mlock fail: RLIMIT_MEMLOCK 0, and for root no CAP_IPC_LOCK (it bypasses the limit), by
// becoming nobody. Returns false with a line on stderr if that could not be done.
bool DropPageLockPrivileges() {
  const rlimit zero{0, 0};
  if (setrlimit(RLIMIT_MEMLOCK, &zero) != 0) {
    std::perror("setrlimit(RLIMIT_MEMLOCK, 0)");
    return false;
  }
  if (geteuid() == 0 && (setgroups(0, nullptr) != 0 || setgid(kNobody) != 0 || setuid(kNobody) != 0)) {
    std::perror("dropping root privileges");
    return false;
  }
  return true;
}

// Exits 0 only if page-locking failed visibly: stats, lease flags and exactly one warning.
void CheckPageLockFailureIsReported() {
  if (!DropPageLockPrivileges()) std::exit(2);
  int warnings = 0;
  std::string warning;
  MemoryPoolOptions options = TestOptions();
  options.on_warning = [&](const std::string& message) {
    ++warnings;
    warning = message;
  };
  std::shared_ptr<MemoryPool> pool;
  if (!MemoryPool::Create(options, &pool).ok()) std::exit(3);
  Lease a;
  Lease b;
  if (!pool->Acquire(kPage, &a).ok() || !pool->Acquire(3 * kPage, &b).ok()) std::exit(4);
  const MemoryPoolStats stats = pool->stats();
  std::fprintf(stderr, "allocator=%s locked=%d lock_failures=%llu locked_bytes=%zu warnings=%d\n",
               stats.allocator.c_str(), stats.locked, static_cast<unsigned long long>(stats.lock_failures),
               stats.locked_bytes, warnings);
  if (stats.locked || stats.lock_failures != 2 || stats.locked_bytes != 0 || a.locked() || b.locked()) std::exit(5);
  if (warnings != 1) std::exit(6);
  for (const char* needle : {"page-locking failed", "RLIMIT_MEMLOCK", "CAP_IPC_LOCK"}) {
    if (warning.find(needle) == std::string::npos) std::exit(7);
  }
  if (FillAndCheck(a, 1) != 0 || FillAndCheck(b, 2) != 0) std::exit(8);
  std::exit(0);
}

// Without on_warning the one warning goes to stderr as one line; stderr is captured to count it.
void CheckDefaultWarningIsOneStderrLine() {
  std::FILE* captured = std::tmpfile();
  if (!captured || !DropPageLockPrivileges()) std::exit(2);
  const int saved_stderr = dup(STDERR_FILENO);
  dup2(fileno(captured), STDERR_FILENO);
  MemoryPoolOptions options = TestOptions();
  options.on_warning = nullptr;
  {
    std::shared_ptr<MemoryPool> pool;
    if (!MemoryPool::Create(options, &pool).ok()) std::exit(3);
    Lease a;
    Lease b;
    if (!pool->Acquire(kPage, &a).ok() || !pool->Acquire(kPage, &b).ok()) std::exit(4);
    if (pool->stats().lock_failures != 2) std::exit(5);
  }
  std::fflush(stderr);
  dup2(saved_stderr, STDERR_FILENO);
  std::rewind(captured);
  std::string text;
  for (int c; (c = std::fgetc(captured)) != EOF;) text += static_cast<char>(c);
  std::fprintf(stderr, "captured: %s", text.c_str());
  if (std::count(text.begin(), text.end(), '\n') != 1 || text.back() != '\n') std::exit(6);
  if (text.find("page-locking failed") == std::string::npos || text.find("RLIMIT_MEMLOCK") == std::string::npos) {
    std::exit(7);
  }
  std::exit(0);
}

TEST(MemoryPoolDeathTest, PageLockFailureIsReportedOnceNotSilently) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_EXIT(CheckPageLockFailureIsReported(), ::testing::ExitedWithCode(0), "");
}

TEST(MemoryPoolDeathTest, DefaultWarningIsOneLineOnStderr) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_EXIT(CheckDefaultWarningIsOneStderrLine(), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace adrank
