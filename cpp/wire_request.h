// WireRequest: an adrank.v1.RankRequest checked and turned into one core Request per requested model.
//
// This is the front end's whole per-request work, in one pass and without Python: resolve each model
// (NOT_FOUND), decode each tensor once (its bytes are viewed in place, never copied, except a text,
// which becomes its model's fixed-width UTF-8 byte row), check the request's shape (one N shared by
// every candidate tensor, 1 <= N <= the model's max_candidates, one row per context tensor, no tensor
// that no requested model takes) and each model's own rules (dtype, role, NaN and inf where refused).
// Names, trailing dims and byte sizes against the signature are the batcher's to check at Submit.
// Every error is INVALID_ARGUMENT or NOT_FOUND with a message that names the field. Both front ends reach
// this through RankCall (rank_call.h): the messages exist once.
//
// Routing: each model's version comes from the registry's rollout (model_registry.h), keyed by the
// request's routing_key, else its request id. A model whose rollout mirrors the request to a shadow
// version also gets a shadow ModelCall, which owns copies of its inputs (it outlives the RPC). A shadow
// that cannot take the request (its signature differs) is counted failed in its stats and left out:
// a shadow never fails a call. A request refused by a model's own checks (its inputs, N against its
// max_candidates, finiteness) is counted in that version's stats under its code; errors of the call as
// a whole (decoding, N disagreeing across tensors, unknown model or tensor) belong to no version.
//
// Lifetime: the core Requests borrow the RankRequest's bytes and the ModelCall's owned bytes; both
// must outlive the requests' completions (a shadow's borrow only its own).
//
// Parsing: RankCall parses the request's bytes itself (rank_call.h). Bytes that protobuf refuses
// are explained by ParseError, which walks them by the message's descriptor: the field path (e.g.
// "candidates[1].name") and byte offset where they stop being an adrank.v1.RankRequest and why (cut
// off, over-long varint, invalid wire type, a string that is not UTF-8, nesting too deep).
//
// Thread-safety: PrepareRank and ParseError are pure functions of its arguments (the registry is read through a
// snapshot).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "adrank/v1/ranking.pb.h"
#include "model_registry.h"
#include "request.h"
#include "status.h"

namespace google::protobuf {
class Descriptor;
}

namespace adrank {

struct ModelCall {
  std::shared_ptr<const ServedModel> model;
  Request request;  // on_complete, deadline and priority are the caller's to set
  std::vector<std::unique_ptr<std::vector<uint8_t>>> owned;  // bytes the request's views point to (text rows)
};

// INVALID_ARGUMENT "request: not an adrank.v1.RankRequest (N bytes): <field> at byte <k>: <why>", for
// bytes that failed to parse.
Status ParseError(std::string_view bytes);
// The same for any message type (another protocol's request: infer_call.h).
Status ParseError(std::string_view bytes, const google::protobuf::Descriptor* type);

Status PrepareRank(const v1::RankRequest& request, const ModelRegistry& registry, std::vector<ModelCall>* calls,
                   std::vector<ModelCall>* shadows = nullptr);

}  // namespace adrank
