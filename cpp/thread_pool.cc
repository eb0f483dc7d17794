#include "thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <exception>
#include <utility>

#include "thread_priority.h"

namespace adrank {

int AllowedCores() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) return std::max(1, CPU_COUNT(&allowed));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

ModelQueue::ModelQueue(ModelOptions options, std::unique_ptr<Batcher> batcher, std::shared_ptr<Wakeup> wakeup)
    : name_(std::move(options.name)),
      instances_(options.instances),
      backend_(std::move(options.backend)),
      batcher_(std::move(batcher)),
      wakeup_(std::move(wakeup)),
      instance_busy_(static_cast<size_t>(options.instances), false) {}

Status ModelQueue::Submit(Request request, RequestHandle* handle) {
  Status status = batcher_->Submit(std::move(request), handle);
  if (!status.ok()) return Status(status.code(), "model '" + name_ + "': " + status.message());
  bool background = false;
  {
    // Taking the scheduler lock orders this submission against a worker that is about to sleep:
    // it either saw the request or is already waiting when the notify comes.
    std::lock_guard<std::mutex> lock(wakeup_->mu);
    background = background_;
  }
  // A worker of the right kind: only the background worker runs a background model, and it alone.
  (background ? wakeup_->background_cv : wakeup_->cv).notify_one();
  return Status::Ok();
}

bool ModelQueue::Cancel(const RequestHandle& handle) {
  const bool never_runs = batcher_->Cancel(handle);
  {
    // Orders the cancellation against a RemoveModel about to wait: it either saw the queue without
    // the request or is already waiting when the notify comes.
    std::lock_guard<std::mutex> lock(wakeup_->mu);
  }
  wakeup_->drained.notify_all();
  return never_runs;
}

void ModelQueue::SetBackground(bool background) {
  {
    std::lock_guard<std::mutex> lock(wakeup_->mu);
    background_ = background;
  }
  wakeup_->NotifyAll();  // its queued batches now belong to the other kind of worker
}

bool ModelQueue::background() const {
  std::lock_guard<std::mutex> lock(wakeup_->mu);
  return background_;
}

Status ThreadPool::Create(const ThreadPoolOptions& options, std::unique_ptr<ThreadPool>* out) {
  if (options.num_workers < 0) return InvalidArgument("num_workers must be >= 0 (0: one per core)");
  std::shared_ptr<MemoryPool> memory_pool = options.memory_pool;
  if (!memory_pool) {
    Status status = MemoryPool::Create(MemoryPoolOptions(), &memory_pool);
    if (!status.ok()) return status;
  }
  out->reset(new ThreadPool(options, std::move(memory_pool)));
  return Status::Ok();
}

ThreadPool::ThreadPool(const ThreadPoolOptions& options, std::shared_ptr<MemoryPool> memory_pool)
    : clock_(options.clock ? options.clock : SteadyClock::Get()), memory_pool_(std::move(memory_pool)) {
  int workers = options.num_workers;
  if (workers == 0) workers = AllowedCores();
  workers_.reserve(static_cast<size_t>(workers));
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { WorkerLoop(false); });
  background_worker_ = std::thread([this] { WorkerLoop(true); });
}

ThreadPool::~ThreadPool() { Shutdown(); }

Status ThreadPool::AddModel(ModelOptions options, std::shared_ptr<ModelQueue>* out) {
  if (options.name.empty()) return InvalidArgument("model name is empty");
  if (options.instances < 1) return InvalidArgument("model '" + options.name + "': instances must be >= 1");
  if (!options.backend) return InvalidArgument("model '" + options.name + "': no backend");
  // The batcher predicts waits from how many of the model's batches run at once.
  options.batching.instances = options.instances;
  std::unique_ptr<Batcher> batcher;
  Status status = Batcher::Create(options.batching, options.signature, clock_, &batcher);
  if (!status.ok()) return Status(status.code(), "model '" + options.name + "': " + status.message());
  std::lock_guard<std::mutex> lock(wakeup_->mu);
  if (stopping_) return Unavailable("the thread pool is shut down");
  for (const auto& model : models_) {
    if (model->name() == options.name) return InvalidArgument("model '" + options.name + "' is already registered");
  }
  auto model = std::make_shared<ModelQueue>(std::move(options), std::move(batcher), wakeup_);
  model->pass_ = virtual_pass_;
  models_.push_back(model);
  *out = std::move(model);
  return Status::Ok();
}

Status ThreadPool::RemoveModel(const std::shared_ptr<ModelQueue>& model) {
  std::unique_lock<std::mutex> lock(wakeup_->mu);
  auto it = std::find(models_.begin(), models_.end(), model);
  if (it == models_.end()) return Status(StatusCode::kNotFound, "model is not registered with this pool");
  model->removing_ = true;
  model->batcher_->Close();
  wakeup_->NotifyAll();
  wakeup_->drained.wait(lock, [&] { return model->busy_ == 0 && model->batcher_->empty(); });
  models_.erase(std::find(models_.begin(), models_.end(), model));
  return Status::Ok();
}

void ThreadPool::Shutdown() {
  std::lock_guard<std::mutex> serial(shutdown_mu_);
  {
    std::lock_guard<std::mutex> lock(wakeup_->mu);
    stopping_ = true;
    for (const auto& model : models_) model->batcher_->Close();
  }
  wakeup_->NotifyAll();
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  if (background_worker_.joinable()) background_worker_.join();
}

