// core_benchmark: what the core itself costs per request, with a backend that does no work.
//
// Everything a request pays between the caller and the model is measured here: validation and
// queueing in Submit, the worker's wake-up and scheduling, batch formation, the gather into pooled
// buffers, the scatter into the request's own outputs, and the completion. The backend only writes
// zeros into its outputs, so any time reported is the core's (plus the few hundred nanoseconds the
// benchmark spends building each request, measured separately and printed as "client build").
//
// Shapes are those of the CTR model: candidate inputs `dense` float32 [13] and `sparse` int64 [26],
// context input `user` float32 [32] (optional, --no-context drops it), output `ctr` float32 [].
//
// Each configuration (rows per request x outstanding requests per thread x submitting threads) runs
// closed loop: every submitting thread keeps at most `outstanding` requests in flight and submits the
// next as soon as one completes. One outstanding request per thread measures latency without
// queueing behind one's own requests; 16 measures what one worker sustains. A configuration stops at
// `--seconds` or at `--requests` measured requests, whichever comes first; the first tenth of its
// time (at most 200 ms) warms the pool's buffers and the allocator and is not counted.
//
// Reported per configuration:
//   p50/p99 latency   from just before ModelQueue::Submit to the start of the completion callback
//                     (steady_clock), over requests submitted in the measured window;
//   cpu/req           process CPU time (CLOCK_PROCESS_CPUTIME_ID) over the window divided by the
//                     requests completed in it: the cost of a request independent of wake-up
//                     latency. Split into the submitting threads' share (request build, Submit,
//                     waiting) and the rest (the worker, and whatever else runs);
//   req/s, rows/s     completions per second, and rows handed to the backend per second;
//   user/sys          the same CPU time split by mode (getrusage): sys is the wake-ups;
//   rows/batch        mean real rows per backend call; csw/req: context switches per request;
//   reject            submissions refused with RESOURCE_EXHAUSTED (queue full); the thread backs off
//                     exponentially and retries, as a well-behaved client would.
// Before the runs, Batcher::Submit is also timed alone (one thread, no worker, accepted and refused):
// the floor of the submit side, with no wake-up in it.
//
// The benchmark always ends by itself: requests still pending two seconds after a window closes mean
// the core stopped dispatching; that row is marked STALLED, the pool's Shutdown flushes them, the
// remaining configurations are skipped and the exit status is 2. A watchdog ends the process (status
// 3) if even the shutdown hangs.
//
// Usage: core_benchmark [--threads 1,8,64] [--rows 100,1] [--outstanding 1,16] [--seconds 2]
//                       [--requests N] [--workers 1] [--delay-us 0] [--max-batch-rows 1024]
//                       [--no-context] [--json PATH]
// The README runs it pinned to one core (`taskset -c 0 core_benchmark`: submitters and the worker
// share the core, which is the "on one core" claim) and unpinned.

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "batch.h"
#include "batcher.h"
#include "clock.h"
#include "memory_pool.h"
#include "request.h"
#include "status.h"
#include "tensor.h"
#include "thread_pool.h"
#include "version_stats.h"

namespace adrank {
namespace {

constexpr int64_t kDenseWidth = 13;
constexpr int64_t kSparseWidth = 26;
constexpr int64_t kUserWidth = 32;

struct Flags {
  std::vector<int> threads = {1, 8, 64};
  std::vector<int64_t> rows = {100, 1};
  std::vector<int> outstanding = {1, 16};
  double seconds = 2.0;
  // Per configuration; the time limit is what normally ends a run, this bounds a fast machine.
  uint64_t requests = 20000000;
  int workers = 1;
  int64_t delay_us = 0;
  int64_t max_batch_rows = 1024;
  bool context = true;
  std::string json_path;
};

struct Machine {
  std::string cpu_model = "unknown";
  long online_cpus = 0;
  int allowed_cpus = 0;  // what `nproc` reports: fewer than online when run under taskset
  std::string allowed_list;
  std::string kernel;
  std::string compiler = __VERSION__;
  // Other processes compete for the cores: a busy machine explains a slow run.
  std::string load_average;
};

// The figures of one configuration.
struct Result {
  int64_t rows = 0;
  int threads = 0;
  int outstanding = 0;
  double window_s = 0;
  uint64_t requests = 0;   // completed in the window
  uint64_t rows_done = 0;  // handed to the backend in the window
  uint64_t batches = 0;
  uint64_t samples = 0;  // latency samples
  double p50_us = NAN, p99_us = NAN, p999_us = NAN, max_us = NAN, mean_us = NAN;
  double cpu_us_per_req = NAN, submit_cpu_us_per_req = NAN, other_cpu_us_per_req = NAN;
  // The same process CPU split by mode: system time is the wake-ups (futex, scheduler) and mlock.
  double user_us_per_req = NAN, sys_us_per_req = NAN;
  double req_per_s = 0, rows_per_s = 0, rows_per_batch = NAN, csw_per_req = NAN;
  uint64_t rejected = 0;  // RESOURCE_EXHAUSTED at Submit (queue full), retried
  uint64_t failed = 0;    // completions with a non-OK status
  // Requests still in flight a grace period after the window closed: the core stopped dispatching.
  // They complete only when ThreadPool::Shutdown flushes the queue.
  bool stalled = false;
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "core_benchmark: %s\n", message.c_str());
  std::exit(1);
}

void CheckOk(const Status& status, const char* what) {
  if (!status.ok()) Die(std::string(what) + ": " + status.ToString());
}

template <typename T>
std::vector<T> ParseList(const std::string& flag, const std::string& text) {
  std::vector<T> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    const long long value = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || value < 1) {
      Die(flag + " wants positive integers separated by commas, got '" + text + "'");
    }
    values.push_back(static_cast<T>(value));
  }
  if (values.empty()) Die(flag + " needs at least one value");
  return values;
}

