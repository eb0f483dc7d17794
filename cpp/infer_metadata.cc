#include "infer_metadata.h"

#include <memory>
#include <string>
#include <vector>

namespace adrank {
namespace {

// An input's shape as a client sends it: [-1, row dims...] per candidate, [1, row dims...] for context,
// [1] for a text.
std::vector<int64_t> WireShape(const ServedInput& input) {
  if (input.text_bytes > 0) return {1};
  std::vector<int64_t> shape{input.role == Role::kContext ? 1 : -1};
  shape.insert(shape.end(), input.row_shape.begin(), input.row_shape.end());
  return shape;
}

void DescribeInput(const ServedInput& input, inference::ModelMetadataResponse::TensorMetadata* tensor) {
  tensor->set_name(input.name);
  tensor->set_datatype(input.text_bytes > 0 ? kInferBytesDatatype : InferDatatype(input.dtype));
  for (const int64_t dim : WireShape(input)) tensor->add_shape(dim);
}

inference::DataType TritonType(DType dtype) {
  switch (dtype) {
    case DType::kBool:
      return inference::TYPE_BOOL;
    case DType::kUInt8:
      return inference::TYPE_UINT8;
    case DType::kInt8:
      return inference::TYPE_INT8;
    case DType::kInt16:
      return inference::TYPE_INT16;
    case DType::kInt32:
      return inference::TYPE_INT32;
    case DType::kInt64:
      return inference::TYPE_INT64;
    case DType::kFloat16:
      return inference::TYPE_FP16;
    case DType::kFloat32:
      return inference::TYPE_FP32;
    case DType::kFloat64:
      return inference::TYPE_FP64;
  }
  return inference::TYPE_INVALID;
}

// The version a describing request names: empty picks the stable one.
Status ResolveNamed(const ModelRegistry& registry, const std::string& name, const std::string& version_text,
                    std::shared_ptr<const ServedModel>* model) {
  int64_t version = 0;
  const Status status = ParseInferVersion(version_text, &version);
  return status.ok() ? registry.Resolve(name, version, model) : status;
}

}  // namespace

void ModelReady(const ModelRegistry& registry, bool serving, const inference::ModelReadyRequest& request,
                inference::ModelReadyResponse* response) {
  int64_t version = 0;
  std::shared_ptr<const ServedModel> model;
  response->set_ready(serving && ParseInferVersion(request.version(), &version).ok() &&
                      registry.Resolve(request.name(), version, &model).ok());
}

Status ModelMetadata(const ModelRegistry& registry, const inference::ModelMetadataRequest& request,
                     inference::ModelMetadataResponse* response) {
  std::shared_ptr<const ServedModel> model;
  const Status status = ResolveNamed(registry, request.name(), request.version(), &model);
  if (!status.ok()) return status;
  response->set_name(model->name);
  for (const int64_t registered : registry.Versions(model->name)) response->add_versions(std::to_string(registered));
  response->set_platform(model->platform);
  for (const ServedInput& input : model->inputs) DescribeInput(input, response->add_inputs());
  inference::ModelMetadataResponse::TensorMetadata* output = response->add_outputs();
  output->set_name(model->score_output);
  output->set_datatype(InferDatatype(DType::kFloat32));
  output->add_shape(-1);
  return Status::Ok();
}

Status ModelConfig(const ModelRegistry& registry, const inference::ModelConfigRequest& request,
                   inference::ModelConfigResponse* response) {
  std::shared_ptr<const ServedModel> model;
  const Status status = ResolveNamed(registry, request.name(), request.version(), &model);
  if (!status.ok()) return status;
  inference::ModelConfig* config = response->mutable_config();
  config->set_name(model->name);
  config->set_platform(model->platform);
  config->set_backend(model->platform.substr(0, model->platform.find('_')));  // "onnxruntime_onnx" -> "onnxruntime"
  config->set_max_batch_size(0);
  for (const ServedInput& input : model->inputs) {
    inference::ModelInput* tensor = config->add_input();
    tensor->set_name(input.name);
    tensor->set_data_type(input.text_bytes > 0 ? inference::TYPE_STRING : TritonType(input.dtype));
    for (const int64_t dim : WireShape(input)) tensor->add_dims(dim);
  }
  inference::ModelOutput* output = config->add_output();
  output->set_name(model->score_output);
  output->set_data_type(inference::TYPE_FP32);
  output->add_dims(-1);
  return Status::Ok();
}

void ServerMetadata(const InferServerInfo& info, inference::ServerMetadataResponse* response) {
  response->set_name(info.name);
  response->set_version(info.version);
  for (const std::string& extension : info.extensions) response->add_extensions(extension);
}

}  // namespace adrank
