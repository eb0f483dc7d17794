#include "fuzz_models.h"

#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "tensor.h"
#include "version_stats.h"

namespace adrank::fuzz {
namespace {

// The bundled models' text input rides the core as a row of this many bytes (the tokenizer's max_bytes default).
constexpr int64_t kQueryBytes = 1024;
constexpr int64_t kMaxCandidates = 2048;

// Reads every byte of every input (so that a view past its buffer is ASan's to see) and scores each row
// with a value in [0, 1) derived from them.
Status ReadAndScore(BatchIO& io) {
  uint32_t sum = 0;
  for (const BatchTensor& input : io.inputs) {
    const auto* bytes = static_cast<const uint8_t*>(input.data);
    for (size_t i = 0; i < input.byte_size; ++i) sum = sum * 31 + bytes[i];
  }
  if (io.row_request_index != nullptr) {
    for (int64_t r = 0; r < io.rows; ++r) sum += static_cast<uint32_t>(io.row_request_index[r]);
  }
  Require(!io.outputs.empty() && io.outputs[0].byte_size == static_cast<size_t>(io.rows) * sizeof(float),
          "backend: the score output does not hold one float32 per row");
  auto* score = static_cast<float*>(io.outputs[0].data);
  for (int64_t r = 0; r < io.rows; ++r) score[r] = static_cast<float>((sum + r) % 1000) / 1000.0f;
  return Status::Ok();
}

struct Shape {
  std::string name;
  std::vector<ServedInput> inputs;
  std::string score_output;
  BatcherOptions batching;
  double score_low = 0.0;
  double score_high = 1.0;
};

Shape Ctr() {
  Shape shape;
  shape.name = "ctr";
  shape.inputs = {{"dense", DType::kFloat32, {13}, Role::kCandidate, false, 0},
                  {"sparse", DType::kInt64, {26}, Role::kCandidate, true, 0}};
  shape.score_output = "ctr";
  shape.batching.max_batch_rows = 512;
  shape.batching.preferred_batch_rows = {64, 256, 512};
  return shape;
}

Shape Relevance() {
  Shape shape;
  shape.name = "relevance";
  shape.inputs = {{"query", DType::kUInt8, {kQueryBytes}, Role::kContext, true, kQueryBytes},
                  {"ad_embedding", DType::kFloat32, {384}, Role::kCandidate, false, 0}};
  shape.score_output = "relevance";
  shape.batching.max_batch_rows = 2048;
  shape.batching.preferred_batch_rows = {64, 256, 1024, 2048};
  shape.batching.max_queue_rows = 32768;
  shape.batching.context_layout = ContextLayout::kPerRequest;
  shape.batching.max_batch_requests = 1;
  shape.score_low = -1.0;
  return shape;
}

void Add(ThreadPool& pool, ModelRegistry& registry, const Shape& shape, int64_t version, bool serving) {
  ModelOptions model;
  model.name = shape.name + ":" + std::to_string(version);
  for (const ServedInput& input : shape.inputs) {
    model.signature.inputs.push_back({input.name, input.dtype, input.row_shape, input.role});
  }
  model.signature.outputs = {{shape.score_output, DType::kFloat32, {}, Role::kCandidate}};
  model.batching = shape.batching;
  model.batching.max_queue_delay_us = 0;
  model.batching.max_request_rows = kMaxCandidates;
  model.backend = ReadAndScore;
  auto served = std::make_shared<ServedModel>();
  Require(pool.AddModel(std::move(model), &served->queue).ok(), "fuzz models: AddModel failed");
  served->name = shape.name;
  served->version = version;
  served->inputs = shape.inputs;
  served->score_output = shape.score_output;
  served->max_candidates = kMaxCandidates;
  served->lowest_priority = shape.batching.priority_levels - 1;
  served->platform = "onnxruntime_onnx";
  Require(VersionStats::Create(VersionStatsOptions{shape.score_low, shape.score_high, 1000}, &served->stats).ok(),
          "fuzz models: VersionStats::Create failed");
  registry.Add(std::move(served), serving);
}

}  // namespace

const FuzzModels& FuzzModels::Get() {
  static const FuzzModels models;
  return models;
}

FuzzModels::FuzzModels() {
  // protobuf logs every string field that is not UTF-8 as an ERROR: millions of lines in a run, and the time to
  // write them. Its fatal checks still abort.
  google::protobuf::SetLogHandler(nullptr);
  ThreadPoolOptions options;
  options.num_workers = 1;
  Require(ThreadPool::Create(options, &pool_).ok(), "fuzz models: ThreadPool::Create failed");
  Add(*pool_, registry_, Ctr(), 1, true);
  Add(*pool_, registry_, Ctr(), 2, false);
  RolloutRoute ctr;
  ctr.stable = 1;
  ctr.shadow = 2;
  ctr.shadow_basis_points = 5000;
  Require(registry_.SetRollout("ctr", ctr).ok(), "fuzz models: ctr rollout refused");
  Add(*pool_, registry_, Relevance(), 2, true);
  Add(*pool_, registry_, Relevance(), 3, false);
  RolloutRoute relevance;
  relevance.stable = 2;
  relevance.canary = 3;
  relevance.canary_basis_points = 5000;
  Require(registry_.SetRollout("relevance", relevance).ok(), "fuzz models: relevance rollout refused");
}

void CheckAnswer(const Status& status, std::string_view what) {
  static const bool print = std::getenv("ADRANK_FUZZ_PRINT") != nullptr;
  if (print) std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(what.size()), what.data(), status.ToString().c_str());
  switch (status.code()) {
    case StatusCode::kOk:
      return;
    case StatusCode::kInvalidArgument:
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kNotFound:
    case StatusCode::kPermissionDenied:
    case StatusCode::kResourceExhausted:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kUnavailable:
      Require(!status.message().empty(), std::string(what) + ": a refusal without a message");
      return;
    default:
      Require(false, std::string(what) + ": answered " + status.ToString());
  }
}

void Require(bool holds, std::string_view what) {
  if (holds) return;
  std::fprintf(stderr, "fuzz contract broken: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

}  // namespace adrank::fuzz