void Usage() {
  std::printf(
      "usage: core_benchmark [--threads 1,8,64] [--rows 100,1] [--outstanding 1,16] [--seconds 2]\n"
      "                      [--requests N] [--workers 1] [--delay-us 0] [--max-batch-rows 1024]\n"
      "                      [--no-context] [--json PATH]\n"
      "Lists are comma-separated; every combination runs. --seconds and --requests bound each one.\n");
}

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    const size_t eq = arg.find('=');
    const bool has_inline_value = eq != std::string::npos;
    if (has_inline_value) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto next = [&]() -> std::string {
      if (has_inline_value) return value;
      if (i + 1 >= argc) Die(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      Usage();
      std::exit(0);
    } else if (arg == "--threads") {
      flags.threads = ParseList<int>(arg, next());
    } else if (arg == "--rows") {
      flags.rows = ParseList<int64_t>(arg, next());
    } else if (arg == "--outstanding") {
      flags.outstanding = ParseList<int>(arg, next());
    } else if (arg == "--seconds") {
      flags.seconds = std::atof(next().c_str());
      if (!(flags.seconds > 0)) Die("--seconds must be > 0");
    } else if (arg == "--requests") {
      flags.requests = ParseList<uint64_t>(arg, next()).front();
    } else if (arg == "--workers") {
      flags.workers = ParseList<int>(arg, next()).front();
    } else if (arg == "--delay-us") {
      const std::string text = next();
      flags.delay_us = text == "0" ? 0 : ParseList<int64_t>(arg, text).front();
    } else if (arg == "--max-batch-rows") {
      flags.max_batch_rows = ParseList<int64_t>(arg, next()).front();
    } else if (arg == "--no-context") {
      flags.context = false;
    } else if (arg == "--json") {
      flags.json_path = next();
    } else {
      Usage();
      Die("unknown flag '" + arg + "'");
    }
  }
  return flags;
}

Machine DescribeMachine() {
  Machine machine;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) machine.cpu_model = line.substr(line.find_first_not_of(" \t", colon + 1));
      break;
    }
  }
  machine.online_cpus = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    machine.allowed_cpus = CPU_COUNT(&set);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &set)) continue;
      if (!machine.allowed_list.empty()) machine.allowed_list += ",";
      machine.allowed_list += std::to_string(cpu);
    }
  }
  std::ifstream loadavg("/proc/loadavg");
  double one = 0, five = 0, fifteen = 0;
  if (loadavg >> one >> five >> fifteen) {
    char buffer[64];
    std::snprintf(buffer, sizeof(buffer), "%.2f %.2f %.2f", one, five, fifteen);
    machine.load_average = buffer;
  }
  utsname name;
  if (uname(&name) == 0) machine.kernel = std::string(name.sysname) + " " + name.release + " " + name.machine;
  return machine;
}

