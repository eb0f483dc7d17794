#include "memory_pool.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <mutex>
#include <system_error>
#include <utility>
#include <vector>

#include "cuda_runtime.h"

namespace adrank {
namespace {

enum class Allocator { kCudaHost, kMlock, kMmap };

const char* AllocatorName(Allocator allocator) {
  switch (allocator) {
    case Allocator::kCudaHost:
      return "cuda_host";
    case Allocator::kMlock:
      return "mlock";
    case Allocator::kMmap:
      return "mmap";
  }
  return "unknown";
}

bool IsPowerOfTwo(size_t n) { return n != 0 && (n & (n - 1)) == 0; }

Status ValidateOptions(const MemoryPoolOptions& options) {
  if (options.min_block_bytes < 64 || !IsPowerOfTwo(options.min_block_bytes)) {
    return InvalidArgument("MemoryPoolOptions.min_block_bytes must be a power of two >= 64, got " +
                           std::to_string(options.min_block_bytes));
  }
  if (options.max_bytes < options.min_block_bytes) {
    return InvalidArgument("MemoryPoolOptions.max_bytes (" + std::to_string(options.max_bytes) +
                           ") must be >= min_block_bytes (" + std::to_string(options.min_block_bytes) + ")");
  }
  return Status::Ok();
}

// Classes min, 2*min, ... up to the largest block that fits under the cap: a bigger one could never be held.
int CountSizeClasses(const MemoryPoolOptions& options) {
  int count = 1;
  for (size_t block = options.min_block_bytes; block <= options.max_bytes / 2; block <<= 1) ++count;
  return count;
}

// The system call itself: sanitizer runtimes replace mlock() with a no-op that reports success, which
// would hide from the tests exactly the failure this pool must report.
bool PageLock(void* data, size_t bytes) { return syscall(SYS_mlock, data, bytes) == 0; }

std::string ErrnoText(int error) { return std::generic_category().message(error); }

void WarnToStderr(const std::string& message) { std::fprintf(stderr, "%s\n", message.c_str()); }

}  // namespace

struct MemoryPool::Shared {
  // A block from the OS. `bytes` is its size class's size.
  struct Block {
    void* data = nullptr;
    size_t bytes = 0;
    bool locked = false;
  };

  // What Acquire hands out; `lock_error` is the errno of a failed mlock, 0 otherwise.
  struct Grant {
    Block block;
    int size_class = 0;
    int lock_error = 0;
  };

  Shared(const MemoryPoolOptions& options, std::shared_ptr<const CudaRuntime> cuda);
  ~Shared();

  Status Acquire(size_t bytes, Grant* grant);
  void Release(int size_class, const Block& block) noexcept;
  void Trim();
  MemoryPoolStats Stats() const;
  void WarnLockFailure(size_t bytes, int error);

 private:
  size_t ClassBytes(int size_class) const { return options_.min_block_bytes << size_class; }
  int SizeClass(size_t bytes) const;
  Status RejectLocked(size_t bytes, size_t block_bytes);
  std::vector<Block> TakeCachedLocked(size_t bytes);
  size_t CachedCountLocked() const;
  Status Allocate(size_t bytes, Block* block, int* lock_error) const;
  void Free(const Block& block) const;

  const MemoryPoolOptions options_;
  const int num_classes_;
  // Null unless blocks come from cudaHostAlloc; kept loaded until the destructor has freed them.
  const std::shared_ptr<const CudaRuntime> cuda_;
  const Allocator allocator_;
  std::atomic<bool> warned_{false};

