// FuzzModels: what the libFuzzer targets (tests/fuzz/*_fuzz.cc) run a wire request against — a ModelRegistry
// holding versions shaped like the bundled models, batched by the real core (ThreadPool, batcher) with a
// backend that reads every input byte it is given and scores each row, and no ONNX Runtime.
//
//   ctr        (models/ctr/config.yaml)        dense float32 [13] (finite only) + sparse int64 [26], both
//              per candidate; score output "ctr"; max_candidates 2048. Version 1 is stable and version 2
//              its shadow on half the routing buckets (a mirrored request copies its inputs).
//   relevance  (models/relevance/config.yaml)  query: text context input (a STRING of one element riding the
//              core as a 1024-byte UTF-8 row) + ad_embedding float32 [384] (finite only) per candidate; score
//              output "relevance"; max_candidates 2048; per-request context, one request per batch.
//              Version 2 is stable and version 3 a canary on half the routing buckets.
//
// Batching is each config's, except that batches never wait for more rows (max_queue_delay_us 0): a fuzz
// input is one call, waited for.
//
// CheckAnswer is the targets' common contract on a call's answer: a refusal is a client's error (never
// UNKNOWN, INTERNAL, UNIMPLEMENTED or CANCELLED: no call is cancelled here) with a message; anything else
// aborts, which libFuzzer reports as a crash with the input that caused it. With ADRANK_FUZZ_PRINT set in the
// environment it prints every answer's status (to see what a corpus, or one input, gets).
//
// Thread-safety: Get() builds the models once (thread-safe); the registry is then read-only.
#pragma once

#include <memory>
#include <string_view>

#include "model_registry.h"
#include "status.h"
#include "thread_pool.h"

namespace adrank::fuzz {

class FuzzModels {
 public:
  static const FuzzModels& Get();

  const ModelRegistry& registry() const { return registry_; }

 private:
  FuzzModels();

  std::unique_ptr<ThreadPool> pool_;
  ModelRegistry registry_;
};

// Aborts, printing `what` and the status, unless `status` is OK or a client's error with a message.
void CheckAnswer(const Status& status, std::string_view what);

// Aborts, printing `what`, when `holds` is false.
void Require(bool holds, std::string_view what);

}  // namespace adrank::fuzz
