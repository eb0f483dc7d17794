// InferCall: a KServe v2 ModelInfer call on the Rank contract. It parses an inference.ModelInferRequest,
// maps it onto the RankRequest it means (infer_request.h), and from there is a RankCall (rank_call.h): the
// same checks, routing, batching, shadow mirror, recording and error messages. Its answer is the
// ModelInferResponse (or the contract's Status, whose code is gRPC's).
//
// What v2 adds to the call: the "timeout" parameter (µs) shortens the call's deadline (the sooner of it and
// the transport's, counted from the call's arrival); an unparseable request is INVALID_ARGUMENT naming the
// field and byte (wire_request.h ParseError, over ModelInferRequest's descriptor).
//
// Lifetime, thread-safety and latency: RankCall's. ParseInfer and StartInfer replace RankCall's Parse and
// Start; Answer(status, ModelInferResponse*) replaces RankCall's Answer and is, like it, the contract's last
// use of the call.
//
// StartInfer: StartRank's counterpart (a call that owns itself until it answers); its answer's reply is the
// serialized ModelInferResponse.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "adrank/kserve/grpc_service.pb.h"
#include "infer_request.h"
#include "model_registry.h"
#include "outcome.h"
#include "rank_call.h"
#include "status.h"

namespace google::protobuf::io {
class ZeroCopyInputStream;
}

namespace adrank {

class InferCall : public RankCall {
 public:
  // The request's bytes, contiguous or as a stream (`bytes` gives them whole, only to explain a failure).
  void ParseInfer(std::string_view bytes);
  void ParseInfer(google::protobuf::io::ZeroCopyInputStream* stream, const std::function<std::string()>& bytes);

  // RankCall::Start, after mapping the request (a refusal of the mapping is answered like any other).
  void StartInfer(const ModelRegistry& registry, RankCallOptions options);

 protected:
  virtual void Answer(const Status& status, inference::ModelInferResponse* response) = 0;

 private:
  void Answer(const Status& status, v1::RankResponse* response) final;

  inference::ModelInferRequest infer_;
  inference::ModelInferResponse infer_response_;
  InferMeaning meaning_;
  Status parse_status_;
};

RankCallHandle StartInfer(std::string_view bytes, const ModelRegistry& registry, const RankCallOptions& options,
                          std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered = nullptr);

}  // namespace adrank
