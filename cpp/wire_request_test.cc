#include "wire_request.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace adrank {
namespace {

// score = x[0] + x[1] + bias, over a text-free model "sum" and a text model "text".
class WireRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ThreadPoolOptions options;
    options.num_workers = 1;
    ASSERT_TRUE(ThreadPool::Create(options, &pool_).ok());
    Register("sum", 1,
             {{"x", DType::kFloat32, {2}, Role::kCandidate, false, 0},
              {"bias", DType::kFloat32, {}, Role::kContext, true, 0}});
    Register("text", 3,
             {{"query", DType::kUInt8, {16}, Role::kContext, true, 16},
              {"x", DType::kFloat32, {2}, Role::kCandidate, false, 0}});
  }

  void Register(const std::string& name, int64_t version, std::vector<ServedInput> inputs) {
    ModelOptions model;
    model.name = name;
    for (const ServedInput& input : inputs) {
      model.signature.inputs.push_back({input.name, input.dtype, input.row_shape, input.role});
    }
    model.signature.outputs.push_back({"score", DType::kFloat32, {}, Role::kCandidate});
    model.backend = [](BatchIO&) { return Status::Ok(); };
    std::shared_ptr<ModelQueue> queue;
    ASSERT_TRUE(pool_->AddModel(std::move(model), &queue).ok());
    auto served = std::make_shared<ServedModel>();
    served->name = name;
    served->version = version;
    served->queue = queue;
    served->inputs = std::move(inputs);
    served->score_output = "score";
    served->max_candidates = 8;
    registry_.Add(served, true);
  }

  static void AddFloats(v1::Tensor* t, const std::string& name, std::vector<int64_t> shape, std::vector<float> v) {
    t->set_name(name);
    t->set_dtype(v1::DATA_TYPE_FLOAT32);
    t->clear_shape();
    for (int64_t d : shape) t->add_shape(d);
    t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
  }

  static void AddText(v1::Tensor* t, const std::string& name, const std::string& text) {
    t->set_name(name);
    t->set_dtype(v1::DATA_TYPE_STRING);
    t->clear_shape();
    t->add_shape(1);
    const uint32_t n = static_cast<uint32_t>(text.size());
    std::string raw(4, '\0');
    for (int b = 0; b < 4; ++b) raw[b] = static_cast<char>((n >> (8 * b)) & 0xFF);
    t->set_raw_data(raw + text);
  }

  // A valid request for "sum": N = 3.
  v1::RankRequest SumRequest() {
    v1::RankRequest r;
    r.add_models()->set_name("sum");
    AddFloats(r.add_candidates(), "x", {3, 2}, {1, 2, 3, 4, 5, 6});
    AddFloats(r.add_context(), "bias", {1}, {0.5});
    return r;
  }

  Status Prepare(const v1::RankRequest& request) { return PrepareRank(request, registry_, &calls_); }

  std::unique_ptr<ThreadPool> pool_;
  ModelRegistry registry_;
  std::vector<ModelCall> calls_;
};

TEST_F(WireRequestTest, AValidRequestBecomesViewsOfTheWireBytes) {
  const v1::RankRequest request = SumRequest();
  ASSERT_TRUE(Prepare(request).ok());
  ASSERT_EQ(calls_.size(), 1u);
  EXPECT_EQ(calls_[0].model->version, 1);
  const Request& core = calls_[0].request;
  ASSERT_EQ(core.candidates.size(), 1u);
  EXPECT_EQ(core.candidates[0].data, request.candidates(0).raw_data().data()) << "viewed in place, not copied";
  EXPECT_EQ(core.candidates[0].shape, (std::vector<int64_t>{3, 2}));
  ASSERT_EQ(core.context.size(), 1u);
  EXPECT_EQ(core.context[0].name, "bias");
}

TEST_F(WireRequestTest, ATextBecomesAZeroPaddedByteRowCutAtACharacterBoundary) {
  v1::RankRequest request;
  auto* spec = request.add_models();
  spec->set_name("text");
  spec->set_version(3);
  AddFloats(request.add_candidates(), "x", {1, 2}, {1, 2});
  // 15 bytes of 'a', then a 2-byte character that does not fit in the 16-byte row.
  AddText(request.add_context(), "query", std::string(15, 'a') + "\xC3\xA9");
  ASSERT_TRUE(Prepare(request).ok()) << Prepare(request).ToString();
  const TensorView& row = calls_[0].request.context[0];
  EXPECT_EQ(row.dtype, DType::kUInt8);
  EXPECT_EQ(row.shape, (std::vector<int64_t>{1, 16}));
  const std::string bytes(static_cast<const char*>(row.data), row.byte_size);
  EXPECT_EQ(bytes, std::string(15, 'a') + '\0');
}

TEST_F(WireRequestTest, SeveralModelsEachGetTheirOwnInputs) {
  v1::RankRequest request = SumRequest();
  request.add_models()->set_name("text");
  AddText(request.add_context(), "query", "shoes");
  ASSERT_TRUE(Prepare(request).ok()) << Prepare(request).ToString();
  ASSERT_EQ(calls_.size(), 2u);
  EXPECT_EQ(calls_[0].request.context.size(), 1u);  // bias only
  EXPECT_EQ(calls_[1].request.context[0].name, "query");
  EXPECT_EQ(calls_[1].request.candidates[0].name, "x");
}

struct BadCase {
  std::string label;
  StatusCode code;
  std::string expected;  // a substring of the message
  std::function<void(v1::RankRequest&)> mutate;
};

