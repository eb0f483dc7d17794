// RankCall: the Rank contract, written once for every transport. A front end (the C++ gRPC service,
// cpp/frontend/rank_server.h, or the Python grpc.aio one, python/adrank/server/ranking_service.py) hands
// it the request's bytes, the call's deadline and the caller's tenant, and gets back one answer: a
// RankResponse, or a Status whose code is gRPC's and whose message names the field.
//
// What a call does, in order, without Python:
//   1. Parse: the bytes into an adrank.v1.RankRequest; bytes protobuf refuses are explained by
//      ParseError (wire_request.h: the field path and byte where they stop being one);
//   2. check what the core cannot: the priority fits the core's int (INVALID_ARGUMENT), and the call's
//      deadline, less the transport's reply margin, leaves time to run (DEADLINE_EXCEEDED);
//   3. PrepareRank (wire_request.h): route every model by its rollout (NOT_FOUND), decode each tensor
//      once (views of the request's bytes), check the request against each model's signature;
//   4. submit one core Request per model with the core's deadline, the priority (the request's, else
//      the model's default) and the tenant; the models run concurrently on the core's workers;
//   5. mirror the request to each model's shadow, if its rollout names one, at the shadow's lowest
//      priority, unless the shadow is already a batch behind (then the mirror is shed and counted);
//   6. record every part's outcome (and each mirror's) in its version's stats: the guardrails' input;
//   7. answer: once the last part completes, with each model's N float32 scores, the version that
//      answered and its server timing, or the first part's error (the other parts are then cancelled).
//      An INTERNAL answer (the server's fault, not the caller's) is also reported with the model, version,
//      tenant and request id (server_errors.h), for the server's log.
//
// Cancel (the client's, a closed connection's): the parts not yet in a batch complete CANCELLED, and so
// the call. A call cancelled before Start submits nothing.
//
// Options (RankCallOptions, defaults and why):
//   deadline = kNoDeadline   The caller's deadline on the core's clock; kNoDeadline when it set none.
//   reply_margin = 0         The models get deadline - reply_margin: the answer still has to be
//                            serialized, written and read (the front ends' --reply-margin-ms, 1 ms by
//                            default). A call with less than this left is refused at once. >= 0: the
//                            transport checks it once (RankServer::Create; the binding's seconds).
//   tenant = ""              The caller's tenant (tenants.h); "" is the default tenant.
//
// Lifetime: the transport owns the call (a subclass that implements Answer). The contract calls Answer
// exactly once, as the last thing it does with the call: after Answer returns, or from within it, the
// transport may destroy the call; no part, mirror or worker touches it afterwards. The registry need only
// outlive Start (routed versions are held by the call and by each mirror).
//
// Latency: Start costs one parse, one routing snapshot and one pass over the tensors (no per-candidate
// work beyond the finiteness checks the models ask for); Answer runs on the worker that completed the
// last part, or on Start's thread when the call is refused before any model runs.
//
// Thread-safety: Parse and Start from one thread, once each, in that order; Cancel from any thread at any
// time while the call exists (after its answer it does nothing).
//
// StartRank: for a transport that waits for the answer or hands it to another thread (the Python front
// end; the server's own golden requests), a call that owns itself until it answers. Its answer (the
// response serialized, or the error) is set on an Outcome (outcome.h), then `answered` runs on the
// answering thread (the Python binding pushes a CompletionQueue token there). The handle it returns may
// cancel the call until it has answered, and does nothing after.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adrank/v1/ranking.pb.h"
#include "clock.h"
#include "model_registry.h"
#include "outcome.h"
#include "request.h"
#include "server_errors.h"
#include "status.h"
#include "wire_request.h"

namespace google::protobuf {
class MessageLite;
namespace io {
class ZeroCopyInputStream;
}
}  // namespace google::protobuf

namespace adrank {

struct RankCallOptions {
  TimePoint deadline = kNoDeadline;
  Duration reply_margin = Duration::zero();
  std::string tenant;
};

class RankCall {
 public:
  RankCall();
  virtual ~RankCall() = default;
  RankCall(const RankCall&) = delete;
  RankCall& operator=(const RankCall&) = delete;

