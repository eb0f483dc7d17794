// Fuzz target: a KServe v2 ModelInfer call on the Rank contract (cpp/infer_call.h) over an
// inference.ModelInferRequest's bytes, as the C++ and Python front ends' GRPCInferenceService hands it over,
// without Python.
//
// Input: the serialized request, exactly what a v2 client sends as the call's message (seeds:
// tests/fuzz/corpus/infer_call, real requests made from the bundled models' golden inputs by make_corpus.py:
// raw_input_contents and the typed contents, with v2's parameters).
//
// What runs: StartInfer against FuzzModels' registry (fuzz_models.h): the parse, ParseError over
// ModelInferRequest's descriptor, the mapping onto a RankRequest (infer_request.h ToRankRequest: model_version,
// datatypes, raw and typed contents, context or candidate by the model's signature, the priority, routing_key and
// timeout parameters, the requested outputs), then everything the Rank contract does (rank_call_fuzz.cc), and the
// answer mapped back (ToInferResponse) and serialized.
//
// Contract checked, for any bytes: the call answers exactly once; a refusal is a client's error with a message
// (fuzz_models.h CheckAnswer); an OK answer is a ModelInferResponse naming the requested model and echoing the
// id, with one FP32 output of shape [N] whose N * 4 bytes are in raw_output_contents. ASan and UBSan turn any
// memory or undefined behaviour error into a crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "adrank/kserve/grpc_service.pb.h"
#include "fuzz_models.h"
#include "infer_call.h"
#include "infer_request.h"
#include "outcome.h"

namespace adrank::fuzz {
namespace {

void CheckResponse(std::string_view bytes, const std::string& reply) {
  inference::ModelInferRequest request;
  Require(request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())),
          "ModelInfer: OK for bytes that do not parse");
  inference::ModelInferResponse response;
  Require(response.ParseFromString(reply), "ModelInfer: the OK reply is not a ModelInferResponse");
  Require(response.model_name() == request.model_name(), "ModelInfer: the reply names another model");
  int64_t pinned = 0;
  Require(ParseInferVersion(request.model_version(), &pinned).ok(), "ModelInfer: OK for a malformed model_version");
  Require(pinned == 0 || response.model_version() == std::to_string(pinned),
          "ModelInfer: a pinned version answered by another");
  Require(response.id() == request.id(), "ModelInfer: the reply's id is not the request's");
  Require(response.outputs_size() == 1 && response.raw_output_contents_size() == 1,
          "ModelInfer: not exactly one output with raw contents");
  const inference::ModelInferResponse::InferOutputTensor& output = response.outputs(0);
  Require(output.datatype() == "FP32" && output.shape_size() == 1 && output.shape(0) > 0,
          "ModelInfer: the output is not FP32 [N]");
  Require(response.raw_output_contents(0).size() == static_cast<size_t>(output.shape(0)) * sizeof(float),
          "ModelInfer: the output's bytes are not N float32");
}

}  // namespace
}  // namespace adrank::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace adrank;
  const fuzz::FuzzModels& models = fuzz::FuzzModels::Get();
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto answer = std::make_shared<Outcome<RankAnswer>>();
  StartInfer(bytes, models.registry(), RankCallOptions{}, answer);
  answer->Wait();
  const RankAnswer& answered = answer->value();
  fuzz::CheckAnswer(answered.status, "ModelInfer");
  if (answered.status.ok()) fuzz::CheckResponse(bytes, answered.reply);
  return 0;
}
