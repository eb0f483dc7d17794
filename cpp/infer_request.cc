#include "infer_request.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "rank_call.h"

namespace adrank {
namespace {

struct Datatype {
  const char* name;
  v1::DataType wire;
};

constexpr Datatype kDatatypes[] = {
    {"BOOL", v1::DATA_TYPE_BOOL},    {"UINT8", v1::DATA_TYPE_UINT8},
    {"INT8", v1::DATA_TYPE_INT8},    {"INT16", v1::DATA_TYPE_INT16},
    {"INT32", v1::DATA_TYPE_INT32},  {"INT64", v1::DATA_TYPE_INT64},
    {"FP16", v1::DATA_TYPE_FLOAT16}, {"FP32", v1::DATA_TYPE_FLOAT32},
    {"FP64", v1::DATA_TYPE_FLOAT64}, {kInferBytesDatatype, v1::DATA_TYPE_STRING},
};

std::optional<v1::DataType> WireDatatype(const std::string& name) {
  for (const Datatype& datatype : kDatatypes) {
    if (name == datatype.name) return datatype.wire;
  }
  return std::nullopt;
}

std::string SupportedDatatypes() {
  std::string out;
  for (const Datatype& datatype : kDatatypes) out += (out.empty() ? "" : ", ") + std::string(datatype.name);
  return out;
}

std::string Quote(const std::string& text) { return "'" + text + "'"; }

// An integer parameter: clients send int64_param or uint64_param (tritonclient's priority is the latter).
std::optional<int64_t> IntegerParameter(const inference::InferParameter& value) {
  switch (value.parameter_choice_case()) {
    case inference::InferParameter::kInt64Param:
      return value.int64_param();
    case inference::InferParameter::kUint64Param:
      return value.uint64_param() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                 ? std::numeric_limits<int64_t>::max()
                 : static_cast<int64_t>(value.uint64_param());
    default:
      return std::nullopt;
  }
}

Status ApplyParameters(const inference::ModelInferRequest& infer, v1::RankRequest* rank, InferMeaning* meaning) {
  for (const auto& [name, value] : infer.parameters()) {
    const std::string where = "parameters." + name;
    if (name == "priority") {
      const std::optional<int64_t> priority = IntegerParameter(value);
      if (!priority) return InvalidArgument(where + ": expected an integer (the priority class, 0 highest)");
      const Status status = CheckPriority(*priority);
      if (!status.ok()) return status;
      rank->set_priority(static_cast<uint32_t>(*priority));
    } else if (name == "routing_key") {
      if (value.parameter_choice_case() != inference::InferParameter::kStringParam) {
        return InvalidArgument(where + ": expected a string_param (the canary routing key)");
      }
      rank->set_routing_key(value.string_param());
    } else if (name == "timeout") {
      const std::optional<int64_t> timeout = IntegerParameter(value);
      if (!timeout || *timeout <= 0) return InvalidArgument(where + ": expected an integer > 0 (microseconds)");
      // In microseconds first: the nanoseconds of a timeout beyond the cap may not fit an int64.
      meaning->timeout = std::chrono::microseconds(std::min(*timeout, ToMicros(kMaxInferTimeout)));
    }
  }
  return Status::Ok();
}

// Typed contents, encoded little-endian as raw bytes (this core runs on little-endian hosts only).
template <typename Out, typename Values>
Status Encode(const Values& values, const std::string& where, std::string* raw) {
  raw->resize(static_cast<size_t>(values.size()) * sizeof(Out));
  char* out = raw->data();
  for (const auto value : values) {
    if constexpr (!std::is_same_v<Out, bool> && !std::is_floating_point_v<Out>) {
      if (value < std::numeric_limits<Out>::min() || value > std::numeric_limits<Out>::max()) {
        return InvalidArgument(where + ": value " + std::to_string(value) + " is outside the datatype's range");
      }
    }
    const Out element = static_cast<Out>(value);
    std::memcpy(out, &element, sizeof(Out));
    out += sizeof(Out);
  }
  return Status::Ok();
}

Status EncodeBytes(const google::protobuf::RepeatedPtrField<std::string>& values, std::string* raw) {
  raw->clear();
  for (const std::string& value : values) {
    const auto length = static_cast<uint32_t>(value.size());
    char prefix[4];
    std::memcpy(prefix, &length, 4);
    raw->append(prefix, 4);
    raw->append(value);
  }
  return Status::Ok();
}

// The one typed field `wire` reads, encoded; how many values it held in `count`.
Status EncodeContents(const inference::InferTensorContents& c, v1::DataType wire, const std::string& where,
                      std::string* raw, int64_t* count) {
  switch (wire) {
    case v1::DATA_TYPE_BOOL:
      *count = c.bool_contents_size();
      return Encode<bool>(c.bool_contents(), where, raw);
    case v1::DATA_TYPE_UINT8:
      *count = c.uint_contents_size();
      return Encode<uint8_t>(c.uint_contents(), where, raw);
    case v1::DATA_TYPE_INT8:
      *count = c.int_contents_size();
      return Encode<int8_t>(c.int_contents(), where, raw);
    case v1::DATA_TYPE_INT16:
      *count = c.int_contents_size();
      return Encode<int16_t>(c.int_contents(), where, raw);
    case v1::DATA_TYPE_INT32:
      *count = c.int_contents_size();
      return Encode<int32_t>(c.int_contents(), where, raw);
    case v1::DATA_TYPE_INT64:
      *count = c.int64_contents_size();
      return Encode<int64_t>(c.int64_contents(), where, raw);
    case v1::DATA_TYPE_FLOAT32:
      *count = c.fp32_contents_size();
      return Encode<float>(c.fp32_contents(), where, raw);
    case v1::DATA_TYPE_FLOAT64:
      *count = c.fp64_contents_size();
      return Encode<double>(c.fp64_contents(), where, raw);
    case v1::DATA_TYPE_STRING:
      *count = c.bytes_contents_size();
      return EncodeBytes(c.bytes_contents(), raw);
    default:
      return InvalidArgument(where + ": FP16 has no typed contents; send it in raw_input_contents");
  }
}

int64_t Elements(const google::protobuf::RepeatedField<int64_t>& shape) {
  int64_t elements = 1;
  for (const int64_t dim : shape) {
    if (dim < 0 || (dim > 0 && elements > std::numeric_limits<int64_t>::max() / dim)) return -1;
    elements *= dim;
  }
  return elements;
}

std::string ShapeString(const google::protobuf::RepeatedField<int64_t>& shape) {
  std::string out = "[";
  for (int i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// Input i's bytes: moved from raw_input_contents, or encoded from its typed contents.
Status InputBytes(inference::ModelInferRequest* infer, int i, v1::DataType wire, std::string* raw) {
  inference::ModelInferRequest::InferInputTensor* input = infer->mutable_inputs(i);
  const std::string where = "inputs[" + std::to_string(i) + "] (" + Quote(input->name()) + ")";
  if (infer->raw_input_contents_size() > 0) {
    if (input->has_contents()) {
      return InvalidArgument(where + ".contents: set although the request sends raw_input_contents");
    }
    *raw = std::move(*infer->mutable_raw_input_contents(i));
    return Status::Ok();
  }
  if (!input->has_contents()) return InvalidArgument(where + ": no data (contents or raw_input_contents)");
  int64_t count = 0;
  const Status status = EncodeContents(input->contents(), wire, where + ".contents", raw, &count);
  if (!status.ok()) return status;
  const int64_t elements = Elements(input->shape());
  if (count != elements) {
    return InvalidArgument(where + ".contents: " + std::to_string(count) + " values for shape " +
                           ShapeString(input->shape()) + " (" + std::to_string(elements) + " elements)");
  }
  return Status::Ok();
}

// The model a request names (the version pinned, else the stable one), for its inputs' roles and its score
// output; routing itself is the contract's.
Status NamedModel(const ModelRegistry& registry, const std::string& model, int64_t version,
                  std::shared_ptr<const ServedModel>* served) {
  const Status status = registry.Resolve(model, version, served);
  if (status.ok()) return status;
  // Refused before Rank routes it: counted here as Route would count it (model_registry.h).
  if (registry.Versions(model).empty()) registry.CountUnknownModel();
  // The registry's message, naming this protocol's field rather than Rank's.
  constexpr std::string_view kRankField = "models: ";
  const std::string& message = status.message();
  if (message.rfind(kRankField, 0) != 0) return status;
  return Status(status.code(), "model_name: " + message.substr(kRankField.size()));
}

bool TakesAsContext(const ServedModel& model, const std::string& name) {
  for (const ServedInput& input : model.inputs) {
    if (input.name == name) return input.role == Role::kContext;
  }
  return false;  // not an input of the model: the contract names it
}

Status CheckOutputs(const inference::ModelInferRequest& infer, const std::string& score_output) {
  for (int i = 0; i < infer.outputs_size(); ++i) {
    const std::string& name = infer.outputs(i).name();
    if (name != score_output) {
      return InvalidArgument("outputs[" + std::to_string(i) + "].name: " + Quote(name) + " is not an output of model " +
                             Quote(infer.model_name()) + " (it answers " + Quote(score_output) + ")");
    }
  }
  return Status::Ok();
}

}  // namespace

Status ParseInferVersion(const std::string& text, int64_t* version) {
  *version = 0;
  if (text.empty()) return Status::Ok();
  const bool digits = text.find_first_not_of("0123456789") == std::string::npos && text.size() <= 18;
  if (digits) *version = std::strtoll(text.c_str(), nullptr, 10);
  if (!digits || *version <= 0) {
    return InvalidArgument("model_version: " + Quote(text) +
                           " is not a version number (a positive integer; empty picks the serving version)");
  }
  return Status::Ok();
}

const char* InferDatatype(DType dtype) {
  switch (dtype) {
    case DType::kBool:
      return "BOOL";
    case DType::kUInt8:
      return "UINT8";
    case DType::kInt8:
      return "INT8";
    case DType::kInt16:
      return "INT16";
    case DType::kInt32:
      return "INT32";
    case DType::kInt64:
      return "INT64";
    case DType::kFloat16:
      return "FP16";
    case DType::kFloat32:
      return "FP32";
    case DType::kFloat64:
      return "FP64";
  }
  return "FP32";
}

Status ToRankRequest(inference::ModelInferRequest* infer, const ModelRegistry& registry, v1::RankRequest* rank,
                     InferMeaning* meaning) {
  if (infer->model_name().empty()) return InvalidArgument("model_name: empty; name the model to run");
  int64_t version = 0;
  Status status = ParseInferVersion(infer->model_version(), &version);
  if (!status.ok()) return status;
  std::shared_ptr<const ServedModel> served;
  status = NamedModel(registry, infer->model_name(), version, &served);
  if (!status.ok()) return status;
  meaning->score_output = served->score_output;
  status = CheckOutputs(*infer, meaning->score_output);
  if (!status.ok()) return status;
  v1::ModelSpec* spec = rank->add_models();
  spec->set_name(infer->model_name());
  spec->set_version(version);
  rank->set_request_id(infer->id());
  status = ApplyParameters(*infer, rank, meaning);
  if (!status.ok()) return status;
  if (infer->raw_input_contents_size() > 0 && infer->raw_input_contents_size() != infer->inputs_size()) {
    return InvalidArgument("raw_input_contents: " + std::to_string(infer->raw_input_contents_size()) + " entries for " +
                           std::to_string(infer->inputs_size()) +
                           " inputs; send one per input, or typed contents for all");
  }
  for (int i = 0; i < infer->inputs_size(); ++i) {
    const inference::ModelInferRequest::InferInputTensor& input = infer->inputs(i);
    const std::optional<v1::DataType> wire = WireDatatype(input.datatype());
    if (!wire) {
      return InvalidArgument("inputs[" + std::to_string(i) + "] (" + Quote(input.name()) + ").datatype: " +
                             Quote(input.datatype()) + " is not one adrank serves (" + SupportedDatatypes() + ")");
    }
    v1::Tensor* tensor = TakesAsContext(*served, input.name()) ? rank->add_context() : rank->add_candidates();
    tensor->set_name(input.name());
    tensor->set_dtype(*wire);
    tensor->mutable_shape()->CopyFrom(input.shape());
    status = InputBytes(infer, i, *wire, tensor->mutable_raw_data());
    if (!status.ok()) return status;
  }
  return Status::Ok();
}

void ToInferResponse(const InferMeaning& meaning, v1::RankResponse* rank, inference::ModelInferResponse* infer) {
  infer->set_id(rank->request_id());
  if (rank->results_size() == 0) return;
  v1::ModelScores* scores = rank->mutable_results(0);
  infer->set_model_name(scores->model());
  infer->set_model_version(std::to_string(scores->version()));
  inference::ModelInferResponse::InferOutputTensor* output = infer->add_outputs();
  output->set_name(meaning.score_output);
  output->set_datatype(InferDatatype(DType::kFloat32));
  output->add_shape(static_cast<int64_t>(scores->scores().size() / sizeof(float)));
  *infer->add_raw_output_contents() = std::move(*scores->mutable_scores());
  auto& parameters = *infer->mutable_parameters();
  parameters["queue_us"].set_int64_param(scores->timing().queue_us());
  parameters["compute_us"].set_int64_param(scores->timing().compute_us());
  parameters["batch_rows"].set_int64_param(scores->timing().batch_rows());
}

}  // namespace adrank
