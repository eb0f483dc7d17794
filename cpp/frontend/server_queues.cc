#include "server_queues.h"

#include <pthread.h>

#include <string>

namespace adrank {
namespace {

// The queue the calling thread drains, if it is one of ServerQueues' threads.
thread_local const grpc::ServerCompletionQueue* g_draining = nullptr;

}  // namespace

ServerQueues::~ServerQueues() { Shutdown(); }

void ServerQueues::Add(grpc::ServerBuilder& builder, int count) {
  for (int i = 0; i < count; ++i) queues_.push_back(builder.AddCompletionQueue(/*is_frequently_polled=*/true));
}

void ServerQueues::Start() {
  for (size_t i = 0; i < queues_.size(); ++i) {
    threads_.emplace_back(&ServerQueues::Drain, queues_[i].get());
    // Named here, not by the thread: its name is there when Start returns.
    const std::string name = "adrank-grpc-" + std::to_string(i);
    pthread_setname_np(threads_.back().native_handle(), name.c_str());
  }
}

bool ServerQueues::OnQueueThread(const grpc::ServerCompletionQueue* cq) { return g_draining == cq; }

void ServerQueues::Drain(grpc::ServerCompletionQueue* cq) {
  g_draining = cq;
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<CqEvent*>(tag)->Proceed(ok);
  g_draining = nullptr;
}

void ServerQueues::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  {
    std::unique_lock<std::mutex> lock(mu_);
    no_calls_.wait(lock, [this] { return calls_ == 0; });
  }
  // Never started (the server did not start): nothing was asked of the queues; gRPC shuts each down as it
  // destroys it (shutting one down here would log that its server, which never ran, had not shut down).
  if (threads_.empty()) return;
  for (auto& queue : queues_) queue->Shutdown();
  for (auto& thread : threads_) thread.join();
}

ServerQueues::Ticket::Ticket(ServerQueues* queues) : queues_(queues) {
  std::lock_guard<std::mutex> lock(queues_->mu_);
  ++queues_->calls_;
}

ServerQueues::Ticket::~Ticket() {
  std::lock_guard<std::mutex> lock(queues_->mu_);
  if (--queues_->calls_ == 0) queues_->no_calls_.notify_all();
}

}  // namespace adrank
