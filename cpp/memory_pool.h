// MemoryPool: page-locked host buffers in power-of-two size classes, leased by RAII handles and
// reused, under a hard cap on bytes.
//
// Why: every batch gathers its input rows into contiguous buffers and the backend writes its outputs
// into more. Allocating and page-locking those per batch costs tens of microseconds (mmap + mlock,
// or cudaHostAlloc, which can take milliseconds); leasing a cached block costs a mutex and a pop.
// Page-locked (pinned) memory is what lets a GPU copy it asynchronously; on a CPU-only machine it
// still keeps the hot buffers resident.
//
// Where the memory comes from, in order:
//   1. cudaHostAlloc, when `use_cuda` and a CUDA runtime (cpp/cuda_runtime.h) loads at run time
//      and reports a device. No CUDA is needed to build.
//   2. mmap + mlock, when `lock_memory`.
//   3. If mlock fails (RLIMIT_MEMLOCK, no CAP_IPC_LOCK), the mmap'ed block is kept unlocked, the
//      stats say so (locked_bytes < total_bytes, locked == false) and `on_warning` is called once
//      for the pool. Never a silent fallback.
//
// Options (defaults and why):
//   max_bytes = 1 GiB       Hard cap on bytes held from the OS, in use plus cached. A batch of the
//                           largest bundled model (2048 rows x ~300 B in, 8 B out) needs < 1 MiB;
//                           1 GiB leaves room for many models, instances and GPU staging.
//   min_block_bytes = 4 KiB One page: smaller leases round up to it (mlock works on pages anyway).
//   lock_memory = true      Page-lock blocks (see above).
//   use_cuda = true         Try cudaHostAlloc first.
//   on_warning = stderr     Receives the one warning a pool may log; the Python binding routes it
//                           to the `adrank.core` logger.
//
// Behaviour at the cap (chosen and tested): a lease that would take the bytes held beyond
// `max_bytes` first frees cached idle blocks of other size classes; if the bytes in use plus the
// new block still exceed the cap, Acquire fails at once with RESOURCE_EXHAUSTED (it never blocks
// and never over-allocates). The batch that asked fails with that status; nothing else is touched.
//
// Latency: Acquire of a cached class is O(1) under one mutex (~50 ns uncontended); a miss costs an
// allocation from the OS. Lease destruction returns the block to its class's free list.
//
// Thread-safety: every method may be called from any thread. Leases may outlive the MemoryPool
// object: they keep its shared state alive until the last one is returned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "status.h"

namespace adrank {

struct MemoryPoolOptions {
  size_t max_bytes = size_t{1} << 30;
  size_t min_block_bytes = 4096;
  bool lock_memory = true;
  bool use_cuda = true;
  std::function<void(const std::string&)> on_warning;
};

struct MemoryPoolStats {
  size_t total_bytes = 0;       // held from the OS: in use + cached
  size_t in_use_bytes = 0;      // capacity of the blocks currently leased
  size_t locked_bytes = 0;      // of total_bytes, how many are page-locked
  bool locked = true;           // every block held is page-locked (true for an empty pool)
  uint64_t leases = 0;          // successful Acquire calls
  uint64_t misses = 0;          // Acquire calls that had to allocate from the OS
  uint64_t cap_rejections = 0;  // Acquire calls refused at the cap
  uint64_t lock_failures = 0;   // blocks whose page-locking failed
  std::string allocator;        // "cuda_host", "mlock" or "mmap" (unlocked by request)
};

class MemoryPool {
 public:
  struct Shared;  // implementation detail, kept alive by leases

  // A leased block. Move-only; returns the block to the pool when destroyed or Reset().
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();

    bool valid() const { return data_ != nullptr; }
    void* data() const { return data_; }
    size_t size() const { return size_; }          // bytes asked for
    size_t capacity() const { return capacity_; }  // bytes of the block
    bool locked() const { return locked_; }
    void Reset();

   private:
    friend class MemoryPool;
    std::shared_ptr<Shared> shared_;
    void* data_ = nullptr;
    size_t size_ = 0;
    size_t capacity_ = 0;
    int size_class_ = 0;
    bool locked_ = false;
  };

  static Status Create(const MemoryPoolOptions& options, std::shared_ptr<MemoryPool>* out);
  ~MemoryPool();

  // Leases a block of at least `bytes` (0 is treated as 1). On failure `out` is left invalid.
  Status Acquire(size_t bytes, Lease* out);

  // Frees every cached (not leased) block back to the OS.
  void Trim();

  MemoryPoolStats stats() const;
  const MemoryPoolOptions& options() const { return options_; }

 private:
  explicit MemoryPool(const MemoryPoolOptions& options);

  MemoryPoolOptions options_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace adrank
