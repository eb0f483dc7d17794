// GrpcCall: one admitted call of the contract — a RankCall (rank_call.h), or an InferCall for KServe v2
// (infer_call.h) — as a gRPC unary reactor, written once for both services of the C++ front end.
//
// A call: RankAdmission admits it by its declared size and the server's state before a byte is parsed
// (rank_admission.h); the call then parses from gRPC's buffer and starts; its answer is serialized into
// gRPC's reply buffer, the drain stops waiting for it (CallDone), it is counted by its status code and
// finished. The call holds its request's bytes (reserved by Admit) until gRPC is done with it (OnDone),
// then deletes itself and releases them. OnCancel (the client's, the deadline's, a closed connection's)
// cancels its parts not yet in a batch.
//
// Lifetime: the admission outlives every call (the server's Shutdown waits for them).
// Thread-safety: gRPC's threads start calls; the core's workers answer them.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <cstdint>
#include <string>

#include "grpc_context.h"
#include "rank_admission.h"
#include "rank_call.h"

namespace adrank {

// Every call of the contract ends here, refused or answered: counted by its status code, then finished.
inline void ReplyCounted(RankAdmission& admission, grpc::ServerUnaryReactor* reactor, const grpc::Status& status) {
  admission.Answered(static_cast<StatusCode>(status.error_code()));
  reactor->Finish(status);
}

// `Call` is RankCall or InferCall; `Response` the message its Answer gets.
template <typename Call, typename Response>
class GrpcCall final : public grpc::ServerUnaryReactor, public Call {
 public:
  GrpcCall(RankAdmission* admission, grpc::ByteBuffer* reply, int64_t reserved)
      : admission_(admission), reply_(reply), reserved_(reserved) {}

  void OnCancel() override { this->Cancel(); }

  void OnDone() override {
    RankAdmission* admission = admission_;
    const int64_t reserved = reserved_;
    delete this;
    admission->ReleaseBytes(reserved);
  }

 private:
  void Answer(const Status& status, Response* response) override {
    grpc::Status out = ToGrpc(status);
    if (status.ok()) {
      bool own_buffer = false;
      const grpc::Status serialized = grpc::SerializationTraits<Response>::Serialize(*response, reply_, &own_buffer);
      if (!serialized.ok()) out = grpc::Status(grpc::StatusCode::INTERNAL, "response: " + serialized.error_message());
    }
    admission_->CallDone();
    ReplyCounted(*admission_, this, out);
  }

  RankAdmission* const admission_;
  grpc::ByteBuffer* const reply_;
  const int64_t reserved_;
};

// Admits a call, then `start(call, reader, bytes, options)` parses and starts it; returns its reactor.
template <typename Call, typename Response, typename Start>
grpc::ServerUnaryReactor* StartGrpcCall(RankAdmission& admission, Duration reply_margin,
                                        grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response, Start start) {
  const auto bytes = static_cast<int64_t>(request->Length());
  if (IsRetry(*context)) admission.Retried();
  const Status admitted = admission.Admit(bytes);
  if (!admitted.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    ReplyCounted(admission, reactor, ToGrpc(admitted));
    return reactor;
  }
  auto* call = new GrpcCall<Call, Response>(&admission, response, bytes);  // deletes itself in OnDone
  grpc::ProtoBufferReader reader(const_cast<grpc::ByteBuffer*>(request));
  RankCallOptions options;
  options.deadline = CoreDeadline(*context);
  options.reply_margin = reply_margin;
  options.tenant = CallTenant(*context);
  start(call, &reader, [request] { return Flatten(*request); }, options);
  return call;
}

}  // namespace adrank
