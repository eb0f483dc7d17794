#include "tensor.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "status_testing.h"

namespace adrank {
namespace {

// Every rejection must go back to the caller as is, so it has to say which tensor was wrong.
void ExpectInvalid(const Status& status, const std::string& name, const std::string& detail = "") {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_TRUE(Contains(status.message(), "'" + name + "'")) << status.message();
  if (!detail.empty()) {
    EXPECT_TRUE(Contains(status.message(), detail)) << status.message();
  }
}

TensorSpec Spec(const std::string& name, DType dtype, std::vector<int64_t> row_shape, Role role = Role::kCandidate) {
  TensorSpec spec;
  spec.name = name;
  spec.dtype = dtype;
  spec.row_shape = std::move(row_shape);
  spec.role = role;
  return spec;
}

// A view whose byte size matches its shape and dtype, over `storage` (which must be large enough).
TensorView View(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data) {
  TensorView view;
  view.name = name;
  view.dtype = dtype;
  size_t elements = 1;
  for (int64_t d : shape) elements *= static_cast<size_t>(d);
  view.byte_size = elements * DTypeSize(dtype);
  view.shape = std::move(shape);
  view.data = data;
  return view;
}

TEST(DTypeTest, SizesAndNamesRoundTrip) {
  const struct {
    DType dtype;
    const char* name;
    size_t size;
  } cases[] = {
      {DType::kBool, "bool", 1},       {DType::kUInt8, "uint8", 1},     {DType::kInt8, "int8", 1},
      {DType::kInt16, "int16", 2},     {DType::kInt32, "int32", 4},     {DType::kInt64, "int64", 8},
      {DType::kFloat16, "float16", 2}, {DType::kFloat32, "float32", 4}, {DType::kFloat64, "float64", 8},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(DTypeSize(c.dtype), c.size);
    EXPECT_STREQ(DTypeName(c.dtype), c.name);
    const std::optional<DType> parsed = ParseDType(c.name);
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, c.dtype);
  }
}

TEST(DTypeTest, ParseRejectsUnknownNames) {
  for (const char* name : {"", "float", "Float32", "float32 ", "int", "string", "bfloat16", "uint64"}) {
    SCOPED_TRACE(std::string("'") + name + "'");
    EXPECT_FALSE(ParseDType(name).has_value());
  }
}

TEST(DTypeTest, UnknownEnumValueHasNoSize) {
  const auto bogus = static_cast<DType>(99);
  EXPECT_EQ(DTypeSize(bogus), 0u);
  EXPECT_STREQ(DTypeName(bogus), "unknown");
}

TEST(TensorSpecTest, RowBytes) {
  EXPECT_EQ(Spec("s", DType::kFloat32, {}).RowBytes(), 4u);
  EXPECT_EQ(Spec("s", DType::kInt64, {3}).RowBytes(), 24u);
  EXPECT_EQ(Spec("s", DType::kFloat16, {2, 5}).RowBytes(), 20u);
}

TEST(ValidateTensorTest, AcceptsAMatchingTensor) {
  const std::vector<float> data(3 * 4);
  const TensorSpec spec = Spec("ad_features", DType::kFloat32, {4});
  const Status status = ValidateTensor(View("ad_features", DType::kFloat32, {3, 4}, data.data()), spec, 3);
  EXPECT_TRUE(status.ok()) << status.ToString();
}

TEST(ValidateTensorTest, AcceptsAScalarPerRowAndAContextRow) {
  const std::vector<int64_t> data(7);
  EXPECT_TRUE(ValidateTensor(View("ids", DType::kInt64, {7}, data.data()), Spec("ids", DType::kInt64, {}), 7).ok());
  const TensorSpec context = Spec("user", DType::kInt64, {7}, Role::kContext);
  EXPECT_TRUE(ValidateTensor(View("user", DType::kInt64, {1, 7}, data.data()), context, 1).ok());
}

TEST(ValidateTensorTest, RejectsWrongDType) {
  const std::vector<double> data(3 * 4);
  const Status status = ValidateTensor(View("ad_features", DType::kFloat64, {3, 4}, data.data()),
                                       Spec("ad_features", DType::kFloat32, {4}), 3);
  ExpectInvalid(status, "ad_features", "float32");
  EXPECT_TRUE(Contains(status.message(), "float64")) << status.message();
}

TEST(ValidateTensorTest, RejectsUnknownDType) {
  const std::vector<float> data(4);
  TensorView view = View("ad_features", DType::kFloat32, {1, 4}, data.data());
  view.dtype = static_cast<DType>(42);
  ExpectInvalid(ValidateTensor(view, Spec("ad_features", DType::kFloat32, {4}), 1), "ad_features", "dtype");
}

TEST(ValidateTensorTest, RejectsWrongRank) {
  const std::vector<float> data(12);
  const TensorSpec spec = Spec("ad_features", DType::kFloat32, {4});
  ExpectInvalid(ValidateTensor(View("ad_features", DType::kFloat32, {12}, data.data()), spec, 12), "ad_features",
                "rank");
  ExpectInvalid(ValidateTensor(View("ad_features", DType::kFloat32, {3, 2, 2}, data.data()), spec, 3), "ad_features",
                "rank");
  TensorView rank0 = View("ad_features", DType::kFloat32, {}, data.data());
  ExpectInvalid(ValidateTensor(rank0, spec, 1), "ad_features", "rank");
}

TEST(ValidateTensorTest, RejectsMismatchedTrailingDims) {
  const std::vector<float> data(3 * 5);
  const Status status = ValidateTensor(View("ad_features", DType::kFloat32, {3, 5}, data.data()),
                                       Spec("ad_features", DType::kFloat32, {4}), 3);
  ExpectInvalid(status, "ad_features", "[3,4]");  // says what was expected
}

TEST(ValidateTensorTest, RejectsWrongRowCount) {
  const std::vector<float> data(4 * 4);
  const Status status = ValidateTensor(View("ad_features", DType::kFloat32, {4, 4}, data.data()),
                                       Spec("ad_features", DType::kFloat32, {4}), 3);
  ExpectInvalid(status, "ad_features", "expected 3");
}

TEST(ValidateTensorTest, RejectsNegativeDims) {
  const std::vector<float> data(16);
  const TensorSpec spec = Spec("ad_features", DType::kFloat32, {4});
  TensorView negative_rows = View("ad_features", DType::kFloat32, {1, 4}, data.data());
  negative_rows.shape = {-1, 4};
  ExpectInvalid(ValidateTensor(negative_rows, spec, -1), "ad_features", "negative");
  TensorView negative_trailing = negative_rows;
  negative_trailing.shape = {2, -4};
  ExpectInvalid(ValidateTensor(negative_trailing, spec, 2), "ad_features", "negative");
}

TEST(ValidateTensorTest, RejectsByteSizeMismatch) {
  const std::vector<float> data(3 * 4 + 1);
  const TensorSpec spec = Spec("ad_features", DType::kFloat32, {4});
  TensorView view = View("ad_features", DType::kFloat32, {3, 4}, data.data());
  view.byte_size += 4;
  ExpectInvalid(ValidateTensor(view, spec, 3), "ad_features", "48");
  view.byte_size = 47;
  ExpectInvalid(ValidateTensor(view, spec, 3), "ad_features", "47");
}

TEST(ValidateTensorTest, RejectsShapesWhoseByteSizeOverflows) {
  const std::vector<float> data(4);
  const TensorSpec spec = Spec("ad_features", DType::kFloat32, {4});
  TensorView view = View("ad_features", DType::kFloat32, {1, 4}, data.data());
  // 2^62 rows * 4 * 4 bytes wraps a 64-bit size to 0: a naive product would match byte_size 0.
  const int64_t huge = int64_t{1} << 62;
  view.shape = {huge, 4};
  view.byte_size = 0;
  ExpectInvalid(ValidateTensor(view, spec, huge), "ad_features", "overflow");
  view.byte_size = 16;
  ExpectInvalid(ValidateTensor(view, spec, huge), "ad_features");

  // Same with a scalar-per-row int64 tensor: 2^61 * 8 bytes = 2^64 wraps to 0.
  const int64_t rows = int64_t{1} << 61;
  TensorView ids = View("ids", DType::kInt64, {1}, data.data());
  ids.shape = {rows};
  ids.byte_size = 0;
  ExpectInvalid(ValidateTensor(ids, Spec("ids", DType::kInt64, {}), rows), "ids", "overflow");
}

TEST(ValidateTensorTest, RejectsNullData) {
  const TensorSpec spec = Spec("ad_features", DType::kFloat32, {4});
  const TensorView view = View("ad_features", DType::kFloat32, {3, 4}, nullptr);
  ExpectInvalid(ValidateTensor(view, spec, 3), "ad_features", "no data");
}

TEST(ValidateTensorTest, ZeroRowsNeedNoData) {
  // An empty tensor has nothing to read: a null pointer is fine there.
  const TensorSpec spec = Spec("ad_features", DType::kFloat32, {4});
  EXPECT_TRUE(ValidateTensor(View("ad_features", DType::kFloat32, {0, 4}, nullptr), spec, 0).ok());
}

TEST(ValidateTensorTest, RejectsZeroRowContext) {
  const TensorSpec spec = Spec("user", DType::kFloat32, {8}, Role::kContext);
  const Status status = ValidateTensor(View("user", DType::kFloat32, {0, 8}, nullptr), spec, 1);
  ExpectInvalid(status, "user", "0 rows");
  EXPECT_TRUE(Contains(status.message(), "context")) << status.message();
}

TEST(ValidateTensorTest, RejectsContextWithSeveralRows) {
  // The client never tiles context: a context tensor with N rows is an error, not a broadcast.
  const std::vector<float> data(5 * 8);
  const TensorSpec spec = Spec("user", DType::kFloat32, {8}, Role::kContext);
  ExpectInvalid(ValidateTensor(View("user", DType::kFloat32, {5, 8}, data.data()), spec, 1), "user", "expected 1");
}

ModelSignature ValidSignature() {
  ModelSignature signature;
  signature.inputs = {Spec("ad", DType::kFloat32, {16}), Spec("user", DType::kInt64, {4}, Role::kContext)};
  signature.outputs = {Spec("ctr", DType::kFloat32, {})};
  return signature;
}

TEST(ModelSignatureTest, AcceptsAValidSignature) {
  const Status status = ValidSignature().Validate();
  EXPECT_TRUE(status.ok()) << status.ToString();
}

TEST(ModelSignatureTest, RejectsNoInputsOrNoOutputs) {
  ModelSignature no_inputs = ValidSignature();
  no_inputs.inputs.clear();
  EXPECT_EQ(no_inputs.Validate().code(), StatusCode::kInvalidArgument);
  ModelSignature no_outputs = ValidSignature();
  no_outputs.outputs.clear();
  EXPECT_EQ(no_outputs.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(ModelSignatureTest, RejectsDuplicateNames) {
  ModelSignature twice = ValidSignature();
  twice.inputs.push_back(Spec("ad", DType::kFloat32, {16}));
  ExpectInvalid(twice.Validate(), "ad", "twice");

  // Inputs and outputs share one namespace: a backend binds them by name.
  ModelSignature across = ValidSignature();
  across.outputs.push_back(Spec("user", DType::kFloat32, {}));
  ExpectInvalid(across.Validate(), "user", "twice");
}

TEST(ModelSignatureTest, RejectsEmptyName) {
  ModelSignature input = ValidSignature();
  input.inputs[0].name = "";
  const Status status = input.Validate();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "empty name")) << status.message();

  ModelSignature output = ValidSignature();
  output.outputs[0].name = "";
  EXPECT_EQ(output.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(ModelSignatureTest, RejectsNonPositiveDims) {
  for (int64_t bad : {int64_t{0}, int64_t{-1}, int64_t{-16}}) {
    SCOPED_TRACE(bad);
    ModelSignature input = ValidSignature();
    input.inputs[1].row_shape = {4, bad};
    ExpectInvalid(input.Validate(), "user", "row shape");

    ModelSignature output = ValidSignature();
    output.outputs[0].row_shape = {bad};
    ExpectInvalid(output.Validate(), "ctr", "row shape");
  }
}

TEST(ModelSignatureTest, RejectsRowShapesTooLargeToAddress) {
  // Each dim is positive but the product overflows: RowElements() would wrap without this check.
  ModelSignature signature = ValidSignature();
  signature.inputs[0].row_shape = {int64_t{1} << 40, int64_t{1} << 40};
  ExpectInvalid(signature.Validate(), "ad", "row shape");
}

TEST(ModelSignatureTest, RejectsUnknownDType) {
  ModelSignature signature = ValidSignature();
  signature.inputs[0].dtype = static_cast<DType>(77);
  ExpectInvalid(signature.Validate(), "ad", "dtype");
}

TEST(ModelSignatureTest, RejectsNoCandidateInput) {
  ModelSignature signature = ValidSignature();
  signature.inputs = {Spec("user", DType::kInt64, {4}, Role::kContext)};
  const Status status = signature.Validate();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "candidate")) << status.message();
}

TEST(ModelSignatureTest, RejectsContextRoleOutput) {
  ModelSignature signature = ValidSignature();
  signature.outputs.push_back(Spec("user_embedding", DType::kFloat32, {8}, Role::kContext));
  ExpectInvalid(signature.Validate(), "user_embedding", "candidate");
}

}  // namespace
}  // namespace adrank
