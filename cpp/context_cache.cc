#include "context_cache.h"

#include <cstring>
#include <iterator>
#include <utility>

namespace adrank {

ContextCache::ContextCache(ContextCacheOptions options)
    : options_(options), index_(0, KeyHash{options.hash != nullptr ? options.hash : &ContextCache::Hash}) {}

uint64_t ContextCache::Hash(std::string_view key) {
  uint64_t hash = 14695981039346656037ULL;  // FNV-1a 64-bit offset basis
  for (const char c : key) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 1099511628211ULL;  // FNV-1a 64-bit prime
  }
  return hash;
}

bool ContextCache::Lookup(std::string_view key, void* out, size_t out_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto found = index_.find(key);  // the map compares the full key bytes on a hash match
  if (found == index_.end() || found->second->value.size() != out_bytes) {
    ++misses_;
    return false;
  }
  const Lru::iterator entry = found->second;
  lru_.splice(lru_.begin(), lru_, entry);  // iterators stay valid: the index needs no update
  std::memcpy(out, entry->value.data(), out_bytes);
  ++hits_;
  return true;
}

bool ContextCache::Insert(std::string_view key, const void* value, size_t bytes) {
  const size_t cost = EntryBytes(key.size(), bytes);
  if (cost > options_.max_bytes) return false;
  const auto* data = static_cast<const uint8_t*>(value);
  std::lock_guard<std::mutex> lock(mu_);
  const auto found = index_.find(key);
  if (found != index_.end()) EraseLocked(found->second);  // replaced, not evicted
  while (bytes_ + cost > options_.max_bytes) {
    EraseLocked(std::prev(lru_.end()));
    ++evictions_;
  }
  lru_.push_front(Entry{std::string(key), std::vector<uint8_t>(data, data + bytes)});
  index_.emplace(std::string_view(lru_.front().key), lru_.begin());
  bytes_ += cost;
  ++insertions_;
  return true;
}

void ContextCache::EraseLocked(Lru::iterator entry) {
  bytes_ -= EntryBytes(entry->key.size(), entry->value.size());
  index_.erase(std::string_view(entry->key));
  lru_.erase(entry);
}

void ContextCache::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  index_.clear();
  lru_.clear();
  bytes_ = 0;
}

ContextCacheStats ContextCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  ContextCacheStats s;
  s.hits = hits_;
  s.misses = misses_;
  s.insertions = insertions_;
  s.evictions = evictions_;
  s.bytes = bytes_;
  s.entries = index_.size();
  s.max_bytes = options_.max_bytes;
  return s;
}

}  // namespace adrank
