// InferMetadata: the KServe v2 (Open Inference Protocol) answers that describe rather than infer —
// ModelReady, ModelMetadata and ServerMetadata — written once over the registry, for every transport (the
// C++ gRPC front end, the Python one, the HTTP endpoint through the binding).
//
// ModelReady: true while the server serves and the model has the named version registered (empty version:
//   its stable one), so a client that waits for it before inferring is never refused NOT_FOUND; a model or
//   version the registry does not know is not ready (not an error), as Triton answers.
// ModelMetadata: the version asked for (empty: the stable one; NOT_FOUND, with the registry's message, when
//   there is none). `versions` lists every registered version, ascending; `platform` is the version's
//   (onnxruntime_onnx, tensorrt_plan). Inputs carry v2 datatypes and shapes as a client sends them: a
//   candidate input [-1, row dims...] (-1: the number of candidates), a context input [1, row dims...]
//   (broadcast to every candidate), a text input BYTES [1]. The one output is the score output, FP32 [-1].
// ModelConfig (Triton's, which perf_analyzer and Model Analyzer read first): the version asked for, as
//   ModelMetadata finds it; its inputs and output with Triton's TYPE_* and the same dims as ModelMetadata's
//   shapes, max_batch_size 0 (the candidate count is the -1 dim: the client sends whole requests, and
//   adrank batches them itself), platform and backend ("onnxruntime", "tensorrt").
// ServerMetadata: the server's name, version and the extensions it serves.
//
// Thread-safety: pure functions of their arguments (the registry is read through a snapshot).
#pragma once

#include <string>
#include <vector>

#include "adrank/kserve/grpc_service.pb.h"
#include "infer_request.h"
#include "model_registry.h"
#include "status.h"

namespace adrank {

struct InferServerInfo {
  std::string name = "adrank";
  std::string version;  // the package's version
  // The protocol's extensions served: binary tensor data on the HTTP port (python/adrank/server/kserve_rest.py),
  // Triton's model repository, behind the admin token (python/adrank/server/kserve_repository.py), and Triton's
  // statistics (infer_statistics.h).
  std::vector<std::string> extensions = {"binary_tensor_data", "model_repository", "statistics"};
};

void ModelReady(const ModelRegistry& registry, bool serving, const inference::ModelReadyRequest& request,
                inference::ModelReadyResponse* response);
Status ModelMetadata(const ModelRegistry& registry, const inference::ModelMetadataRequest& request,
                     inference::ModelMetadataResponse* response);
Status ModelConfig(const ModelRegistry& registry, const inference::ModelConfigRequest& request,
                   inference::ModelConfigResponse* response);
void ServerMetadata(const InferServerInfo& info, inference::ServerMetadataResponse* response);

}  // namespace adrank
