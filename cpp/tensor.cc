#include "tensor.h"

#include <limits>
#include <set>
#include <sstream>

namespace adrank {
namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "bool", 1},       {DType::kUInt8, "uint8", 1},     {DType::kInt8, "int8", 1},
    {DType::kInt16, "int16", 2},     {DType::kInt32, "int32", 4},     {DType::kInt64, "int64", 8},
    {DType::kFloat16, "float16", 2}, {DType::kFloat32, "float32", 4}, {DType::kFloat64, "float64", 8},
};

const DTypeInfo* Find(DType dtype) {
  for (const auto& info : kDTypes) {
    if (info.dtype == dtype) return &info;
  }
  return nullptr;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? "," : "") << shape[i];
  out << "]";
  return out.str();
}

// Multiplies with an overflow check; false if the product does not fit in size_t.
bool CheckedMul(size_t a, size_t b, size_t* out) {
  if (a != 0 && b > std::numeric_limits<size_t>::max() / a) return false;
  *out = a * b;
  return true;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  const DTypeInfo* info = Find(dtype);
  return info ? info->size : 0;
}

const char* DTypeName(DType dtype) {
  const DTypeInfo* info = Find(dtype);
  return info ? info->name : "unknown";
}

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return std::nullopt;
}

size_t TensorSpec::RowElements() const {
  size_t n = 1;
  for (int64_t d : row_shape) n *= static_cast<size_t>(d);
  return n;
}

Status ModelSignature::Validate() const {
  if (inputs.empty()) return InvalidArgument("signature has no inputs");
  if (outputs.empty()) return InvalidArgument("signature has no outputs");
  std::set<std::string> names;
  bool has_candidate_input = false;
  auto check = [&](const TensorSpec& spec, const char* kind) -> Status {
    if (spec.name.empty()) return InvalidArgument(std::string(kind) + " tensor with an empty name");
    if (!names.insert(spec.name).second) {
      return InvalidArgument("tensor name '" + spec.name + "' appears twice in the signature");
    }
    if (DTypeSize(spec.dtype) == 0) {
      return InvalidArgument(std::string(kind) + " '" + spec.name + "' has an unknown dtype");
    }
    size_t elements = 1;
    for (int64_t d : spec.row_shape) {
      if (d <= 0 || !CheckedMul(elements, static_cast<size_t>(d), &elements) || elements > (size_t{1} << 32)) {
        return InvalidArgument(std::string(kind) + " '" + spec.name + "' has an invalid row shape " +
                               ShapeString(spec.row_shape) + ": every dim must be positive and small");
      }
    }
    return Status::Ok();
  };
  for (const auto& spec : inputs) {
    Status s = check(spec, "input");
    if (!s.ok()) return s;
    has_candidate_input |= spec.role == Role::kCandidate;
  }
  if (!has_candidate_input) return InvalidArgument("signature has no candidate input: rows cannot be counted");
  for (const auto& spec : outputs) {
    Status s = check(spec, "output");
    if (!s.ok()) return s;
    if (spec.role != Role::kCandidate) {
      return InvalidArgument("output '" + spec.name + "' must have the candidate role (one row per candidate)");
    }
  }
  return Status::Ok();
}

Status ValidateTensor(const TensorView& view, const TensorSpec& spec, int64_t expected_rows) {
  const std::string what = (spec.role == Role::kContext ? "context tensor '" : "candidate tensor '") + spec.name + "'";
  if (DTypeSize(view.dtype) == 0) return InvalidArgument(what + " has an unknown dtype");
  if (view.dtype != spec.dtype) {
    return InvalidArgument(what + " has dtype " + DTypeName(view.dtype) + ", expected " + DTypeName(spec.dtype));
  }
  const size_t rank = spec.row_shape.size() + 1;
  if (view.shape.size() != rank) {
    return InvalidArgument(what + " has shape " + ShapeString(view.shape) + " (rank " +
                           std::to_string(view.shape.size()) + "), expected rank " + std::to_string(rank));
  }
  for (int64_t d : view.shape) {
    if (d < 0) return InvalidArgument(what + " has a negative dim in shape " + ShapeString(view.shape));
  }
  if (view.shape[0] != expected_rows) {
    return InvalidArgument(what + " has " + std::to_string(view.shape[0]) + " rows, expected " +
                           std::to_string(expected_rows));
  }
  for (size_t i = 1; i < rank; ++i) {
    if (view.shape[i] != spec.row_shape[i - 1]) {
      std::vector<int64_t> expected{expected_rows};
      expected.insert(expected.end(), spec.row_shape.begin(), spec.row_shape.end());
      return InvalidArgument(what + " has shape " + ShapeString(view.shape) + ", expected " + ShapeString(expected));
    }
  }
  size_t bytes = DTypeSize(view.dtype);
  for (int64_t d : view.shape) {
    if (!CheckedMul(bytes, static_cast<size_t>(d), &bytes)) {
      return InvalidArgument(what + " shape " + ShapeString(view.shape) + " overflows");
    }
  }
  if (bytes != view.byte_size) {
    return InvalidArgument(what + " carries " + std::to_string(view.byte_size) + " bytes, but shape " +
                           ShapeString(view.shape) + " of " + DTypeName(view.dtype) + " needs " +
                           std::to_string(bytes));
  }
  if (bytes != 0 && view.data == nullptr) return InvalidArgument(what + " has no data");
  return Status::Ok();
}

}  // namespace adrank