int64_t ClockNanos(clockid_t clock) {
  timespec ts;
  if (clock_gettime(clock, &ts) != 0) return 0;
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

ModelSignature CtrSignature(bool context) {
  ModelSignature signature;
  signature.inputs.push_back(TensorSpec{"dense", DType::kFloat32, {kDenseWidth}, Role::kCandidate});
  signature.inputs.push_back(TensorSpec{"sparse", DType::kInt64, {kSparseWidth}, Role::kCandidate});
  if (context) signature.inputs.push_back(TensorSpec{"user", DType::kFloat32, {kUserWidth}, Role::kContext});
  signature.outputs.push_back(TensorSpec{"ctr", DType::kFloat32, {}, Role::kCandidate});
  return signature;
}

enum Phase : int { kWarmUp = 0, kMeasure = 1, kStop = 2 };

// How long requests in flight at the end of a window may take to complete before the core is
// declared stalled. Thousands of times a no-op batch's execution.
constexpr std::chrono::seconds kDrainGrace{2};
// Beyond the configured time, the grace and the teardown: the benchmark exits rather than hang if
// even ThreadPool::Shutdown does not return.
constexpr std::chrono::seconds kWatchdogSlack{20};

// A submitter refused with RESOURCE_EXHAUSTED waits this long before retrying, doubling per refusal.
constexpr std::chrono::microseconds kFirstBackoff{100};
constexpr std::chrono::microseconds kMaxBackoff{3200};

// Ends the process if a configuration outlives its bound; disarmed by destruction.
class Watchdog {
 public:
  Watchdog(std::chrono::duration<double> limit, std::string what) : what_(std::move(what)) {
    thread_ = std::thread([this, limit] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, limit, [&] { return disarmed_; })) {
        std::fprintf(stderr, "core_benchmark: %s did not finish within %.0f s: the core hangs (even Shutdown)\n",
                     what_.c_str(), limit.count());
        std::_Exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      disarmed_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  const std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool disarmed_ = false;
  std::thread thread_;
};

// State every submitting thread and the completions share during one configuration.
struct RunState {
  std::atomic<int> phase{kWarmUp};
  std::atomic<int64_t> measure_start_ns{INT64_MAX};  // steady_clock; requests submitted after it are measured
  std::atomic<uint64_t> completed{0};
  std::atomic<uint64_t> failed{0};
  std::atomic<uint64_t> backend_rows{0};
  std::atomic<uint64_t> backend_batches{0};

  // Submitters that finished their share of --requests; the main thread ends the window early when
  // all have.
  std::mutex done_mu;
  std::condition_variable done_cv;
  int done = 0;
};

// One submitting thread: its own input rows (so that threads do not share cache lines they read)
// and its closed loop of `outstanding` requests.
class Submitter {
 public:
  Submitter(int64_t rows, bool context, int outstanding, uint64_t quota, ModelQueue* model, RunState* run)
      : outstanding_(outstanding), quota_(quota), model_(model), run_(run) {
    dense_.assign(static_cast<size_t>(rows * kDenseWidth), 0.5f);
    sparse_.resize(static_cast<size_t>(rows * kSparseWidth));
    for (size_t i = 0; i < sparse_.size(); ++i) sparse_[i] = static_cast<int64_t>(i * 2654435761u % 1000);
    user_.assign(static_cast<size_t>(kUserWidth), 0.25f);
    template_.candidates.push_back(
        TensorView{"dense", DType::kFloat32, {rows, kDenseWidth}, dense_.data(), dense_.size() * sizeof(float)});
    template_.candidates.push_back(
        TensorView{"sparse", DType::kInt64, {rows, kSparseWidth}, sparse_.data(), sparse_.size() * sizeof(int64_t)});
    if (context) {
      template_.context.push_back(
          TensorView{"user", DType::kFloat32, {1, kUserWidth}, user_.data(), user_.size() * sizeof(float)});
    }
  }

  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  // Valid while the thread runs: it stays alive until kStop so that the window's end can read it.
  int64_t CpuNanos() {
    clockid_t clock;
    if (pthread_getcpuclockid(thread_.native_handle(), &clock) != 0) return 0;
    return ClockNanos(clock);
  }

  uint64_t rejected() const { return rejected_; }
  std::vector<int64_t>& latencies_ns() { return latencies_ns_; }

  // What a front end does per call: copies of the borrowed views. The benchmark measures this
  // separately so that it can be told apart from the core's share.
  Request BuildRequest() const {
    Request request;
    request.candidates = template_.candidates;
    request.context = template_.context;
    return request;
  }
  // Set after the views are built so that the latency clock starts just before Submit. Two words of
  // capture: std::function keeps them inline, no allocation.
  void SetCompletion(TimePoint submit_time, Request* request) {
    request->on_complete = [this, submit_time](RequestResult&& result) { OnComplete(submit_time, result); };
  }

 private:
  void Loop() {
    uint64_t measured = 0;
    auto backoff = kFirstBackoff;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return inflight_ < outstanding_; });
      const int phase = run_->phase.load(std::memory_order_acquire);
      if (phase == kStop || (phase == kMeasure && measured >= quota_)) break;
      // Counted before Submit: the completion may fire on the worker before Submit returns.
      ++inflight_;
      lock.unlock();
      Request request = BuildRequest();
      const TimePoint submit_time = std::chrono::steady_clock::now();
      SetCompletion(submit_time, &request);
      const Status status = model_->Submit(std::move(request));
      lock.lock();
      if (status.ok()) {
        if (phase == kMeasure) ++measured;
        backoff = kFirstBackoff;
        continue;
      }
      --inflight_;
      // After a stall the main thread shuts the pool down: its refusals then end the loop.
      if (status.code() == StatusCode::kUnavailable && run_->phase.load() == kStop) break;
      if (status.code() != StatusCode::kResourceExhausted) Die("Submit: " + status.ToString());
      // Queue full (threads x outstanding x rows above max_queue_rows): the server said no at once,
      // as designed. Back off exponentially as a well-behaved client does; retrying at once, or on
      // each of our own completions, makes the submitters outbid the worker for the core.
      ++rejected_;
      lock.unlock();
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, kMaxBackoff);
      lock.lock();
    }
    cv_.wait(lock, [&] { return inflight_ == 0; });
    lock.unlock();
    std::unique_lock<std::mutex> done_lock(run_->done_mu);
    ++run_->done;
    run_->done_cv.notify_all();
    run_->done_cv.wait(done_lock, [&] { return run_->phase.load() == kStop; });
  }

  void OnComplete(TimePoint submit_time, const RequestResult& result) {
    const TimePoint now = std::chrono::steady_clock::now();
    if (!result.status.ok()) run_->failed.fetch_add(1, std::memory_order_relaxed);
    run_->completed.fetch_add(1, std::memory_order_relaxed);
    const bool measured =
        submit_time.time_since_epoch().count() >= run_->measure_start_ns.load(std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (measured) latencies_ns_.push_back((now - submit_time).count());
      --inflight_;
    }
    // Outside the lock so that the woken thread does not block on it at once. Safe: the pool (and
    // with it every worker that may be here) is shut down before any Submitter is destroyed.
    cv_.notify_one();
  }

  const int outstanding_;
  const uint64_t quota_;
  ModelQueue* const model_;
  RunState* const run_;
  std::vector<float> dense_;
  std::vector<int64_t> sparse_;
  std::vector<float> user_;
  Request template_;
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable cv_;
  int inflight_ = 0;                   // guarded by mu_
  std::vector<int64_t> latencies_ns_;  // guarded by mu_
  uint64_t rejected_ = 0;              // touched by the thread only
};

