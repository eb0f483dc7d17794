// UnaryCall: a unary method of the C++ front end on gRPC's async completion-queue API (server_queues.h) whose
// request gRPC parses — KServe v2's methods but ModelInfer (inference_service.h), health's Check
// (health_service.h) — answered by the site's `handle`, usually inline on the queue's thread.
//
// A call: armed on a queue (UnaryCallSite::Arm: RequestX with the call's tag); at its arrival the next one is
// armed first, then `handle(call)` runs on the queue's thread. It answers with Finish(status) (the response, as
// filled, goes out when the status is OK), exactly once: before it returns, or later from any thread (KServe's
// repository methods, whose handler lives in Python). Finish is the caller's last use of the call: it destroys
// itself on its queue's thread when the finish event is back. gRPC allows Finish from any thread: no other
// operation of a unary call is pending then.
//
// Lifetime: the site (its service, its queues, its handler) outlives every call (RankServer's Shutdown waits for
// them). A call `handle` never finishes keeps the server's shutdown waiting for it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>

#include "server_queues.h"

namespace adrank {

template <typename Service, typename Request, typename Response>
class UnaryCall;

template <typename Service, typename Request, typename Response>
struct UnaryCallSite {
  using Call = UnaryCall<Service, Request, Response>;
  // The generated RequestX of an async method.
  using RequestMethod = void (Service::*)(grpc::ServerContext*, Request*, grpc::ServerAsyncResponseWriter<Response>*,
                                          grpc::CompletionQueue*, grpc::ServerCompletionQueue*, void*);

  ServerQueues* queues = nullptr;
  Service* service = nullptr;
  RequestMethod request = nullptr;
  std::function<void(Call* call)> handle;

  // One call waiting on each queue. After the server has started.
  void Arm() const {
    for (const auto& queue : queues->queues()) adrank::Arm<Call>(this, queue.get());
  }
};

template <typename Service, typename Request, typename Response>
class UnaryCall final {
 public:
  using Site = UnaryCallSite<Service, Request, Response>;

  // Through Arm only (server_queues.h): the call then owns itself.
  UnaryCall(const Site* site, grpc::ServerCompletionQueue* cq) : ticket_(site->queues), site_(site), cq_(cq) {
    (site_->service->*site_->request)(&context_, &request_, &writer_, cq_, cq_, arrived_.tag());
  }

  const grpc::ServerContext& context() const { return context_; }
  const Request& request() const { return request_; }
  Response* response() { return &response_; }

  void Finish(const grpc::Status& status) { writer_.Finish(response_, status, finished_.tag()); }

 private:
  void Arrived(bool ok) {
    if (!ok) {  // the server is shutting down: no call came
      Retire(this);
      return;
    }
    Arm<UnaryCall>(site_, cq_);
    site_->handle(this);  // Finish, now or later from any thread: its event comes back here, after this
  }

  void Finished(bool /*ok*/) { Retire(this); }

  ServerQueues::Ticket ticket_;  // first: counted until the call is gone
  const Site* const site_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext context_;
  Request request_;
  Response response_;
  grpc::ServerAsyncResponseWriter<Response> writer_{&context_};
  CqStep<UnaryCall, &UnaryCall::Arrived> arrived_{this};
  CqStep<UnaryCall, &UnaryCall::Finished> finished_{this};
};

}  // namespace adrank