  // The call arrived now: its latency (the request histogram, the response's server_us) counts from here. The
  // constructor's time stands otherwise; a transport that makes its call object before the call comes (the CQ
  // front end arms one per queue to wait for the next call) says when it came, or the wait would count.
  void MarkArrival();

  // The request's bytes, contiguous or as a stream (`bytes` gives them whole, only to explain a failure).
  // A failure is kept: Start then answers it.
  void Parse(std::string_view bytes);
  void Parse(google::protobuf::io::ZeroCopyInputStream* stream, const std::function<std::string()>& bytes);

  // Steps 2-7 above; Answer is called once, here if the call is refused, else by the last part.
  void Start(const ModelRegistry& registry, const RankCallOptions& options);

  void Cancel();

  const v1::RankRequest& request() const { return request_; }

 protected:
  // The answer: OK with `response` filled, or the error (response empty). The call's last use by the
  // contract; `response` lives as long as the call.
  virtual void Answer(const Status& status, v1::RankResponse* response) = 0;

  // For a call that arrives in another protocol and means a RankRequest (infer_call.h): instead of Parse,
  // it fills the request in place, or says why it could not (Start then answers that).
  v1::RankRequest* mutable_request() { return &request_; }
  void SetParseFailure(Status status) { parsed_ = std::move(status); }

  // Inside Answer: the most requests (calls' parts) any batch of this call's parts carried; > 1 means the
  // answering worker completed other calls in the same batch (the server is under load). 0 when no part ran.
  int32_t batch_requests() const { return batch_requests_; }

  // Implementation details follow. API users need not read.
 private:
  using QueuedPart = std::pair<std::shared_ptr<ModelQueue>, RequestHandle>;

  Status Check(const ModelRegistry& registry, const RankCallOptions& options, std::vector<ModelCall>* shadows);
  std::vector<QueuedPart> QueuedPartsLocked() const;
  static void CancelParts(const std::vector<QueuedPart>& parts);
  void Submit(size_t part);
  void Complete(size_t part, RequestResult&& result);
  void Release();
  Status FillResponse(size_t* failed);  // `failed`: the part whose output is missing, if one is

  int64_t start_ns_;  // the call's arrival: the constructor's, or MarkArrival's
  Status parsed_;
  TimePoint core_deadline_ = kNoDeadline;
  v1::RankRequest request_;  // the core Requests view its bytes: it lives as long as the call
  v1::RankResponse response_;
  std::vector<ModelCall> calls_;
  std::vector<RequestResult> results_;
  std::atomic<int> remaining_{0};
  int32_t batch_requests_ = 0;  // set by the last Release, before Answer
  std::mutex mu_;               // guards handles_, cancelled_, first_error_, results_
  std::vector<RequestHandle> handles_;
  bool cancelled_ = false;
  Status first_error_;
  size_t failed_part_ = 0;  // the part that failed with first_error_
  std::string tenant_;      // the caller's, for a report of an INTERNAL answer
};

// INVALID_ARGUMENT unless `priority` fits the core's priority classes (an int >= 0); the models' own
// ranges are their batchers' to check. Every protocol's priority goes through it: one message.
Status CheckPriority(int64_t priority);

// A call's answer as StartRank keeps it: the status, and when OK the serialized RankResponse.
struct RankAnswer {
  Status status;
  std::string reply;
};

class RankCallHandle {
 public:
  RankCallHandle() = default;
  explicit RankCallHandle(std::weak_ptr<RankCall> call) : call_(std::move(call)) {}
  void Cancel() const;

 private:
  std::weak_ptr<RankCall> call_;
};

// How a call that owns itself (StartRank, StartInfer) keeps its answer: `response` serialized when OK, set
// on `answer`, then `answered` run (if any).
void KeepAnswer(const Status& status, const google::protobuf::MessageLite& response, Outcome<RankAnswer>& answer,
                const std::function<void()>& answered);

RankCallHandle StartRank(std::string_view bytes, const ModelRegistry& registry, const RankCallOptions& options,
                         std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered = nullptr);

}  // namespace adrank