// Everything read at both ends of the measured window.
struct Snapshot {
  int64_t wall_ns = 0;
  int64_t process_cpu_ns = 0;
  int64_t submitters_cpu_ns = 0;
  int64_t context_switches = 0;
  int64_t user_ns = 0;
  int64_t sys_ns = 0;
  uint64_t completed = 0;
  uint64_t rows = 0;
  uint64_t batches = 0;
};

Snapshot Take(const RunState& run, std::vector<std::unique_ptr<Submitter>>& submitters) {
  Snapshot s;
  s.wall_ns = std::chrono::steady_clock::now().time_since_epoch().count();
  s.process_cpu_ns = ClockNanos(CLOCK_PROCESS_CPUTIME_ID);
  for (auto& submitter : submitters) s.submitters_cpu_ns += submitter->CpuNanos();
  rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    s.context_switches = usage.ru_nvcsw + usage.ru_nivcsw;
    s.user_ns = int64_t{usage.ru_utime.tv_sec} * 1000000000 + int64_t{usage.ru_utime.tv_usec} * 1000;
    s.sys_ns = int64_t{usage.ru_stime.tv_sec} * 1000000000 + int64_t{usage.ru_stime.tv_usec} * 1000;
  }
  s.completed = run.completed.load();
  s.rows = run.backend_rows.load();
  s.batches = run.backend_batches.load();
  return s;
}

double Percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return NAN;
  const size_t index = std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[index]) / 1000.0;
}

