#include "infer_call.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "infer_metadata.h"
#include "infer_statistics.h"

namespace adrank {
namespace {

struct InferAnswered {
  Status status;
  inference::ModelInferResponse response;
};

// The transport's side of a v2 call: one answer, to a future; the call deletes itself in it (ASan checks
// the contract never touches it afterwards).
class FutureInferCall final : public InferCall {
 public:
  explicit FutureInferCall(std::promise<InferAnswered>* answer) : answer_(answer) {}

 private:
  void Answer(const Status& status, inference::ModelInferResponse* response) override {
    std::promise<InferAnswered>* answer = answer_;
    InferAnswered answered{status, *response};
    delete this;
    answer->set_value(std::move(answered));
  }

  std::promise<InferAnswered>* const answer_;
};

// The same over Rank, to compare the two protocols' answers to the same request.
class FutureRankCall final : public RankCall {
 public:
  explicit FutureRankCall(std::promise<Status>* answer) : answer_(answer) {}

 private:
  void Answer(const Status& status, v1::RankResponse*) override {
    std::promise<Status>* answer = answer_;
    delete this;
    answer->set_value(status);
  }

  std::promise<Status>* const answer_;
};

std::string Bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// "sum": score = x[0] + x[1] + bias + offset, offset 0 for version 1 and 100 for version 2.
class InferCallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ThreadPoolOptions options;
    options.num_workers = 1;
    ASSERT_TRUE(ThreadPool::Create(options, &pool_).ok());
    AddSum(1, 0.0f, true);
    AddSum(2, 100.0f, false);
  }

  void TearDown() override { pool_.reset(); }

  void AddSum(int64_t version, float offset, bool serving) {
    ModelOptions model;
    model.name = "sum:" + std::to_string(version);
    model.signature.inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate},
                              {"bias", DType::kFloat32, {}, Role::kContext}};
    model.signature.outputs = {{"score", DType::kFloat32, {}, Role::kCandidate}};
    model.batching.max_queue_delay_us = 0;
    model.backend = [offset](BatchIO& io) {
      const auto* x = static_cast<const float*>(io.inputs[0].data);
      const auto* bias = static_cast<const float*>(io.inputs[1].data);
      auto* score = static_cast<float*>(io.outputs[0].data);
      for (int64_t r = 0; r < io.rows; ++r) score[r] = x[2 * r] + x[2 * r + 1] + bias[r] + offset;
      return Status::Ok();
    };
    auto served = std::make_shared<ServedModel>();
    ASSERT_TRUE(pool_->AddModel(std::move(model), &served->queue).ok());
    served->name = "sum";
    served->version = version;
    served->inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate, false, 0},
                      {"bias", DType::kFloat32, {}, Role::kContext, true, 0}};
    served->score_output = "score";
    served->max_candidates = 64;
    served->platform = "onnxruntime_onnx";
    ASSERT_TRUE(VersionStats::Create(VersionStatsOptions{0, 100, 100}, &served->stats).ok());
    registry_.Add(served, serving);
  }

  // `rows` candidates x = (r, r + 0.5) and bias 1, in raw_input_contents.
  static inference::ModelInferRequest Request(int rows, const std::string& version = "") {
    inference::ModelInferRequest request;
    request.set_model_name("sum");
    request.set_model_version(version);
    request.set_id("auction-9");
    std::vector<float> x;
    for (int r = 0; r < rows; ++r) x.insert(x.end(), {static_cast<float>(r), r + 0.5f});
    auto* candidates = request.add_inputs();
    candidates->set_name("x");
    candidates->set_datatype("FP32");
    candidates->add_shape(rows);
    candidates->add_shape(2);
    *request.add_raw_input_contents() = Bytes(x);
    auto* bias = request.add_inputs();
    bias->set_name("bias");
    bias->set_datatype("FP32");
    bias->add_shape(1);
    *request.add_raw_input_contents() = Bytes({1.0f});
    return request;
  }

  // The same auction as a RankRequest.
  static v1::RankRequest RankRequest(int rows) {
    v1::RankRequest request;
    request.set_request_id("auction-9");
    request.add_models()->set_name("sum");
    std::vector<float> x;
    for (int r = 0; r < rows; ++r) x.insert(x.end(), {static_cast<float>(r), r + 0.5f});
    v1::Tensor* candidates = request.add_candidates();
    candidates->set_name("x");
    candidates->set_dtype(v1::DATA_TYPE_FLOAT32);
    candidates->add_shape(rows);
    candidates->add_shape(2);
    candidates->set_raw_data(Bytes(x));
    v1::Tensor* bias = request.add_context();
    bias->set_name("bias");
    bias->set_dtype(v1::DATA_TYPE_FLOAT32);
    bias->add_shape(1);
    bias->set_raw_data(Bytes({1.0f}));
    return request;
  }

  InferAnswered InferBytes(const std::string& bytes, const RankCallOptions& options = {}) {
    std::promise<InferAnswered> promise;
    std::future<InferAnswered> answer = promise.get_future();
    auto* call = new FutureInferCall(&promise);  // deletes itself in Answer
    call->ParseInfer(bytes);
    call->StartInfer(registry_, options);
    return answer.get();
  }

  InferAnswered Infer(const inference::ModelInferRequest& request, const RankCallOptions& options = {}) {
    return InferBytes(request.SerializeAsString(), options);
  }

  Status Rank(const v1::RankRequest& request) {
    std::promise<Status> promise;
    std::future<Status> answer = promise.get_future();
    auto* call = new FutureRankCall(&promise);
    call->Parse(request.SerializeAsString());
    call->Start(registry_, {});
    return answer.get();
  }

  static std::vector<float> Scores(const inference::ModelInferResponse& response) {
    std::vector<float> scores(response.raw_output_contents(0).size() / sizeof(float));
    std::memcpy(scores.data(), response.raw_output_contents(0).data(), scores.size() * sizeof(float));
    return scores;
  }

  std::unique_ptr<ThreadPool> pool_;
  ModelRegistry registry_;
};

