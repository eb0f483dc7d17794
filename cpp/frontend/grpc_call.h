// GrpcCall: one call of the contract — a RankCall (rank_call.h), or an InferCall for KServe v2 (infer_call.h) —
// on gRPC's async completion-queue API (server_queues.h), written once for both services of the C++ front end.
//
// A call's steps, each on its queue's thread unless said otherwise:
//   1. Armed (GrpcCallSite::Arm): gRPC is asked for the method's next call on the queue, the raw request bytes
//      into the call's buffer, with a done notification (AsyncNotifyWhenDone, set before the call starts).
//   2. Arrival: the next call is armed first, so that one arriving meanwhile finds a request waiting. RankAdmission
//      admits the call by its declared size and the server's state before a byte is parsed (rank_admission.h): a
//      refusal is finished here, inline, never handed to another thread. Admitted, the call parses from gRPC's
//      buffer and starts (the site's `start`).
//   3. Answer (the contract's, once): the response is serialized into the call's reply buffer, the drain stops
//      waiting for the call (CallDone), it is counted by its status code, and it is finished:
//        - on its queue's thread (refused before any model ran, or cancelled there): at once;
//        - on a core worker whose batch carried other calls too (the server is loaded): by the worker itself,
//          which writes the reply (in the CQ echoes at 16 callers 1.2 switches per call, against 2.0 through
//          the queue's thread);
//        - on a core worker otherwise: through the call's Alarm, set already expired, so that the queue's
//          thread wakes and finishes it (in the CQ echoes at one caller 3.6 switches per call, against 6.8 when
//          the worker writes).
//      gRPC allows Finish from any thread while no other operation of the call is pending (the done
//      notification may be). An Alarm's methods are not thread-safe: each call has its own, Set once, by the
//      worker; it is destroyed with the call, on the queue's thread, after it fired.
//   4. Done (the notification): if gRPC says the call was cancelled (the client's, the deadline's, a closed
//      connection's), its parts not yet in a batch are cancelled (RankCall::Cancel: after the answer, nothing).
//   5. Ownership (server_queues.h): the call owns itself from Arm until both its finish and its done events are
//      back (a call that never came, the server shutting down, at its arrival); then it destroys itself and
//      releases its request's bytes (reserved by Admit).
//
// Lifetime: the site (its admission, its service, its queues) outlives every call: RankServer's Shutdown waits for
// them (ServerQueues::Shutdown). Thread-safety: as above; the contract's Cancel and its Answer may run at once on
// two threads (rank_call.h allows it).
#pragma once

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "grpc_context.h"
#include "rank_admission.h"
#include "rank_call.h"
#include "server_queues.h"

namespace adrank {

// What one raw method of the contract needs, shared by its calls: `Call` is RankCall or InferCall.
template <typename Call>
struct GrpcCallSite {
  // Asks gRPC for the method's next call (the generated RequestX of a raw method), its bytes into `request`.
  using RequestFn = std::function<void(grpc::ServerContext* context, grpc::ByteBuffer* request,
                                       grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* writer,
                                       grpc::ServerCompletionQueue* cq, void* tag)>;
  // Parses an admitted call from `reader` (`bytes` gives them whole, only to explain a failure) and starts it.
  using StartFn = std::function<void(Call* call, grpc::ProtoBufferReader* reader,
                                     const std::function<std::string()>& bytes, const RankCallOptions& options)>;

  ServerQueues* queues = nullptr;
  RankAdmission* admission = nullptr;
  Duration reply_margin{};
  RequestFn request;
  StartFn start;

  // One call waiting on each queue (step 1). After the server has started.
  template <typename Response>
  void Arm() const;
};

// `Response` is the message the contract's Answer gets (v1::RankResponse or inference::ModelInferResponse).
template <typename Call, typename Response>
class GrpcCall final : public Call {
 public:
  using Site = GrpcCallSite<Call>;