Result RunConfiguration(const Flags& flags, int64_t rows, int outstanding, int threads, std::string* allocator) {
  const Watchdog watchdog(std::chrono::duration<double>(flags.seconds) + kDrainGrace + kWatchdogSlack,
                          "configuration rows=" + std::to_string(rows) + " threads=" + std::to_string(threads) +
                              " outstanding=" + std::to_string(outstanding));
  RunState run;
  // The pool's one warning (mlock refused) goes to the report, not into the middle of the table.
  std::string pool_warning;
  MemoryPoolOptions pool_options;
  pool_options.on_warning = [&pool_warning](const std::string& message) { pool_warning = message; };
  std::shared_ptr<MemoryPool> memory_pool;
  CheckOk(MemoryPool::Create(pool_options, &memory_pool), "MemoryPool::Create");

  // Declared before the thread pool so that they are destroyed after it: its shutdown joins the
  // workers, after which no completion can touch a Submitter.
  std::vector<std::unique_ptr<Submitter>> submitters;
  std::unique_ptr<ThreadPool> pool;
  ThreadPoolOptions pool_opts;
  pool_opts.num_workers = flags.workers;
  pool_opts.memory_pool = memory_pool;
  CheckOk(ThreadPool::Create(pool_opts, &pool), "ThreadPool::Create");

  ModelOptions model_options;
  model_options.name = "ctr";
  model_options.signature = CtrSignature(flags.context);
  model_options.batching.max_batch_rows = flags.max_batch_rows;
  model_options.batching.max_queue_delay_us = flags.delay_us;
  model_options.batching.idle_dispatch = true;
  model_options.instances = 1;
  RunState* run_ptr = &run;
  model_options.backend = [run_ptr](BatchIO& io) {
    for (BatchTensor& output : io.outputs) std::memset(output.data, 0, output.byte_size);
    run_ptr->backend_rows.fetch_add(static_cast<uint64_t>(io.real_rows), std::memory_order_relaxed);
    run_ptr->backend_batches.fetch_add(1, std::memory_order_relaxed);
    return Status::Ok();
  };
  std::shared_ptr<ModelQueue> model;
  CheckOk(pool->AddModel(std::move(model_options), &model), "AddModel");

  const uint64_t quota = (flags.requests + static_cast<uint64_t>(threads) - 1) / static_cast<uint64_t>(threads);
  for (int t = 0; t < threads; ++t) {
    submitters.push_back(std::make_unique<Submitter>(rows, flags.context, outstanding, quota, model.get(), &run));
  }
  for (auto& submitter : submitters) submitter->Start();

  const auto warm_up = std::chrono::duration<double>(std::min(0.2, flags.seconds / 10));
  std::this_thread::sleep_for(warm_up);
  const Snapshot begin = Take(run, submitters);
  run.measure_start_ns.store(begin.wall_ns);
  run.phase.store(kMeasure, std::memory_order_release);
  {
    std::unique_lock<std::mutex> lock(run.done_mu);
    run.done_cv.wait_for(lock, std::chrono::duration<double>(flags.seconds) - warm_up,
                         [&] { return run.done == threads; });
  }
  const Snapshot end = Take(run, submitters);
  bool stalled = false;
  {
    std::unique_lock<std::mutex> lock(run.done_mu);
    run.phase.store(kStop);
    run.done_cv.notify_all();
    // Every request in flight is one the core has had at least this long: a healthy core completes
    // it in microseconds (no-op backend), so one still pending means the scheduler stopped.
    stalled = !run.done_cv.wait_for(lock, kDrainGrace, [&] { return run.done == threads; });
  }
  // Shutdown flushes whatever is queued, so this also unblocks the submitters after a stall.
  pool->Shutdown();
  for (auto& submitter : submitters) submitter->Join();
  *allocator = memory_pool->stats().allocator + (memory_pool->stats().locked ? " (page-locked)" : " (NOT locked)");
  if (!pool_warning.empty()) *allocator += ": " + pool_warning;

  Result r;
  r.stalled = stalled;
  r.rows = rows;
  r.threads = threads;
  r.outstanding = outstanding;
  r.window_s = static_cast<double>(end.wall_ns - begin.wall_ns) / 1e9;
  r.requests = end.completed - begin.completed;
  r.rows_done = end.rows - begin.rows;
  r.batches = end.batches - begin.batches;
  r.failed = run.failed.load();
  std::vector<int64_t> latencies;
  for (auto& submitter : submitters) {
    r.rejected += submitter->rejected();
    latencies.insert(latencies.end(), submitter->latencies_ns().begin(), submitter->latencies_ns().end());
  }
  std::sort(latencies.begin(), latencies.end());
  r.samples = latencies.size();
  if (!latencies.empty()) {
    r.p50_us = Percentile(latencies, 0.50);
    r.p99_us = Percentile(latencies, 0.99);
    r.p999_us = Percentile(latencies, 0.999);
    r.max_us = static_cast<double>(latencies.back()) / 1000.0;
    double sum = 0;
    for (int64_t ns : latencies) sum += static_cast<double>(ns);
    r.mean_us = sum / static_cast<double>(latencies.size()) / 1000.0;
  }
  if (r.window_s > 0) {
    r.req_per_s = static_cast<double>(r.requests) / r.window_s;
    r.rows_per_s = static_cast<double>(r.rows_done) / r.window_s;
  }
  if (r.requests > 0) {
    const double n = static_cast<double>(r.requests);
    const double process = static_cast<double>(end.process_cpu_ns - begin.process_cpu_ns);
    const double submit = static_cast<double>(end.submitters_cpu_ns - begin.submitters_cpu_ns);
    r.cpu_us_per_req = process / n / 1000.0;
    r.submit_cpu_us_per_req = submit / n / 1000.0;
    r.other_cpu_us_per_req = (process - submit) / n / 1000.0;
    r.csw_per_req = static_cast<double>(end.context_switches - begin.context_switches) / n;
    r.user_us_per_req = static_cast<double>(end.user_ns - begin.user_ns) / n / 1000.0;
    r.sys_us_per_req = static_cast<double>(end.sys_ns - begin.sys_ns) / n / 1000.0;
  }
  if (r.batches > 0) r.rows_per_batch = static_cast<double>(r.rows_done) / static_cast<double>(r.batches);
  return r;
}