  mutable std::mutex mu_;
  std::vector<std::vector<Block>> free_lists_;  // per class: cached idle blocks
  std::vector<size_t> blocks_held_;             // per class: cached + leased + being allocated
  size_t total_bytes_ = 0;                      // includes pending_bytes_
  size_t in_use_bytes_ = 0;                     // includes pending_bytes_
  size_t pending_bytes_ = 0;                    // reserved under the cap, being allocated outside the lock
  size_t locked_bytes_ = 0;
  uint64_t leases_ = 0;
  uint64_t misses_ = 0;
  uint64_t cap_rejections_ = 0;
  uint64_t lock_failures_ = 0;
};

MemoryPool::Shared::Shared(const MemoryPoolOptions& options, std::shared_ptr<const CudaRuntime> cuda)
    : options_(options),
      num_classes_(CountSizeClasses(options)),
      cuda_(std::move(cuda)),
      allocator_(cuda_                 ? Allocator::kCudaHost
                 : options.lock_memory ? Allocator::kMlock
                                       : Allocator::kMmap),
      free_lists_(num_classes_),
      blocks_held_(num_classes_, 0) {}

MemoryPool::Shared::~Shared() {
  // Only reached when no lease is left, so every block is back in a free list.
  for (const auto& free_list : free_lists_) {
    for (const Block& block : free_list) Free(block);
  }
}

int MemoryPool::Shared::SizeClass(size_t bytes) const {
  for (int size_class = 0; size_class < num_classes_; ++size_class) {
    if (ClassBytes(size_class) >= bytes) return size_class;
  }
  return -1;
}

Status MemoryPool::Shared::Acquire(size_t bytes, Grant* grant) {
  bytes = std::max<size_t>(bytes, 1);
  const int size_class = SizeClass(bytes);
  const size_t block_bytes = size_class < 0 ? 0 : ClassBytes(size_class);
  std::vector<Block> evicted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (size_class < 0) return RejectLocked(bytes, block_bytes);
    auto& free_list = free_lists_[size_class];
    if (!free_list.empty()) {
      grant->block = free_list.back();
      grant->size_class = size_class;
      grant->lock_error = 0;
      free_list.pop_back();
      in_use_bytes_ += block_bytes;
      ++leases_;
      return Status::Ok();
    }
    // Checked before evicting anything: a refused lease leaves the cache as it was.
    if (in_use_bytes_ + block_bytes > options_.max_bytes) return RejectLocked(bytes, block_bytes);
    // Room for this block's return, so that Release (called from noexcept destructors) cannot throw.
    free_list.reserve(blocks_held_[size_class] + 1);
    if (total_bytes_ + block_bytes > options_.max_bytes) {
      evicted = TakeCachedLocked(total_bytes_ + block_bytes - options_.max_bytes);
    }
    // Reserved now so that concurrent misses cannot together pass the cap while this one allocates
    // outside the lock.
    total_bytes_ += block_bytes;
    in_use_bytes_ += block_bytes;
    pending_bytes_ += block_bytes;
    ++blocks_held_[size_class];
  }
  for (const Block& block : evicted) Free(block);

  Block block;
  int lock_error = 0;
  Status status = Allocate(block_bytes, &block, &lock_error);
  std::lock_guard<std::mutex> lock(mu_);
  pending_bytes_ -= block_bytes;
  if (!status.ok()) {
    total_bytes_ -= block_bytes;
    in_use_bytes_ -= block_bytes;
    --blocks_held_[size_class];
    return status;
  }
  if (block.locked) locked_bytes_ += block_bytes;
  if (lock_error != 0) ++lock_failures_;
  ++misses_;
  ++leases_;
  grant->block = block;
  grant->size_class = size_class;
  grant->lock_error = lock_error;
  return Status::Ok();
}

Status MemoryPool::Shared::RejectLocked(size_t bytes, size_t block_bytes) {
  ++cap_rejections_;
  std::string message = "MemoryPool: cannot lease " + std::to_string(bytes) + " bytes";
  if (block_bytes != 0) message += " (a block of " + std::to_string(block_bytes) + " bytes)";
  message += ": max_bytes is " + std::to_string(options_.max_bytes) + " and " +
             std::to_string(in_use_bytes_ - pending_bytes_) + " bytes are in use";
  return ResourceExhausted(std::move(message));
}

// Largest classes first: freeing the fewest blocks costs the fewest OS calls.
std::vector<MemoryPool::Shared::Block> MemoryPool::Shared::TakeCachedLocked(size_t bytes) {
  std::vector<Block> taken;
  // Reserved up front so that no push_back can throw once blocks have left the free lists.
  taken.reserve(CachedCountLocked());
  size_t taken_bytes = 0;
  for (int size_class = num_classes_ - 1; size_class >= 0 && taken_bytes < bytes; --size_class) {
    auto& free_list = free_lists_[size_class];
    while (!free_list.empty() && taken_bytes < bytes) {
      const Block& block = free_list.back();
      taken.push_back(block);
      taken_bytes += block.bytes;
      total_bytes_ -= block.bytes;
      if (block.locked) locked_bytes_ -= block.bytes;
      --blocks_held_[size_class];
      free_list.pop_back();
    }
  }
  return taken;
}

size_t MemoryPool::Shared::CachedCountLocked() const {
  size_t count = 0;
  for (const auto& free_list : free_lists_) count += free_list.size();
  return count;
}

void MemoryPool::Shared::Release(int size_class, const Block& block) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  free_lists_[size_class].push_back(block);
  in_use_bytes_ -= block.bytes;
}

void MemoryPool::Shared::Trim() {
  std::vector<Block> cached;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cached = TakeCachedLocked(std::numeric_limits<size_t>::max());
  }
  for (const Block& block : cached) Free(block);
}

MemoryPoolStats MemoryPool::Shared::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  MemoryPoolStats stats;
  // Bytes still being allocated are not held yet.
  stats.total_bytes = total_bytes_ - pending_bytes_;
  stats.in_use_bytes = in_use_bytes_ - pending_bytes_;
  stats.locked_bytes = locked_bytes_;
  stats.locked = stats.locked_bytes == stats.total_bytes;
  stats.leases = leases_;
  stats.misses = misses_;
  stats.cap_rejections = cap_rejections_;
  stats.lock_failures = lock_failures_;
  stats.allocator = AllocatorName(allocator_);
  return stats;
}