TEST_F(InferCallTest, RawInputsAreScoredWithTheContextBroadcast) {
  const InferAnswered answered = Infer(Request(3));
  ASSERT_TRUE(answered.status.ok()) << answered.status.message();
  const inference::ModelInferResponse& response = answered.response;
  EXPECT_EQ(response.model_name(), "sum");
  EXPECT_EQ(response.model_version(), "1");
  EXPECT_EQ(response.id(), "auction-9");
  ASSERT_EQ(response.outputs_size(), 1);
  EXPECT_EQ(response.outputs(0).name(), "score");
  EXPECT_EQ(response.outputs(0).datatype(), "FP32");
  ASSERT_EQ(response.outputs(0).shape_size(), 1);
  EXPECT_EQ(response.outputs(0).shape(0), 3);
  EXPECT_EQ(Scores(response), (std::vector<float>{1.5f, 3.5f, 5.5f}));  // r + r + 0.5 + 1
  ASSERT_EQ(response.parameters().count("batch_rows"), 1u);
  EXPECT_GE(response.parameters().at("batch_rows").int64_param(), 3);
  EXPECT_EQ(response.parameters().count("compute_us"), 1u);
}

TEST_F(InferCallTest, TypedContentsScoreAsRawOnes) {
  inference::ModelInferRequest request = Request(3);
  request.clear_raw_input_contents();
  for (float v : {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 2.5f})
    request.mutable_inputs(0)->mutable_contents()->add_fp32_contents(v);
  request.mutable_inputs(1)->mutable_contents()->add_fp32_contents(1.0f);
  const InferAnswered answered = Infer(request);
  ASSERT_TRUE(answered.status.ok()) << answered.status.message();
  EXPECT_EQ(Scores(answered.response), (std::vector<float>{1.5f, 3.5f, 5.5f}));
}

TEST_F(InferCallTest, APinnedVersionAnswersAndSaysSo) {
  const InferAnswered answered = Infer(Request(2, "2"));
  ASSERT_TRUE(answered.status.ok()) << answered.status.message();
  EXPECT_EQ(answered.response.model_version(), "2");
  EXPECT_EQ(Scores(answered.response), (std::vector<float>{101.5f, 103.5f}));
}

TEST_F(InferCallTest, TheRoutingKeyParameterPicksTheCanaryStickily) {
  ASSERT_TRUE(registry_.SetRollout("sum", RolloutRoute{1, 2, 5000, 0, 10000}).ok());
  int canary = 0;
  for (int i = 0; i < 40; ++i) {
    const std::string key = "user-" + std::to_string(i);
    inference::ModelInferRequest request = Request(1);
    (*request.mutable_parameters())["routing_key"].set_string_param(key);
    const InferAnswered answered = Infer(request);
    ASSERT_TRUE(answered.status.ok()) << answered.status.message();
    const std::string expected = RoutingBucket(key) < 5000 ? "2" : "1";
    EXPECT_EQ(answered.response.model_version(), expected) << key;
    canary += expected == "2";
  }
  EXPECT_GT(canary, 0);
  EXPECT_LT(canary, 40);
}

