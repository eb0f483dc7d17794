// Tensors as the core sees them: a dtype, a shape and bytes, row-major. Inputs are borrowed from the
// caller (TensorView); the model's signature (ModelSignature) says which tensors a request must
// carry, their dtypes and the shape of one row, and whether each is per candidate or per context.
//
// Contract: the core handles fixed-size dtypes only. Text is tokenised into integer tensors before
// it reaches the core (the front end's job). Validate() never trusts a caller's sizes: every
// product of dims is checked for overflow and against the byte size actually supplied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"

namespace adrank {

enum class DType : int {
  kBool = 0,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFloat16,
  kFloat32,
  kFloat64,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// numpy-style names: "bool", "uint8", ..., "float16", "float32", "float64".
const char* DTypeName(DType dtype);
std::optional<DType> ParseDType(std::string_view name);

// Whether a tensor carries one row per candidate (leading dim N) or one row for the whole request
// (leading dim 1, the user/query/page context).
enum class Role : int { kCandidate = 0, kContext = 1 };

struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  // Shape of one row: the dims after the leading (row) dimension. Empty for a scalar per row.
  std::vector<int64_t> row_shape;
  Role role = Role::kCandidate;

  size_t RowElements() const;
  size_t RowBytes() const { return RowElements() * DTypeSize(dtype); }
};

struct ModelSignature {
  std::vector<TensorSpec> inputs;
  // Outputs are always per candidate: one row per input row.
  std::vector<TensorSpec> outputs;

  // Checks names are unique and non-empty, dims positive, outputs are candidate rows.
  Status Validate() const;
};

// A caller's tensor, borrowed: the memory must stay valid and unchanged until the request completes.
struct TensorView {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;  // shape[0] is the row count
  const void* data = nullptr;
  size_t byte_size = 0;
};

// Checks `view` against `spec`: dtype, rank and trailing dims, byte size == product(shape) * itemsize.
// `expected_rows` is N for candidate tensors and 1 for context tensors. Messages name the tensor.
Status ValidateTensor(const TensorView& view, const TensorSpec& spec, int64_t expected_rows);

}  // namespace adrank
