// InferRequest: what a KServe v2 (Open Inference Protocol) ModelInfer call means in the Rank contract's
// terms, and the answer turned back into the protocol's response. The mapping is all a v2 call adds:
// everything after it (checks, routing, batching, recording, the messages of every error) is the Rank
// contract's (rank_call.h, wire_request.h), so a request refused over Rank is refused over v2 with the same
// message, and a v2 call costs what a Rank call does plus moving its tensors' bytes between messages.
//
// ModelInferRequest -> RankRequest (ToRankRequest):
//   model_name, model_version  one ModelSpec; "" picks by the rollout (stable, or canary by routing key),
//                              a positive integer pins that version. Anything else: INVALID_ARGUMENT.
//   id                         request_id (echoed back as the response's id).
//   inputs[i]                  a Tensor of the same name, shape and data. It goes to the RankRequest's
//                              context when the model takes that input as context (leading dimension 1,
//                              broadcast to every candidate, as over Rank), else to its candidates. The
//                              model is the one the request names (the pinned version, else the stable
//                              one); routing itself is the contract's.
//   raw_input_contents[i]      input i's bytes, little-endian, row-major; BYTES elements each a 4-byte
//                              little-endian length then the bytes (v2's layout, which is Rank's STRING).
//                              Moved, never copied. Either one per input or none.
//   inputs[i].contents         the typed alternative (fp32_contents, int64_contents, ...): encoded into
//                              raw bytes (a copy; clients that care send raw). FP16 has no typed form.
//   parameters                 "priority" (an integer, int64 or uint64: the class, 0 highest), "routing_key"
//                              (string, sticky canary assignment), "timeout" (an integer, µs: the call's
//                              deadline is the sooner of this and the gRPC deadline; one beyond
//                              kMaxInferTimeout counts as kMaxInferTimeout). Others are ignored, as Triton
//                              ignores parameters a model does not use. A known one of the wrong type:
//                              INVALID_ARGUMENT.
//   outputs                    may name only the model's score output (the only one Rank returns).
// Datatypes: BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES. UINT16/32/64 and BF16 have
// no core dtype: INVALID_ARGUMENT naming the input.
//
// RankResponse -> ModelInferResponse (ToInferResponse): model_name, model_version (the version that
// answered, as a decimal string), id, one output (the score output, FP32, shape [N]) whose bytes go to
// raw_output_contents (moved), and parameters "queue_us", "compute_us", "batch_rows" (the server's timing,
// as Rank's ServerTiming).
//
// Thread-safety: pure functions of their arguments (the registry is read through a snapshot).
#pragma once

#include <string>

#include "adrank/kserve/grpc_service.pb.h"
#include "adrank/v1/ranking.pb.h"
#include "clock.h"
#include "model_registry.h"
#include "status.h"
#include "tensor.h"

namespace adrank {

// The longest "timeout" taken as sent: a year bounds nothing a longer one would, and the nanoseconds of any
// int64 or uint64 microseconds, or the deadline they make, need not fit the core's clock.
inline constexpr Duration kMaxInferTimeout = std::chrono::hours(24 * 365);

// What ToRankRequest found besides the RankRequest.
struct InferMeaning {
  Duration timeout = Duration::zero();  // the "timeout" parameter, at most kMaxInferTimeout; zero when absent
  std::string score_output;             // the name of the one output the response carries
};

// Fills `rank` (expected empty) from `infer`, whose bytes it moves; INVALID_ARGUMENT naming the field, or
// the registry's NOT_FOUND for a model or version it does not serve.
Status ToRankRequest(inference::ModelInferRequest* infer, const ModelRegistry& registry, v1::RankRequest* rank,
                     InferMeaning* meaning);

// Fills `infer` from the contract's answer, moving its scores.
void ToInferResponse(const InferMeaning& meaning, v1::RankResponse* rank, inference::ModelInferResponse* infer);

// A v2 model_version: "" -> 0 (the rollout picks), a positive decimal integer -> that version, else
// INVALID_ARGUMENT naming model_version.
Status ParseInferVersion(const std::string& text, int64_t* version);

// v2's datatype names ("FP32", "INT64", ...) of a core dtype, and a text input's ("BYTES").
const char* InferDatatype(DType dtype);
inline constexpr char kInferBytesDatatype[] = "BYTES";

}  // namespace adrank