TEST_F(InferCallTest, TheTimeoutParameterShortensTheDeadline) {
  inference::ModelInferRequest request = Request(1);
  (*request.mutable_parameters())["timeout"].set_int64_param(500);  // µs, under the reply margin
  RankCallOptions options;
  options.reply_margin = std::chrono::milliseconds(1);
  const InferAnswered answered = Infer(request, options);
  EXPECT_EQ(answered.status.code(), StatusCode::kDeadlineExceeded) << answered.status.message();
  (*request.mutable_parameters())["timeout"].set_int64_param(10'000'000);
  EXPECT_TRUE(Infer(request, options).status.ok());
}

// Found by infer_call_fuzz: a timeout whose nanoseconds overflow an int64 (UBSan: signed overflow). Any
// integer is a valid timeout; one beyond kMaxInferTimeout counts as it, so the transport's deadline still holds.
TEST_F(InferCallTest, ATimeoutBeyondTheCapCountsAsTheCap) {
  for (const int64_t timeout :
       {int64_t{9'223'372'036'854'775}, int64_t{9'223'372'036'854'776}, std::numeric_limits<int64_t>::max()}) {
    inference::ModelInferRequest request = Request(1);
    (*request.mutable_parameters())["timeout"].set_int64_param(timeout);
    v1::RankRequest rank;
    InferMeaning meaning;
    ASSERT_TRUE(ToRankRequest(&request, registry_, &rank, &meaning).ok());
    EXPECT_EQ(meaning.timeout, kMaxInferTimeout) << timeout;
    request = Request(1);
    (*request.mutable_parameters())["timeout"].set_int64_param(timeout);
    EXPECT_TRUE(Infer(request).status.ok()) << timeout;
  }
  inference::ModelInferRequest request = Request(1);
  (*request.mutable_parameters())["timeout"].set_uint64_param(std::numeric_limits<uint64_t>::max());
  RankCallOptions options;
  options.deadline = SteadyClock::Get()->Now() + std::chrono::microseconds(500);
  options.reply_margin = std::chrono::milliseconds(1);
  const InferAnswered answered = Infer(request, options);
  EXPECT_EQ(answered.status.code(), StatusCode::kDeadlineExceeded) << answered.status.message();
  (*request.mutable_parameters())["timeout"].set_int64_param(1'000'000);  // within the cap: as sent
  v1::RankRequest rank;
  InferMeaning meaning;
  ASSERT_TRUE(ToRankRequest(&request, registry_, &rank, &meaning).ok());
  EXPECT_EQ(meaning.timeout, std::chrono::seconds(1));
}

TEST_F(InferCallTest, BadRequestsNameTheirField) {
  struct Case {
    const char* why;
    inference::ModelInferRequest request;
    StatusCode code;
    const char* names;
  };
  std::vector<Case> cases;
  cases.push_back({"no model", Request(1), StatusCode::kInvalidArgument, "model_name"});
  cases.back().request.clear_model_name();
  cases.push_back({"a version that is no number", Request(1, "v1"), StatusCode::kInvalidArgument, "model_version"});
  cases.push_back({"a version not loaded", Request(1, "7"), StatusCode::kNotFound, "7"});
  cases.push_back({"an unknown datatype", Request(1), StatusCode::kInvalidArgument, "inputs[0] ('x').datatype"});
  cases.back().request.mutable_inputs(0)->set_datatype("UINT32");
  cases.push_back({"raw contents missing one input", Request(1), StatusCode::kInvalidArgument, "raw_input_contents"});
  cases.back().request.mutable_raw_input_contents()->RemoveLast();
  cases.push_back({"an output the model lacks", Request(1), StatusCode::kInvalidArgument, "outputs[0].name"});
  cases.back().request.add_outputs()->set_name("logits");
  cases.push_back({"a priority of the wrong type", Request(1), StatusCode::kInvalidArgument, "parameters.priority"});
  (*cases.back().request.mutable_parameters())["priority"].set_string_param("high");
  cases.push_back({"typed contents of the wrong count", Request(1), StatusCode::kInvalidArgument,
                   "inputs[1] ('bias').contents: 2 values"});
  cases.back().request.clear_raw_input_contents();
  cases.back().request.mutable_inputs(0)->mutable_contents()->add_fp32_contents(0);
  cases.back().request.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1);
  cases.back().request.mutable_inputs(1)->mutable_contents()->add_fp32_contents(1);
  cases.back().request.mutable_inputs(1)->mutable_contents()->add_fp32_contents(2);
  for (const Case& c : cases) {
    const InferAnswered answered = Infer(c.request);
    EXPECT_EQ(answered.status.code(), c.code) << c.why << ": " << answered.status.message();
    EXPECT_NE(answered.status.message().find(c.names), std::string::npos) << c.why << ": " << answered.status.message();
  }
  const InferAnswered unparseable = InferBytes(std::string("\x0a\x05su", 4));
  EXPECT_EQ(unparseable.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unparseable.status.message().find("not an inference.ModelInferRequest"), std::string::npos)
      << unparseable.status.message();
  EXPECT_NE(unparseable.status.message().find("model_name"), std::string::npos) << unparseable.status.message();
}

