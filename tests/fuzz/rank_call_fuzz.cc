// Fuzz target: the Rank contract (cpp/rank_call.h) over an adrank.v1.RankRequest's bytes, as a gRPC Rank call
// reaches it from either front end, without Python.
//
// Input: the serialized request, exactly what a client sends as the call's message (seeds:
// tests/fuzz/corpus/rank_call, real requests made from the bundled models' golden inputs by make_corpus.py).
//
// What runs: StartRank (the Python front end's way in; the C++ one's RankCall is the same class) against
// FuzzModels' registry (fuzz_models.h: ctr and relevance shaped versions, a shadow and a canary, the real core
// batching them, a backend reading every input byte): the parse, ParseError's explanation of bytes protobuf
// refuses, the priority check, routing, every tensor's decoding and check against each model's signature
// (PrepareRank, wire_request.h), the batcher's own checks at Submit, batching, the shadow mirror, the stats,
// and the response's serialization.
//
// Contract checked, for any bytes: the call answers exactly once (a call that never answers is libFuzzer's
// -timeout); a refusal is a client's error with a message (fuzz_models.h CheckAnswer); an OK answer is a
// RankResponse with the request's id and one result per requested model, in order, each holding one float32
// score per candidate. ASan and UBSan (built with -fno-sanitize-recover=all) turn any memory or undefined
// behaviour error into a crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "adrank/v1/ranking.pb.h"
#include "fuzz_models.h"
#include "outcome.h"
#include "rank_call.h"

namespace adrank::fuzz {
namespace {

// The candidates every model scored: the leading dimension the contract checked they share.
int64_t Candidates(const v1::RankRequest& request) {
  return request.candidates_size() > 0 && request.candidates(0).shape_size() > 0 ? request.candidates(0).shape(0) : -1;
}

void CheckResponse(std::string_view bytes, const std::string& reply) {
  v1::RankRequest request;
  Require(request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())), "Rank: OK for bytes that do not parse");
  v1::RankResponse response;
  Require(response.ParseFromString(reply), "Rank: the OK reply is not a RankResponse");
  Require(response.request_id() == request.request_id(), "Rank: the reply's request_id is not the request's");
  Require(response.results_size() == request.models_size(), "Rank: not one result per requested model");
  const int64_t candidates = Candidates(request);
  for (int i = 0; i < response.results_size(); ++i) {
    const v1::ModelScores& scores = response.results(i);
    Require(scores.model() == request.models(i).name(), "Rank: results not in the request's model order");
    Require(request.models(i).version() == 0 || scores.version() == request.models(i).version(),
            "Rank: a pinned model answered by another version");
    Require(candidates > 0 && scores.scores().size() == static_cast<size_t>(candidates) * sizeof(float),
            "Rank: a result without one float32 score per candidate");
  }
}

}  // namespace
}  // namespace adrank::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace adrank;
  const fuzz::FuzzModels& models = fuzz::FuzzModels::Get();
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto answer = std::make_shared<Outcome<RankAnswer>>();
  StartRank(bytes, models.registry(), RankCallOptions{}, answer);
  answer->Wait();
  const RankAnswer& answered = answer->value();
  fuzz::CheckAnswer(answered.status, "Rank");
  if (answered.status.ok()) fuzz::CheckResponse(bytes, answered.reply);
  return 0;
}