// CPU time the benchmark itself spends per request building it (views copied, completion set), on
// this thread, so that the reader can subtract it from the submitting threads' share.
double MeasureClientBuildNanos(bool context) {
  RunState run;
  Submitter submitter(100, context, 1, 0, nullptr, &run);
  constexpr int kIterations = 200000;
  const int64_t start = ClockNanos(CLOCK_THREAD_CPUTIME_ID);
  size_t sink = 0;
  for (int i = 0; i < kIterations; ++i) {
    Request request = submitter.BuildRequest();
    submitter.SetCompletion(std::chrono::steady_clock::now(), &request);
    sink += request.candidates.size();
  }
  const int64_t elapsed = ClockNanos(CLOCK_THREAD_CPUTIME_ID) - start;
  if (sink == 0) Die("client build calibration built nothing");
  return static_cast<double>(elapsed) / kIterations;
}

// What the metrics' per-request accounting costs: VersionStats::Record of an OK request (four
// histogram buckets found, one uncontended lock, a few increments), on one thread. Scores are not
// binned: that happens only while a rollout compares the version.
double MeasureRecordNs() {
  std::shared_ptr<VersionStats> stats;
  CheckOk(VersionStats::Create(VersionStatsOptions{}, &stats), "VersionStats::Create");
  constexpr int kRecords = 1'000'000;
  RequestRecord record;
  record.candidates = 100;
  const int64_t start = ClockNanos(CLOCK_THREAD_CPUTIME_ID);
  for (int i = 0; i < kRecords; ++i) {
    // Latencies spread over the buckets, as real ones are (0.1 to ~3 ms).
    record.queue_us = 100 + (i * 7) % 900;
    record.compute_us = 200 + (i * 13) % 2000;
    record.request_us = record.queue_us + record.compute_us + 50;
    stats->Record(record);
  }
  const int64_t elapsed = ClockNanos(CLOCK_THREAD_CPUTIME_ID) - start;
  if (stats->Snapshot().ok != static_cast<uint64_t>(kRecords)) std::abort();
  return static_cast<double>(elapsed) / kRecords;
}

// What Batcher::Submit alone costs, on one thread with no worker: no wake-up, no contention. An
// accepted submission is validated, copied into its RequestState and queued; a refused one (queue
// full) is what an overloaded server spends to say no.
struct SubmitCost {
  int64_t rows = 0;
  double accepted_ns = NAN;
  double refused_ns = NAN;
};

SubmitCost MeasureSubmitCost(const Flags& flags, int64_t rows) {
  SubmitCost cost;
  cost.rows = rows;
  BatcherOptions options;
  options.max_batch_rows = flags.max_batch_rows;
  options.max_queue_delay_us = flags.delay_us;
  std::unique_ptr<Batcher> batcher;
  CheckOk(Batcher::Create(options, CtrSignature(flags.context), nullptr, &batcher), "Batcher::Create");
  RunState run;
  const Submitter views(rows, flags.context, 1, 0, nullptr, &run);
  auto build = [&](size_t count) {
    std::vector<Request> requests(count);
    for (Request& request : requests) {
      request = views.BuildRequest();
      request.on_complete = [](RequestResult&&) {};
    }
    return requests;
  };
  // Requests are built before the clock starts and destroyed after it stops: only Submit is timed.
  const size_t fill = static_cast<size_t>(options.max_queue_rows / rows);
  constexpr size_t kMinSubmits = 20000;
  int64_t accepted_ns = 0;
  size_t accepted = 0;
  while (accepted < kMinSubmits) {
    std::vector<Request> requests = build(fill);
    const int64_t start = ClockNanos(CLOCK_THREAD_CPUTIME_ID);
    for (Request& request : requests) CheckOk(batcher->Submit(std::move(request)), "Batcher::Submit");
    accepted_ns += ClockNanos(CLOCK_THREAD_CPUTIME_ID) - start;
    accepted += fill;
    if (accepted < kMinSubmits) batcher->FailQueued(Cancelled("emptying the queue between rounds"));
  }
  cost.accepted_ns = static_cast<double>(accepted_ns) / static_cast<double>(accepted);
  // The queue is now as full as whole requests can make it: every further one is refused.
  std::vector<Request> requests = build(kMinSubmits);
  const int64_t start = ClockNanos(CLOCK_THREAD_CPUTIME_ID);
  for (Request& request : requests) {
    if (batcher->Submit(std::move(request)).code() != StatusCode::kResourceExhausted) {
      Die("submit cost: a request was not refused by a full queue");
    }
  }
  cost.refused_ns = static_cast<double>(ClockNanos(CLOCK_THREAD_CPUTIME_ID) - start) / kMinSubmits;
  batcher->FailQueued(Cancelled("end of measurement"));
  return cost;
}

std::string Fixed(double value, int decimals) {
  if (std::isnan(value)) return "-";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  return buffer;
}

// Thousands grouped by spaces: 1 234 567 reads faster than 1234567 in a wide table.
std::string Grouped(double value) {
  std::string digits = std::to_string(static_cast<long long>(std::llround(value)));
  std::string out;
  int count = 0;
  for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
    if (count > 0 && count % 3 == 0) out.insert(out.begin(), ' ');
    out.insert(out.begin(), *it);
    ++count;
  }
  return out;
}

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string JsonNumber(double value) {
  if (std::isnan(value) || std::isinf(value)) return "null";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.6g", value);
  return buffer;
}

