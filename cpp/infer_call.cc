#include "infer_call.h"

#include <google/protobuf/io/zero_copy_stream.h>

#include <algorithm>
#include <utility>

#include "wire_request.h"

namespace adrank {
namespace {

// StartInfer's call: owns itself (self_) from its start until its answer is kept.
class KeptInferCall final : public InferCall {
 public:
  KeptInferCall(std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered)
      : answer_(std::move(answer)), answered_(std::move(answered)) {}

  static RankCallHandle Start(std::string_view bytes, const ModelRegistry& registry, const RankCallOptions& options,
                              std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered) {
    auto call = std::make_shared<KeptInferCall>(std::move(answer), std::move(answered));
    call->self_ = call;
    RankCallHandle handle(call);
    call->ParseInfer(bytes);
    call->StartInfer(registry, options);
    return handle;
  }

 private:
  void Answer(const Status& status, inference::ModelInferResponse* response) override {
    const std::shared_ptr<KeptInferCall> self = std::move(self_);  // the call ends with this scope
    KeepAnswer(status, *response, *answer_, answered_);
  }

  const std::shared_ptr<Outcome<RankAnswer>> answer_;
  const std::function<void()> answered_;
  std::shared_ptr<KeptInferCall> self_;
};

}  // namespace

RankCallHandle StartInfer(std::string_view bytes, const ModelRegistry& registry, const RankCallOptions& options,
                          std::shared_ptr<Outcome<RankAnswer>> answer, std::function<void()> answered) {
  return KeptInferCall::Start(bytes, registry, options, std::move(answer), std::move(answered));
}

void InferCall::ParseInfer(std::string_view bytes) {
  if (!infer_.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    parse_status_ = ParseError(bytes, inference::ModelInferRequest::descriptor());
  }
}

void InferCall::ParseInfer(google::protobuf::io::ZeroCopyInputStream* stream,
                           const std::function<std::string()>& bytes) {
  if (!infer_.ParseFromZeroCopyStream(stream)) {
    parse_status_ = ParseError(bytes(), inference::ModelInferRequest::descriptor());
  }
}

void InferCall::StartInfer(const ModelRegistry& registry, RankCallOptions options) {
  Status status = parse_status_;
  if (status.ok()) status = ToRankRequest(&infer_, registry, mutable_request(), &meaning_);
  if (!status.ok()) {
    SetParseFailure(std::move(status));
  } else if (meaning_.timeout > Duration::zero()) {
    const TimePoint by_timeout = SteadyClock::Get()->Now() + meaning_.timeout;
    options.deadline = options.deadline == kNoDeadline ? by_timeout : std::min(options.deadline, by_timeout);
  }
  Start(registry, options);
}

void InferCall::Answer(const Status& status, v1::RankResponse* response) {
  if (status.ok()) ToInferResponse(meaning_, response, &infer_response_);
  Answer(status, &infer_response_);
}

}  // namespace adrank