// One contract: what Rank refuses, v2 refuses with the same code and message.
TEST_F(InferCallTest, RefusalsAreRanksOwn) {
  struct Case {
    const char* why;
    inference::ModelInferRequest infer;
    v1::RankRequest rank;
  };
  std::vector<Case> cases;
  cases.push_back({"unknown model", Request(2), RankRequest(2)});
  cases.back().infer.set_model_name("nope");
  cases.back().rank.mutable_models(0)->set_name("nope");
  cases.push_back({"row dims", Request(2), RankRequest(2)});
  cases.back().infer.mutable_inputs(0)->set_shape(1, 3);
  cases.back().rank.mutable_candidates(0)->set_shape(1, 3);
  cases.push_back({"NaN", Request(2), RankRequest(2)});
  const std::string nan = Bytes({std::nanf(""), 0, 0, 0});
  *cases.back().infer.mutable_raw_input_contents(0) = nan;
  cases.back().rank.mutable_candidates(0)->set_raw_data(nan);
  cases.push_back({"too many candidates", Request(65), RankRequest(65)});
  cases.push_back({"context with two rows", Request(2), RankRequest(2)});
  cases.back().infer.mutable_inputs(1)->set_shape(0, 2);
  *cases.back().infer.mutable_raw_input_contents(1) = Bytes({1, 1});
  cases.back().rank.mutable_context(0)->set_shape(0, 2);
  cases.back().rank.mutable_context(0)->set_raw_data(Bytes({1, 1}));
  cases.push_back({"priority out of range", Request(2), RankRequest(2)});
  (*cases.back().infer.mutable_parameters())["priority"].set_int64_param(int64_t{1} << 40);
  cases.back().rank.set_priority(UINT32_MAX);
  for (const Case& c : cases) {
    const Status infer = Infer(c.infer).status;
    const Status rank = Rank(c.rank);
    ASSERT_FALSE(rank.ok()) << c.why;
    EXPECT_EQ(infer.code(), rank.code()) << c.why << ": " << infer.message();
    if (std::string(c.why) == "priority out of range") continue;  // the value differs: the message's form is the same
    std::string expected = rank.message();
    if (expected.rfind("models: ", 0) == 0) expected = "model_name: " + expected.substr(8);  // v2's field
    EXPECT_EQ(infer.message(), expected) << c.why;
  }
}

// A v2 inference naming a model no version serves is a request to an unknown model, counted once as Rank's
// is; a version not loaded and a metadata call are not.
TEST_F(InferCallTest, AnUnknownModelIsCountedOnceAsRanksIs) {
  inference::ModelInferRequest unknown = Request(2);
  unknown.set_model_name("nope");
  EXPECT_EQ(Infer(unknown).status.code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.unknown_model_requests(), 1u);
  v1::RankRequest rank = RankRequest(2);
  rank.mutable_models(0)->set_name("nope");
  EXPECT_EQ(Rank(rank).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.unknown_model_requests(), 2u);
  EXPECT_EQ(Infer(Request(2, "7")).status.code(), StatusCode::kNotFound);
  inference::ModelMetadataRequest metadata_request;
  metadata_request.set_name("nope");
  inference::ModelMetadataResponse metadata;
  EXPECT_EQ(ModelMetadata(registry_, metadata_request, &metadata).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.unknown_model_requests(), 2u);
}

TEST_F(InferCallTest, StartInferKeepsTheSerializedResponse) {
  auto answer = std::make_shared<Outcome<RankAnswer>>();
  std::promise<void> told;
  StartInfer(Request(2).SerializeAsString(), registry_, {}, answer, [&told] { told.set_value(); });
  told.get_future().wait();
  ASSERT_TRUE(answer->done());
  ASSERT_TRUE(answer->value().status.ok()) << answer->value().status.message();
  inference::ModelInferResponse response;
  ASSERT_TRUE(response.ParseFromString(answer->value().reply));
  EXPECT_EQ(Scores(response), (std::vector<float>{1.5f, 3.5f}));
}