Status MemoryPool::Shared::Allocate(size_t bytes, Block* block, int* lock_error) const {
  if (allocator_ == Allocator::kCudaHost) {
    void* data = nullptr;
    Status status = cuda_->HostAlloc(bytes, &data);
    if (!status.ok()) return ResourceExhausted("MemoryPool: " + status.message());
    *block = Block{data, bytes, true};
    return Status::Ok();
  }
  void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) {
    return ResourceExhausted("MemoryPool: mmap of " + std::to_string(bytes) + " bytes failed: " + ErrnoText(errno));
  }
  bool locked = false;
  if (allocator_ == Allocator::kMlock) {
    locked = PageLock(data, bytes);
    if (!locked) *lock_error = errno;
  }
  *block = Block{data, bytes, locked};
  return Status::Ok();
}

void MemoryPool::Shared::Free(const Block& block) const {
  if (allocator_ == Allocator::kCudaHost) {
    cuda_->FreeHost(block.data);
  } else {
    munmap(block.data, block.bytes);  // also unlocks
  }
}

void MemoryPool::Shared::WarnLockFailure(size_t bytes, int error) {
  if (warned_.exchange(true)) return;
  const std::string message =
      "adrank MemoryPool: page-locking failed (mlock of " + std::to_string(bytes) + " bytes: " + ErrnoText(error) +
      "); its blocks stay pageable and stats report locked=false, further failures are counted in lock_failures. "
      "Raise RLIMIT_MEMLOCK (ulimit -l, systemd LimitMEMLOCK, docker --ulimit memlock) or grant CAP_IPC_LOCK.";
  if (options_.on_warning) {
    options_.on_warning(message);
  } else {
    WarnToStderr(message);
  }
}

MemoryPool::Lease::Lease(Lease&& other) noexcept
    : shared_(std::move(other.shared_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)),
      size_class_(std::exchange(other.size_class_, 0)),
      locked_(std::exchange(other.locked_, false)) {}

MemoryPool::Lease& MemoryPool::Lease::operator=(Lease&& other) noexcept {
  if (this == &other) return *this;
  Reset();
  shared_ = std::move(other.shared_);
  data_ = std::exchange(other.data_, nullptr);
  size_ = std::exchange(other.size_, 0);
  capacity_ = std::exchange(other.capacity_, 0);
  size_class_ = std::exchange(other.size_class_, 0);
  locked_ = std::exchange(other.locked_, false);
  return *this;
}

MemoryPool::Lease::~Lease() { Reset(); }

void MemoryPool::Lease::Reset() {
  if (shared_) shared_->Release(size_class_, Shared::Block{data_, capacity_, locked_});
  // May be the last reference (the pool is gone): then this frees every cached block.
  shared_.reset();
  data_ = nullptr;
  size_ = 0;
  capacity_ = 0;
  size_class_ = 0;
  locked_ = false;
}

MemoryPool::MemoryPool(const MemoryPoolOptions& options) : options_(options) {}

MemoryPool::~MemoryPool() { Trim(); }

Status MemoryPool::Create(const MemoryPoolOptions& options, std::shared_ptr<MemoryPool>* out) {
  Status status = ValidateOptions(options);
  if (!status.ok()) return status;
  // cudaHostAlloc always pins, so it is only tried when page-locking was asked for.
  std::shared_ptr<const CudaRuntime> cuda = options.use_cuda && options.lock_memory ? CudaRuntime::Default() : nullptr;
  // std::make_shared cannot reach the private constructor; the pointer is owned at once.
  std::shared_ptr<MemoryPool> pool(new MemoryPool(options));
  pool->shared_ = std::make_shared<Shared>(options, std::move(cuda));
  *out = std::move(pool);
  return Status::Ok();
}

Status MemoryPool::Acquire(size_t bytes, Lease* out) {
  // Returned first: its block may be what makes room under the cap.
  out->Reset();
  Shared::Grant grant;
  Status status = shared_->Acquire(bytes, &grant);
  if (!status.ok()) return status;
  out->shared_ = shared_;
  out->data_ = grant.block.data;
  out->size_ = std::max<size_t>(bytes, 1);
  out->capacity_ = grant.block.bytes;
  out->size_class_ = grant.size_class;
  out->locked_ = grant.block.locked;
  // After `out` owns the block, so that a throwing callback cannot leak it.
  if (grant.lock_error != 0) shared_->WarnLockFailure(grant.block.bytes, grant.lock_error);
  return Status::Ok();
}

void MemoryPool::Trim() {
  if (shared_) shared_->Trim();
}

MemoryPoolStats MemoryPool::stats() const { return shared_->Stats(); }

}  // namespace adrank