void WriteJson(const std::string& path, const Flags& flags, const Machine& machine, const std::string& allocator,
               double client_build_ns, const std::vector<SubmitCost>& submit_costs,
               const std::vector<Result>& results) {
  std::ofstream out(path);
  if (!out) Die("cannot write " + path);
  out << "{\n  \"benchmark\": \"adrank core_benchmark\",\n";
  out << "  \"machine\": {\"cpu_model\": " << JsonString(machine.cpu_model)
      << ", \"online_cpus\": " << machine.online_cpus << ", \"nproc\": " << machine.allowed_cpus
      << ", \"allowed_cpus\": " << JsonString(machine.allowed_list) << ", \"kernel\": " << JsonString(machine.kernel)
      << ", \"compiler\": " << JsonString(machine.compiler)
      << ", \"load_average_at_start\": " << JsonString(machine.load_average) << "},\n";
  out << "  \"options\": {\"workers\": " << flags.workers << ", \"max_batch_rows\": " << flags.max_batch_rows
      << ", \"max_queue_delay_us\": " << flags.delay_us
      << ", \"idle_dispatch\": true, \"context\": " << (flags.context ? "true" : "false")
      << ", \"seconds\": " << JsonNumber(flags.seconds) << ", \"requests\": " << flags.requests
      << ", \"backend\": \"no-op (zeros into outputs)\", \"memory_pool\": " << JsonString(allocator) << "},\n";
  out << "  \"client_build_ns_per_request\": " << JsonNumber(client_build_ns) << ",\n";
  out << "  \"batcher_submit_alone\": [";
  for (size_t i = 0; i < submit_costs.size(); ++i) {
    const SubmitCost& c = submit_costs[i];
    out << (i ? ", " : "") << "{\"rows_per_request\": " << c.rows << ", \"accepted_ns\": " << JsonNumber(c.accepted_ns)
        << ", \"refused_queue_full_ns\": " << JsonNumber(c.refused_ns) << "}";
  }
  out << "],\n";
  out << "  \"results\": [\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    out << "    {\"rows_per_request\": " << r.rows << ", \"threads\": " << r.threads
        << ", \"outstanding_per_thread\": " << r.outstanding << ", \"window_s\": " << JsonNumber(r.window_s)
        << ", \"requests\": " << r.requests << ", \"latency_samples\": " << r.samples
        << ", \"p50_us\": " << JsonNumber(r.p50_us) << ", \"p99_us\": " << JsonNumber(r.p99_us)
        << ", \"p999_us\": " << JsonNumber(r.p999_us) << ", \"max_us\": " << JsonNumber(r.max_us)
        << ", \"mean_us\": " << JsonNumber(r.mean_us) << ", \"cpu_us_per_request\": " << JsonNumber(r.cpu_us_per_req)
        << ", \"submitter_cpu_us_per_request\": " << JsonNumber(r.submit_cpu_us_per_req)
        << ", \"other_cpu_us_per_request\": " << JsonNumber(r.other_cpu_us_per_req)
        << ", \"user_cpu_us_per_request\": " << JsonNumber(r.user_us_per_req)
        << ", \"system_cpu_us_per_request\": " << JsonNumber(r.sys_us_per_req)
        << ", \"requests_per_s\": " << JsonNumber(r.req_per_s) << ", \"rows_per_s\": " << JsonNumber(r.rows_per_s)
        << ", \"batches\": " << r.batches << ", \"rows_per_batch\": " << JsonNumber(r.rows_per_batch)
        << ", \"context_switches_per_request\": " << JsonNumber(r.csw_per_req)
        << ", \"rejected_queue_full\": " << r.rejected << ", \"failed\": " << r.failed
        << ", \"stalled\": " << (r.stalled ? "true" : "false") << "}" << (i + 1 < results.size() ? "," : "") << "\n";
  }
  out << "  ]\n}\n";
}

