#include "context_cache.h"

#include <gtest/gtest.h>

#include <array>
#include <string>
#include <thread>
#include <vector>

namespace adrank {
namespace {

using Embedding = std::array<float, 4>;
constexpr size_t kValueBytes = sizeof(Embedding);

ContextCacheOptions HoldingEntries(size_t entries, size_t key_bytes) {
  ContextCacheOptions options;
  options.max_bytes = entries * ContextCache::EntryBytes(key_bytes, kValueBytes);
  return options;
}

bool Put(ContextCache& cache, const std::string& key, float fill) {
  Embedding value;
  value.fill(fill);
  return cache.Insert(key, value.data(), kValueBytes);
}

// The value's first float on a hit, -1 on a miss.
float Get(ContextCache& cache, const std::string& key) {
  Embedding out{};
  return cache.Lookup(key, out.data(), kValueBytes) ? out[0] : -1.0f;
}

TEST(ContextCacheTest, AMissThenAHitReturnsTheInsertedBytes) {
  ContextCache cache;
  EXPECT_EQ(Get(cache, "cheap flights"), -1.0f);
  EXPECT_TRUE(Put(cache, "cheap flights", 0.5f));
  EXPECT_EQ(Get(cache, "cheap flights"), 0.5f);
  const ContextCacheStats s = cache.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.insertions, 1u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, ContextCache::EntryBytes(13, kValueBytes));
}

TEST(ContextCacheTest, ABufferOfAnotherSizeIsAMissNeverAPartialCopy) {
  ContextCache cache;
  Put(cache, "q", 1.0f);
  std::array<float, 2> small{};
  EXPECT_FALSE(cache.Lookup("q", small.data(), sizeof(small)));
  EXPECT_EQ(small[0], 0.0f);
}

TEST(ContextCacheTest, EvictsTheLeastRecentlyUsedToStayWithinItsBytes) {
  ContextCache cache(HoldingEntries(2, 1));
  Put(cache, "a", 1.0f);
  Put(cache, "b", 2.0f);
  EXPECT_EQ(Get(cache, "a"), 1.0f);  // a is now more recent than b
  Put(cache, "c", 3.0f);             // evicts b
  EXPECT_EQ(Get(cache, "b"), -1.0f);
  EXPECT_EQ(Get(cache, "a"), 1.0f);
  EXPECT_EQ(Get(cache, "c"), 3.0f);
  const ContextCacheStats s = cache.stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.entries, 2u);
  EXPECT_LE(s.bytes, s.max_bytes);
}

TEST(ContextCacheTest, ALongerKeyEvictsAsManyEntriesAsItsBytesNeed) {
  ContextCache cache(HoldingEntries(3, 1));
  Put(cache, "a", 1.0f);
  Put(cache, "b", 2.0f);
  Put(cache, "c", 3.0f);
  // Two one-byte keys' worth of room: a key one entry longer evicts the two oldest.
  const std::string long_key(ContextCache::EntryBytes(1, kValueBytes) + 1, 'x');
  EXPECT_TRUE(Put(cache, long_key, 4.0f));
  EXPECT_EQ(cache.stats().evictions, 2u);
  EXPECT_EQ(Get(cache, "c"), 3.0f);
  EXPECT_EQ(Get(cache, long_key), 4.0f);
}

TEST(ContextCacheTest, AnEntryLargerThanTheWholeCacheIsNotStored) {
  ContextCache cache(HoldingEntries(1, 1));
  Put(cache, "a", 1.0f);
  EXPECT_FALSE(Put(cache, std::string(64, 'x'), 2.0f));
  EXPECT_EQ(Get(cache, "a"), 1.0f);  // nothing was evicted for it
  EXPECT_EQ(cache.stats().evictions, 0u);
}

TEST(ContextCacheTest, InsertingAKeyAgainReplacesItsValueWithoutCountingAnEviction) {
  ContextCache cache(HoldingEntries(1, 1));
  Put(cache, "a", 1.0f);
  Put(cache, "a", 2.0f);
  EXPECT_EQ(Get(cache, "a"), 2.0f);
  const ContextCacheStats s = cache.stats();
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.evictions, 0u);
  EXPECT_EQ(s.bytes, ContextCache::EntryBytes(1, kValueBytes));
}

TEST(ContextCacheTest, KeysWhoseHashesCollideNeverReturnEachOthersOutput) {
  ContextCacheOptions options;
  options.hash = [](std::string_view) -> uint64_t { return 42; };  // every key collides
  ContextCache cache(options);
  Put(cache, "running shoes", 1.0f);
  EXPECT_EQ(Get(cache, "running shoez"), -1.0f);
  Put(cache, "running shoez", 2.0f);
  EXPECT_EQ(Get(cache, "running shoes"), 1.0f);
  EXPECT_EQ(Get(cache, "running shoez"), 2.0f);
  EXPECT_EQ(cache.stats().entries, 2u);
}

TEST(ContextCacheTest, KeysDifferingOnlyInTrailingOrEmbeddedZerosAreDistinct) {
  ContextCache cache;
  Put(cache, std::string("a\0b", 3), 1.0f);
  EXPECT_EQ(Get(cache, std::string("a\0c", 3)), -1.0f);
  EXPECT_EQ(Get(cache, std::string("a", 1)), -1.0f);
  EXPECT_EQ(Get(cache, std::string("a\0b", 3)), 1.0f);
}

TEST(ContextCacheTest, ClearDropsTheEntriesAndKeepsTheCounters) {
  ContextCache cache;
  Put(cache, "a", 1.0f);
  Get(cache, "a");
  cache.Clear();
  EXPECT_EQ(Get(cache, "a"), -1.0f);
  const ContextCacheStats s = cache.stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
}

TEST(ContextCacheTest, TheHashIsFnv1a64) {
  EXPECT_EQ(ContextCache::Hash(""), 14695981039346656037ULL);
  EXPECT_EQ(ContextCache::Hash("a"), 0xaf63dc4c8601ec8cULL);
}

TEST(ContextCacheTest, ConcurrentLookupsAndInsertsKeepItWithinItsBytesAndConsistent) {
  ContextCache cache(HoldingEntries(64, 8));
  constexpr int kThreads = 4;
  constexpr int kOps = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < kOps; ++i) {
        const int id = (i * 7 + t) % 200;
        const std::string key = "query" + std::to_string(id);
        Embedding out{};
        if (cache.Lookup(key, out.data(), kValueBytes)) {
          ASSERT_EQ(out[0], static_cast<float>(id));  // a hit is always this key's own value
        } else {
          Put(cache, key, static_cast<float>(id));
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const ContextCacheStats s = cache.stats();
  EXPECT_EQ(s.hits + s.misses, static_cast<uint64_t>(kThreads * kOps));
  EXPECT_LE(s.bytes, s.max_bytes);
  EXPECT_GT(s.hits, 0u);
}

}  // namespace
}  // namespace adrank