TEST_F(WireRequestTest, BadRequestsAreRefusedNamingTheField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<BadCase> cases = {
      {"no model", StatusCode::kInvalidArgument, "models: empty", [](auto& r) { r.clear_models(); }},
      {"unknown model", StatusCode::kNotFound, "model 'nope' is not served",
       [](auto& r) { r.mutable_models(0)->set_name("nope"); }},
      {"unknown version", StatusCode::kNotFound, "no version 9 loaded",
       [](auto& r) { r.mutable_models(0)->set_version(9); }},
      {"named twice", StatusCode::kInvalidArgument, "named twice", [](auto& r) { r.add_models()->set_name("sum"); }},
      {"negative version", StatusCode::kInvalidArgument, "version must be >= 0",
       [](auto& r) { r.mutable_models(0)->set_version(-1); }},
      {"byte length", StatusCode::kInvalidArgument, "candidates tensor 'x': raw_data has 20 bytes",
       [](auto& r) { r.mutable_candidates(0)->mutable_raw_data()->resize(20); }},
      {"negative dim", StatusCode::kInvalidArgument, "negative dimension",
       [](auto& r) { r.mutable_candidates(0)->set_shape(1, -2); }},
      {"no shape", StatusCode::kInvalidArgument, "shape is empty",
       [](auto& r) { r.mutable_candidates(0)->clear_shape(); }},
      {"unknown dtype", StatusCode::kInvalidArgument, "unknown dtype 0",
       [](auto& r) { r.mutable_candidates(0)->set_dtype(v1::DATA_TYPE_UNSPECIFIED); }},
      {"twice", StatusCode::kInvalidArgument, "candidates tensor 'x' appears twice",
       [](auto& r) { *r.add_candidates() = r.candidates(0); }},
      {"N = 0", StatusCode::kInvalidArgument, "has 0 rows",
       [](auto& r) { AddFloats(r.mutable_candidates(0), "x", {0, 2}, {}); }},
      {"N disagrees", StatusCode::kInvalidArgument, "disagree on N",
       [](auto& r) { AddFloats(r.add_candidates(), "y", {2}, {1, 2}); }},
      {"N above the limit", StatusCode::kInvalidArgument, "max_candidates",
       [](auto& r) { AddFloats(r.mutable_candidates(0), "x", {9, 2}, std::vector<float>(18, 1)); }},
      {"context rows", StatusCode::kInvalidArgument, "context tensor 'bias' has 2 rows",
       [](auto& r) { AddFloats(r.mutable_context(0), "bias", {2}, {1, 2}); }},
      {"unexpected", StatusCode::kInvalidArgument, "tensor 'y' is not an input",
       [](auto& r) { AddFloats(r.add_context(), "y", {1}, {1}); }},
      {"missing", StatusCode::kInvalidArgument, "context tensor 'bias' is missing", [](auto& r) { r.clear_context(); }},
      {"wrong role", StatusCode::kInvalidArgument, "tensor 'bias' was sent in candidates",
       [](auto& r) {
         r.clear_context();
         AddFloats(r.add_candidates(), "bias", {3}, {1, 2, 3});
       }},
      {"wrong dtype", StatusCode::kInvalidArgument, "candidate tensor 'x' has dtype float64",
       [](auto& r) {
         r.mutable_candidates(0)->set_dtype(v1::DATA_TYPE_FLOAT64);
         r.mutable_candidates(0)->set_shape(1, 1);
       }},
      {"NaN", StatusCode::kInvalidArgument, "candidate tensor 'x': row 1 holds NaN or inf",
       [nan](auto& r) { AddFloats(r.mutable_candidates(0), "x", {3, 2}, {1, 2, 3, nan, 5, 6}); }},
      {"inf", StatusCode::kInvalidArgument, "row 2 holds NaN or inf",
       [](auto& r) {
         AddFloats(r.mutable_candidates(0), "x", {3, 2}, {1, 2, 3, 4, -std::numeric_limits<float>::infinity(), 6});
       }},
      {"text for a number", StatusCode::kInvalidArgument, "context tensor 'bias' is string",
       [](auto& r) { AddText(r.mutable_context(0), "bias", "0.5"); }},
      {"bad utf-8", StatusCode::kInvalidArgument, "not valid UTF-8",
       [](auto& r) { AddText(r.add_context(), "q", "\xFF"); }},
      {"string cut short", StatusCode::kInvalidArgument, "claims",
       [](auto& r) {
         AddText(r.add_context(), "q", "abc");
         r.mutable_context(1)->mutable_raw_data()->resize(5);
       }},
  };
  for (const BadCase& c : cases) {
    v1::RankRequest request = SumRequest();
    c.mutate(request);
    const Status status = Prepare(request);
    EXPECT_EQ(status.code(), c.code) << c.label << ": " << status.ToString();
    EXPECT_NE(status.message().find(c.expected), std::string::npos) << c.label << ": " << status.ToString();
  }
}

TEST_F(WireRequestTest, ATextInputTakesOneStringInContext) {
  v1::RankRequest request;
  request.add_models()->set_name("text");
  AddFloats(request.add_candidates(), "x", {1, 2}, {1, 2});
  AddFloats(request.add_context(), "query", {1, 1}, {1});
  Status status = Prepare(request);
  EXPECT_NE(status.message().find("context tensor 'query' has dtype float32; model 'text' expects string"),
            std::string::npos)
      << status.ToString();
  request.clear_context();
  AddText(request.add_context(), "query", "a");
  request.mutable_context(0)->set_shape(0, 1);
  request.mutable_context(0)->add_shape(1);
  status = Prepare(request);
  EXPECT_NE(status.message().find("expected [1] (one text)"), std::string::npos) << status.ToString();
}

}  // namespace
}  // namespace adrank
