// InferStatistics: Triton's statistics extension of KServe v2 (ModelStatistics over gRPC, `GET
// /v2/models[/{m}[/versions/{v}]]/stats` over HTTP), written once over the registry for every transport (the
// C++ gRPC front end, the Python one, the HTTP endpoint through the binding), from the counters the core
// already keeps: each version's VersionStats (version_stats.h) and its queue's BatcherStats (batcher.h).
//
// Which versions: no name, every version of every model (models by name, versions ascending); a name, every
// registered version of that model (NOT_FOUND, with the registry's message, for a model it does not serve);
// a name and a version, that one (NOT_FOUND when it is not registered; a version that is no positive integer
// is INVALID_ARGUMENT naming model_version). A version without a name is INVALID_ARGUMENT.
//
// What each field means here (Triton's definitions, mapped onto adrank's counters; all cumulative since the
// version was loaded, so a client takes two readings and subtracts them):
//   inference_count   candidates scored by OK requests: Triton counts each element of a batched request, and
//                     a candidate is adrank's element (a request of N candidates counts N).
//   execution_count   batches the version's queue executed (several requests may share one).
//   success           OK requests; ns: their request latency (arrival at the front end until this model's
//                     part completed), summed.
//   fail              requests that ended with any other status code (refused, failed, dropped for lack of
//                     time or room); ns 0: latencies are kept for OK requests only.
//   queue             OK requests; ns: their time in the batcher.
//   compute_infer     OK requests; ns: their batch's execution (gathering inputs and scattering scores
//                     included: the core times the batch as one).
//   compute_input, compute_output
//                     OK requests, ns 0: their time is inside compute_infer.
//   last_inference    0: not kept. batch_stats: empty: batches are counted by bucket of rows, not by exact
//                     size (Prometheus' adrank_batch_rows gives the distribution). cache_hit/miss: no cache.
// A server run without metrics (`--no-metrics`) does not count per version: its counts stay 0.
//
// Thread-safety: a pure function of its arguments (the registry is read through a snapshot; the counters
// are read under their own locks).
#pragma once

#include "adrank/kserve/grpc_service.pb.h"
#include "model_registry.h"
#include "status.h"

namespace adrank {

Status ModelStatistics(const ModelRegistry& registry, const inference::ModelStatisticsRequest& request,
                       inference::ModelStatisticsResponse* response);

}  // namespace adrank