TEST_F(InferCallTest, MetadataDescribesWhatAClientSends) {
  inference::ModelMetadataRequest request;
  request.set_name("sum");
  inference::ModelMetadataResponse metadata;
  ASSERT_TRUE(ModelMetadata(registry_, request, &metadata).ok());
  EXPECT_EQ(metadata.name(), "sum");
  EXPECT_EQ(std::vector<std::string>(metadata.versions().begin(), metadata.versions().end()),
            (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(metadata.platform(), "onnxruntime_onnx");
  ASSERT_EQ(metadata.inputs_size(), 2);
  EXPECT_EQ(metadata.inputs(0).name(), "x");
  EXPECT_EQ(metadata.inputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(metadata.inputs(0).shape().begin(), metadata.inputs(0).shape().end()),
            (std::vector<int64_t>{-1, 2}));
  EXPECT_EQ(std::vector<int64_t>(metadata.inputs(1).shape().begin(), metadata.inputs(1).shape().end()),
            (std::vector<int64_t>{1}));
  ASSERT_EQ(metadata.outputs_size(), 1);
  EXPECT_EQ(metadata.outputs(0).name(), "score");
  EXPECT_EQ(metadata.outputs(0).shape(0), -1);
  request.set_name("nope");
  EXPECT_EQ(ModelMetadata(registry_, request, &metadata).code(), StatusCode::kNotFound);

  inference::ModelReadyRequest ready;
  inference::ModelReadyResponse answer;
  ready.set_name("sum");
  ModelReady(registry_, true, ready, &answer);
  EXPECT_TRUE(answer.ready());
  ModelReady(registry_, false, ready, &answer);
  EXPECT_FALSE(answer.ready()) << "not while the server does not serve";
  for (const char* version : {"2", "3", "x"}) {
    ready.set_version(version);
    ModelReady(registry_, true, ready, &answer);
    EXPECT_EQ(answer.ready(), std::string(version) == "2") << version;
  }
}

TEST_F(InferCallTest, StatisticsCountWhatEachVersionDid) {
  ASSERT_TRUE(Infer(Request(3)).status.ok());
  ASSERT_TRUE(Infer(Request(5)).status.ok());
  ASSERT_TRUE(Infer(Request(2, "2")).status.ok());
  inference::ModelStatisticsRequest request;
  inference::ModelStatisticsResponse all;
  ASSERT_TRUE(ModelStatistics(registry_, request, &all).ok());
  ASSERT_EQ(all.model_stats_size(), 2);
  const inference::ModelStatistics& one = all.model_stats(0);
  EXPECT_EQ(one.name(), "sum");
  EXPECT_EQ(one.version(), "1");
  EXPECT_EQ(one.inference_count(), 8u) << "candidates, as Triton counts a batched request's elements";
  EXPECT_GE(one.execution_count(), 1u);
  EXPECT_LE(one.execution_count(), 2u);
  EXPECT_EQ(one.inference_stats().success().count(), 2u);
  EXPECT_GT(one.inference_stats().success().ns(), 0u);
  EXPECT_EQ(one.inference_stats().fail().count(), 0u);
  EXPECT_EQ(one.inference_stats().queue().count(), 2u);
  EXPECT_EQ(one.inference_stats().compute_infer().count(), 2u);
  EXPECT_GE(one.inference_stats().success().ns(), one.inference_stats().compute_infer().ns());
  EXPECT_EQ(all.model_stats(1).version(), "2");
  EXPECT_EQ(all.model_stats(1).inference_count(), 2u);

  request.set_name("sum");
  request.set_version("2");
  inference::ModelStatisticsResponse pinned;
  ASSERT_TRUE(ModelStatistics(registry_, request, &pinned).ok());
  ASSERT_EQ(pinned.model_stats_size(), 1);
  EXPECT_EQ(pinned.model_stats(0).version(), "2");

  struct Case {
    const char* name;
    const char* version;
    StatusCode code;
  };
  for (const Case& bad : {Case{"sum", "3", StatusCode::kNotFound}, Case{"sum", "x", StatusCode::kInvalidArgument},
                          Case{"nope", "", StatusCode::kNotFound}, Case{"", "1", StatusCode::kInvalidArgument}}) {
    request.set_name(bad.name);
    request.set_version(bad.version);
    inference::ModelStatisticsResponse refused;
    EXPECT_EQ(ModelStatistics(registry_, request, &refused).code(), bad.code) << bad.name << " " << bad.version;
  }
}

}  // namespace
}  // namespace adrank