bool ThreadPool::AnyQueuedLocked() const {
  return std::any_of(models_.begin(), models_.end(), [](const auto& m) { return !m->batcher_->empty(); });
}

ThreadPool::Dispatch ThreadPool::ReserveLocked(TimePoint now, TimePoint* wake, bool background) {
  ModelQueue* best = nullptr;
  for (const auto& model : models_) {
    if (model->background_ != background || model->busy_ >= model->instances_) continue;
    const bool flush = stopping_ || model->removing_;
    TimePoint ready = model->batcher_->ReadyAt(model->busy_ == 0, now);
    if (flush && ready != kNoDeadline) ready = now;
    if (ready > now) {
      *wake = std::min(*wake, ready);
      continue;
    }
    const double pass = std::max(model->pass_, virtual_pass_);
    if (!best || pass < std::max(best->pass_, virtual_pass_)) best = model.get();
  }
  Dispatch dispatch;
  if (!best) return dispatch;
  // Stride scheduling: lowest pass first; the pass advances by 1/instances per batch.
  const double start = std::max(best->pass_, virtual_pass_);
  virtual_pass_ = start;
  best->pass_ = start + 1.0 / best->instances_;
  best->busy_++;
  const auto free_slot = std::find(best->instance_busy_.begin(), best->instance_busy_.end(), false);
  dispatch.instance = static_cast<int>(free_slot - best->instance_busy_.begin());
  *free_slot = true;
  for (const auto& model : models_) {
    if (model.get() == best) dispatch.model = model;
  }
  return dispatch;
}

void ThreadPool::ReleaseLocked(const Dispatch& dispatch) {
  dispatch.model->busy_--;
  dispatch.model->instance_busy_[static_cast<size_t>(dispatch.instance)] = false;
}

void ThreadPool::WorkerLoop(bool background) {
  // Serving workers run ahead of the transport's threads, whatever policy they inherited; the background
  // worker only on what the serving threads leave (thread_priority.h).
  if (background) {
    RunAsBackgroundThread();
  } else {
    RunAsServingThread();
  }
  std::unique_lock<std::mutex> lock(wakeup_->mu);
  while (true) {
    TimePoint wake = kNoDeadline;
    const TimePoint now = clock_->Now();
    Dispatch dispatch = ReserveLocked(now, &wake, background);
    if (dispatch.model) {
      ModelQueue& model = *dispatch.model;
      const bool idle = model.busy_ == 1;  // only the instance just reserved
      const bool flush = stopping_ || model.removing_;
      lock.unlock();
      // The batcher fires completions of dropped requests: never under the scheduler lock.
      std::unique_ptr<Batch> batch = model.batcher_->NextBatch(idle, flush);
      if (batch) RunBatch(dispatch, batch.get());
      lock.lock();
      ReleaseLocked(dispatch);
      wakeup_->drained.notify_all();
      continue;
    }
    if (ExpireOverdueUnlocked(lock, now, &wake)) continue;
    if (stopping_ && !AnyQueuedLocked()) break;
    if (wake == kNoDeadline) {
      (background ? wakeup_->background_cv : wakeup_->cv).wait(lock);
    } else {
      // The clock may be injected; the wait itself is on the steady clock, bounded by the gap.
      (background ? wakeup_->background_cv : wakeup_->cv).wait_for(lock, std::max(Duration(0), wake - now));
    }
  }
  wakeup_->NotifyAll();  // let the other workers see the pool has drained
}

bool ThreadPool::ExpireOverdueUnlocked(std::unique_lock<std::mutex>& lock, TimePoint now, TimePoint* wake) {
  // A model with every instance busy is not asked for batches, so its overdue requests are
  // answered here, at their deadline, rather than when an instance frees up.
  std::vector<std::shared_ptr<ModelQueue>> overdue;
  for (const auto& model : models_) {
    const TimePoint deadline = model->batcher_->EarliestDeadline();
    if (deadline <= now) {
      overdue.push_back(model);
    } else if (model->busy_ >= model->instances_) {
      *wake = std::min(*wake, deadline);
    }
  }
  if (overdue.empty()) return false;
  lock.unlock();
  for (const auto& model : overdue) model->batcher_->ExpireOverdue();
  overdue.clear();
  lock.lock();
  // A RemoveModel may be waiting for exactly these requests to leave the queue.
  wakeup_->drained.notify_all();
  return true;
}

void ThreadPool::RunBatch(const Dispatch& dispatch, Batch* batch) {
  ModelQueue& model = *dispatch.model;
  const Batcher& batcher = *model.batcher_;
  batch->started_at = clock_->Now();
  Status status = batch->Gather(batcher.signature(), batcher.options().context_layout, memory_pool_.get());
  if (status.ok()) {
    BatchIO& io = batch->io();
    io.instance = dispatch.instance;
    try {
      status = model.backend_(io);
    } catch (const std::exception& e) {
      status = Internal(std::string("backend threw: ") + e.what());
    } catch (...) {
      status = Internal("backend threw a non-standard exception");
    }
    if (status.ok()) {
      batch->Scatter();
    } else {
      status = Status(status.code(), "model '" + model.name_ + "': " + status.message());
    }
  }
  const TimePoint end = clock_->Now();
  const Duration elapsed = end - batch->started_at;
  model.batcher_->RecordExecution(batch->padded_rows, elapsed, status.ok());
  batch->Finish(status, elapsed, end);
}

}  // namespace adrank