  // Through Arm only (server_queues.h): the call then owns itself.
  GrpcCall(const Site* site, grpc::ServerCompletionQueue* cq) : ticket_(site->queues), site_(site), cq_(cq) {
    context_.AsyncNotifyWhenDone(done_.tag());
    site_->request(&context_, &request_, &writer_, cq_, arrived_.tag());
  }

 private:
  void Arrived(bool ok) {
    if (!ok) {  // the server is shutting down: no call came, and no done event will
      Retire(this);
      return;
    }
    this->MarkArrival();  // made when armed, before the call came: its latency counts from now
    Arm<GrpcCall>(site_, cq_);
    RankAdmission& admission = *site_->admission;
    const auto bytes = static_cast<int64_t>(request_.Length());
    if (IsRetry(context_)) admission.Retried();
    const Status admitted = admission.Admit(bytes);
    if (!admitted.ok()) {
      status_ = ToGrpc(admitted);
      admission.Answered(admitted.code());
      Finish();
      return;
    }
    reserved_ = bytes;
    grpc::ProtoBufferReader reader(&request_);
    RankCallOptions options;
    options.deadline = CoreDeadline(context_);
    options.reply_margin = site_->reply_margin;
    options.tenant = CallTenant(context_);
    site_->start(this, &reader, [this] { return Flatten(request_); }, options);
  }

  void Answer(const Status& status, Response* response) override {
    status_ = ToGrpc(status);
    if (status.ok()) {
      bool own_buffer = false;
      const grpc::Status serialized = grpc::SerializationTraits<Response>::Serialize(*response, &reply_, &own_buffer);
      if (!serialized.ok()) {
        status_ = grpc::Status(grpc::StatusCode::INTERNAL, "response: " + serialized.error_message());
      }
    }
    RankAdmission& admission = *site_->admission;
    admission.CallDone();
    admission.Answered(static_cast<StatusCode>(status_.error_code()));
    if (ServerQueues::OnQueueThread(cq_) || this->batch_requests() > 1) {
      Finish();  // the last use of the call on a worker: its queue's thread may destroy it from here on
      return;
    }
    alarm_.emplace();
    alarm_->Set(cq_, gpr_time_0(GPR_CLOCK_MONOTONIC), answered_.tag());  // likewise
  }

  void Finish() { writer_.Finish(reply_, status_, finished_.tag()); }

  void Answered(bool /*ok*/) { Finish(); }  // the worker's alarm: it is never cancelled
  void Finished(bool /*ok*/) { Unref(); }   // !ok: the call had ended (cancelled); nothing went out
  void Done(bool /*ok*/) {
    if (context_.IsCancelled()) this->Cancel();
    Unref();
  }

  void Unref() {
    if (--pending_ > 0) return;
    RankAdmission* admission = site_->admission;
    const int64_t reserved = reserved_;
    Retire(this);
    if (reserved > 0) admission->ReleaseBytes(reserved);
  }

  ServerQueues::Ticket ticket_;  // first: counted until the call is gone
  const Site* const site_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext context_;
  grpc::ByteBuffer request_;
  grpc::ServerAsyncResponseWriter<grpc::ByteBuffer> writer_{&context_};
  grpc::ByteBuffer reply_;
  grpc::Status status_;
  int64_t reserved_ = 0;              // the request's bytes, once admitted
  int pending_ = 2;                   // the finish and done events to come; the queue's thread only
  std::optional<grpc::Alarm> alarm_;  // made by the worker that needs it
  CqStep<GrpcCall, &GrpcCall::Arrived> arrived_{this};
  CqStep<GrpcCall, &GrpcCall::Answered> answered_{this};
  CqStep<GrpcCall, &GrpcCall::Finished> finished_{this};
  CqStep<GrpcCall, &GrpcCall::Done> done_{this};
};

template <typename Call>
template <typename Response>
void GrpcCallSite<Call>::Arm() const {
  for (const auto& queue : queues->queues()) adrank::Arm<GrpcCall<Call, Response>>(this, queue.get());
}

}  // namespace adrank
