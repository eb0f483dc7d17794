// ContextCache: the outputs of a model's context tower, kept per distinct context, so that a request
// whose context (a search query) was seen recently skips the tower and only the per-candidate head runs.
//
// Contract:
//   - Keyed by the context's bytes (what the tower reads, e.g. a query's UTF-8 text). Entries are found
//     through a 64-bit hash of those bytes (FNV-1a), and a hit compares the full key bytes as well: two
//     contexts whose hashes collide are two entries, and a lookup can never return another context's
//     output.
//   - The value is the tower's output for that one context, stored as bytes and copied out whole: a
//     lookup into a buffer of another size is a miss, never a partial copy.
//   - Bounded in bytes: an entry costs its key, its value and kEntryOverheadBytes (the list and hash-map
//     nodes and their headers), and the cache never holds more than `max_bytes` of them. An entry larger
//     than `max_bytes` on its own is not stored.
//   - Eviction: least recently used. A hit or an insert makes an entry the most recent; an insert that
//     does not fit evicts from the least recent end until it does. (Ads queries are Zipf-like: the head
//     of the distribution is hit on every few requests and stays, the tail of one-off queries flows
//     through the LRU end.)
//   - One cache per model version, shared by all its instances, dropped with the version: the outputs
//     of one version's tower are meaningless to another's.
//   - Counters: hits, misses, insertions, evictions; gauges: bytes, entries. Cumulative over the cache's
//     life; Clear() drops the entries, not the counters.
//
// Thread-safety: every method may be called from any thread. One mutex guards the entries; it is held for
// one hash-map operation and one copy of a value (a few KiB), never while a model runs: the caller looks
// up, runs the tower on its misses without the lock, then inserts. Two workers that miss the same context
// at once both compute it (the tower is deterministic: the same bytes), and the second insert replaces the
// first.
//
// Settings: the model's config.yaml sets `context_tower.cache_bytes`. 64 MiB holds ~40,000 relevance
// queries (a 384-float embedding is 1.5 KiB, plus its key and the overhead): the head of a day's query
// distribution. Bulk scoring jobs with few distinct contexts need far less; 0 turns the cache off (the
// backend then runs the whole graph, as without a tower).
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace adrank {

using ContextHash = uint64_t (*)(std::string_view key);

struct ContextCacheOptions {
  // 64 MiB: see Settings above.
  size_t max_bytes = size_t{64} << 20;
  // The key's 64-bit hash. nullptr: ContextCache::Hash (FNV-1a). Tests pass a constant one to make every key
  // collide.
  ContextHash hash = nullptr;
};

struct ContextCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t insertions = 0;
  uint64_t evictions = 0;
  size_t bytes = 0;  // held now, overhead included
  size_t entries = 0;
  size_t max_bytes = 0;
};

class ContextCache {
 public:
  // What one entry costs beyond its key and value bytes: a list node with the key string and value vector
  // headers, and a hash-map node with its bucket pointer, rounded up.
  static constexpr size_t kEntryOverheadBytes = 128;

  explicit ContextCache(ContextCacheOptions options = {});
  ContextCache(const ContextCache&) = delete;
  ContextCache& operator=(const ContextCache&) = delete;

  // On a hit, copies the value stored for `key` into `out` (exactly `out_bytes`), makes it the most recent
  // and returns true. On a miss (or a stored value of another size) returns false. Counted either way.
  bool Lookup(std::string_view key, void* out, size_t out_bytes);
  // Stores a copy of `value` for `key` (replacing the key's value if present), evicting the least recently
  // used entries until it fits. Returns false when the entry alone exceeds max_bytes (nothing stored).
  bool Insert(std::string_view key, const void* value, size_t bytes);
  // Drops every entry (the version is going away); the counters stay.
  void Clear();
  ContextCacheStats stats() const;
  size_t max_bytes() const { return options_.max_bytes; }

  // The 64-bit FNV-1a hash of the key's bytes: the hash map's hash (deterministic across processes).
  static uint64_t Hash(std::string_view key);
  static size_t EntryBytes(size_t key_bytes, size_t value_bytes) {
    return key_bytes + value_bytes + kEntryOverheadBytes;
  }

  // Implementation details follow. API users need not read.
 private:
  struct Entry {
    std::string key;
    std::vector<uint8_t> value;
  };
  using Lru = std::list<Entry>;  // most recent first
  struct KeyHash {
    ContextHash hash;
    size_t operator()(std::string_view key) const { return static_cast<size_t>(hash(key)); }
  };

  void EraseLocked(Lru::iterator entry);

  const ContextCacheOptions options_;
  mutable std::mutex mu_;
  Lru lru_;
  // Keys view the entries' own key strings (list nodes never move): each key's bytes are stored once.
  std::unordered_map<std::string_view, Lru::iterator, KeyHash> index_;
  size_t bytes_ = 0;
  uint64_t hits_ = 0, misses_ = 0, insertions_ = 0, evictions_ = 0;
};

}  // namespace adrank