int Main(int argc, char** argv) {
  const Flags flags = ParseFlags(argc, argv);
  const int64_t max_request_rows = BatcherOptions().max_request_rows;
  for (int64_t rows : flags.rows) {
    if (rows > max_request_rows) Die("--rows must be <= max_request_rows (" + std::to_string(max_request_rows) + ")");
  }
  const Machine machine = DescribeMachine();
  const double client_build_ns = MeasureClientBuildNanos(flags.context);
  std::vector<SubmitCost> submit_costs;
  for (int64_t rows : flags.rows) submit_costs.push_back(MeasureSubmitCost(flags, rows));

  std::printf("adrank core_benchmark: no-op backend (zeros into outputs)\n");
  std::printf("machine: %s; %ld CPUs online, %d allowed (nproc) [%s]; %s; compiler %s; load average %s\n",
              machine.cpu_model.c_str(), machine.online_cpus, machine.allowed_cpus, machine.allowed_list.c_str(),
              machine.kernel.c_str(), machine.compiler.c_str(), machine.load_average.c_str());
  std::printf("core: ThreadPool num_workers=%d; max_batch_rows=%lld max_queue_delay_us=%lld idle_dispatch=true\n",
              flags.workers, static_cast<long long>(flags.max_batch_rows), static_cast<long long>(flags.delay_us));
  std::printf("signature: dense f32[13] + sparse i64[26] per candidate%s -> ctr f32[]\n",
              flags.context ? ", user f32[32] context" : "");
  std::printf("each run: closed loop, <= %.2f s (first %.0f ms warm-up) or %llu requests\n", flags.seconds,
              std::min(0.2, flags.seconds / 10) * 1000, static_cast<unsigned long long>(flags.requests));
  std::printf("client build (benchmark's own request construction, inside 'submit' cpu): %.2f us/req\n",
              client_build_ns / 1000.0);
  for (const SubmitCost& c : submit_costs) {
    std::printf(
        "Batcher::Submit alone (one thread, no worker), %lld rows: accepted %.2f us, refused (queue full) %.2f us\n",
        static_cast<long long>(c.rows), c.accepted_ns / 1000.0, c.refused_ns / 1000.0);
  }
  std::printf("VersionStats::Record alone (one thread; the metrics' per-request accounting): %.1f ns\n",
              MeasureRecordNs());
  std::printf("\n");
  std::printf("%5s %4s %4s %10s %9s %11s %8s %8s %8s | %8s %6s %6s %6s %6s | %8s %5s %6s\n", "rows", "thr", "out",
              "requests", "req/s", "rows/s", "p50 us", "p99 us", "p999 us", "cpu us/r", "user", "sys", "submit",
              "other", "rows/bat", "csw/r", "reject");
  std::fflush(stdout);

  std::vector<Result> results;
  std::string allocator;
  for (int64_t rows : flags.rows) {
    for (int outstanding : flags.outstanding) {
      for (int threads : flags.threads) {
        const Result r = RunConfiguration(flags, rows, outstanding, threads, &allocator);
        std::printf("%5lld %4d %4d %10s %9s %11s %8s %8s %8s | %8s %6s %6s %6s %6s | %8s %5s %6s\n",
                    static_cast<long long>(r.rows), r.threads, r.outstanding,
                    Grouped(static_cast<double>(r.requests)).c_str(), Grouped(r.req_per_s).c_str(),
                    Grouped(r.rows_per_s).c_str(), Fixed(r.p50_us, 1).c_str(), Fixed(r.p99_us, 1).c_str(),
                    Fixed(r.p999_us, 1).c_str(), Fixed(r.cpu_us_per_req, 2).c_str(),
                    Fixed(r.user_us_per_req, 2).c_str(), Fixed(r.sys_us_per_req, 2).c_str(),
                    Fixed(r.submit_cpu_us_per_req, 2).c_str(), Fixed(r.other_cpu_us_per_req, 2).c_str(),
                    Fixed(r.rows_per_batch, 1).c_str(), Fixed(r.csw_per_req, 1).c_str(),
                    Grouped(static_cast<double>(r.rejected)).c_str());
        if (r.failed > 0) {
          std::printf("      ^ %llu requests completed with an error\n", static_cast<unsigned long long>(r.failed));
        }
        std::fflush(stdout);
        results.push_back(r);
        if (r.stalled) break;
      }
      if (!results.empty() && results.back().stalled) break;
    }
    if (!results.empty() && results.back().stalled) break;
  }
  const bool stalled = !results.empty() && results.back().stalled;
  if (stalled) {
    std::printf(
        "      ^ STALLED: requests were still queued %lld s after the window closed (no-op backend: a batch takes\n"
        "        microseconds); they completed only when ThreadPool::Shutdown flushed the queue. The figures\n"
        "        of this row are not a measurement. Remaining configurations skipped.\n",
        static_cast<long long>(kDrainGrace.count()));
  }
  std::printf("\nmemory pool: %s\n", allocator.c_str());
  std::printf(
      "cpu us/r: process CPU time / completed requests, = user + sys (getrusage) = submit + other, where submit is\n"
      "the submitting threads' share (request build, Submit, waiting for the completion) and other the rest (the\n"
      "worker: scheduling, gather, scatter, completion). sys is mostly wake-ups: futex calls and context switches.\n"
      "latency: just before ModelQueue::Submit -> completion callback. csw/r: context switches per request.\n");
  if (!flags.json_path.empty()) {
    WriteJson(flags.json_path, flags, machine, allocator, client_build_ns, submit_costs, results);
    std::printf("json: %s\n", flags.json_path.c_str());
  }
  return stalled ? 2 : 0;
}

}  // namespace
}  // namespace adrank

int main(int argc, char** argv) { return adrank::Main(argc, argv); }
