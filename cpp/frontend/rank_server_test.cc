#include "rank_server.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "adrank/kserve/grpc_service.grpc.pb.h"
#include "adrank/v1/ranking.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace adrank {
namespace {

using std::chrono::milliseconds;

// A model whose score is x[0] + x[1] + bias, served by a real RankServer on a free loopback port.
class RankServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ThreadPoolOptions pool_options;
    pool_options.num_workers = 2;
    ASSERT_TRUE(ThreadPool::Create(pool_options, &pool_).ok());
    ModelOptions model;
    model.name = "sum:1";
    model.signature.inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate},
                              {"bias", DType::kFloat32, {}, Role::kContext}};
    model.signature.outputs = {{"score", DType::kFloat32, {}, Role::kCandidate}};
    model.batching.max_queue_delay_us = 0;
    model.backend = [this](BatchIO& io) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        ++entered_;
        gate_cv_.notify_all();
        gate_cv_.wait(lock, [this] { return gate_open_; });
        rows_computed_ += io.real_rows;
      }
      const auto* x = static_cast<const float*>(io.inputs[0].data);
      const auto* bias = static_cast<const float*>(io.inputs[1].data);
      auto* score = static_cast<float*>(io.outputs[0].data);
      for (int64_t r = 0; r < io.rows; ++r) score[r] = x[2 * r] + x[2 * r + 1] + bias[r];
      return Status::Ok();
    };
    std::shared_ptr<ModelQueue> queue;
    ASSERT_TRUE(pool_->AddModel(std::move(model), &queue).ok());
    auto served = std::make_shared<ServedModel>();
    served->name = "sum";
    served->version = 1;
    served->queue = queue;
    served->inputs = {{"x", DType::kFloat32, {2}, Role::kCandidate, false, 0},
                      {"bias", DType::kFloat32, {}, Role::kContext, true, 0}};
    served->score_output = "score";
    served->max_candidates = 4096;
    registry_ = std::make_shared<ModelRegistry>();
    auto& registry = registry_;
    registry->Add(served, true);
    // "strict": the same model, but its batcher refuses requests of more than 2 rows at Submit.
    ModelOptions strict_options;
    strict_options.name = "strict:1";
    strict_options.signature = served->queue->batcher().signature();
    strict_options.batching.max_request_rows = 2;
    strict_options.backend = [](BatchIO&) { return Status::Ok(); };
    std::shared_ptr<ModelQueue> strict_queue;
    ASSERT_TRUE(pool_->AddModel(std::move(strict_options), &strict_queue).ok());
    auto strict = std::make_shared<ServedModel>(*served);
    strict->name = "strict";
    strict->queue = strict_queue;
    registry->Add(strict, true);
    RankServerOptions options;
    options.port = 0;
    ASSERT_TRUE(RankServer::Create(options, registry, &server_).ok());
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials());
    stub_ = v1::Ranking::NewStub(channel_);
  }

  void TearDown() override {
    OpenGate();
    server_.reset();
    pool_->Shutdown();
  }

  void OpenGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = true;
    gate_cv_.notify_all();
  }
  void CloseGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = false;
  }
  // Waits until `count` batches have reached the backend (and, with the gate closed, wait there).
  void WaitEntered(int count) {
    std::unique_lock<std::mutex> lock(mu_);
    gate_cv_.wait_for(lock, std::chrono::seconds(10), [&] { return entered_ >= count; });
    ASSERT_GE(entered_, count);
  }

  static v1::RankRequest Request(int64_t rows, float first) {
    v1::RankRequest request;
    request.set_request_id("r" + std::to_string(rows));
    request.add_models()->set_name("sum");
    std::vector<float> x(static_cast<size_t>(2 * rows));
    for (size_t i = 0; i < x.size(); ++i) x[i] = first + static_cast<float>(i);
    v1::Tensor* t = request.add_candidates();
    t->set_name("x");
    t->set_dtype(v1::DATA_TYPE_FLOAT32);
    t->add_shape(rows);
    t->add_shape(2);
    t->set_raw_data(std::string(reinterpret_cast<const char*>(x.data()), x.size() * 4));
    v1::Tensor* b = request.add_context();
    b->set_name("bias");
    b->set_dtype(v1::DATA_TYPE_FLOAT32);
    b->add_shape(1);
    const float bias = 0.5f;
    b->set_raw_data(std::string(reinterpret_cast<const char*>(&bias), 4));
    return request;
  }

  grpc::Status Rank(const v1::RankRequest& request, v1::RankResponse* response,
                    milliseconds timeout = milliseconds(10000)) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    return stub_->Rank(&context, request, response);
  }

  // Sends `bytes` as they are (no client-side serialization), on `channel` (default: the test's).
  grpc::Status RankBytes(const std::string& bytes, std::string* reply = nullptr,
                         std::shared_ptr<grpc::Channel> channel = nullptr) {
    grpc::GenericStub stub(channel ? channel : channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, "/adrank.v1.Ranking/Rank", grpc::StubOptions(), &request, &response,
                   [&done](grpc::Status status) { done.set_value(std::move(status)); });
    const grpc::Status status = done.get_future().get();
    if (reply != nullptr) {
      std::vector<grpc::Slice> slices;
      reply->clear();
      if (response.Dump(&slices).ok()) {
        for (const auto& piece : slices) reply->append(reinterpret_cast<const char*>(piece.begin()), piece.size());
      }
    }
    return status;
  }

  static std::vector<float> Scores(const v1::ModelScores& scores) {
    std::vector<float> out(scores.scores().size() / 4);
    std::memcpy(out.data(), scores.scores().data(), scores.scores().size());
    return out;
  }

  std::unique_ptr<ThreadPool> pool_;
  std::shared_ptr<ModelRegistry> registry_;
  std::unique_ptr<RankServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Ranking::Stub> stub_;
  std::mutex mu_;
  std::condition_variable gate_cv_;
  bool gate_open_ = true;
  int entered_ = 0;  // batches that reached the backend
  int64_t rows_computed_ = 0;
};

// Registers version `version` of "sum" whose scores are those of version 1 plus `offset`.
std::shared_ptr<ServedModel> AddSumVersion(ThreadPool& pool, ModelRegistry& registry, int64_t version, float offset,
                                           milliseconds delay = milliseconds(0), int64_t max_batch_rows = 1024) {
  std::shared_ptr<const ServedModel> stable;
  EXPECT_TRUE(registry.Resolve("sum", 1, &stable).ok());
  ModelOptions model;
  model.name = "sum:" + std::to_string(version);
  model.signature = stable->queue->batcher().signature();
  model.batching.max_queue_delay_us = 0;
  model.batching.priority_levels = 2;
  model.batching.max_batch_rows = max_batch_rows;
  model.backend = [offset, delay](BatchIO& io) {
    std::this_thread::sleep_for(delay);
    const auto* x = static_cast<const float*>(io.inputs[0].data);
    const auto* bias = static_cast<const float*>(io.inputs[1].data);
    auto* score = static_cast<float*>(io.outputs[0].data);
    for (int64_t r = 0; r < io.rows; ++r) score[r] = x[2 * r] + x[2 * r + 1] + bias[r] + offset;
    return Status::Ok();
  };
  auto served = std::make_shared<ServedModel>(*stable);
  EXPECT_TRUE(pool.AddModel(std::move(model), &served->queue).ok());
  served->version = version;
  served->lowest_priority = 1;
  EXPECT_TRUE(VersionStats::Create(VersionStatsOptions{0, 100, 100}, &served->stats).ok());
  registry.Add(served, false);
  return served;
}

TEST_F(RankServerTest, CanaryAnswersAndSaysSoWhileTheShadowIsScoredButNeverReturned) {
  server_->SetServing(true);
  ModelRegistry& registry = server_->registry();
  std::shared_ptr<ServedModel> canary = AddSumVersion(*pool_, registry, 2, 100.0f);
  std::shared_ptr<ServedModel> shadow = AddSumVersion(*pool_, registry, 3, 10.0f);
  shadow->stats->set_record_scores(true);
  ASSERT_TRUE(registry.SetRollout("sum", RolloutRoute{1, 2, 0, 3, 10000}).ok());
  v1::RankResponse response;
  ASSERT_TRUE(Rank(Request(2, 0), &response).ok());
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_EQ(response.results(0).version(), 1);
  EXPECT_EQ(Scores(response.results(0)), (std::vector<float>{1.5f, 5.5f}));  // stable's, not the shadow's
  // The mirror completes on its own: its two scores (11.5 and 15.5) land in the shadow's histogram.
  for (int i = 0; i < 1000 && shadow->stats->Snapshot().ok == 0; ++i) std::this_thread::sleep_for(milliseconds(2));
  const VersionStatsSnapshot mirrored = shadow->stats->Snapshot();
  EXPECT_EQ(mirrored.ok, 1u);
  EXPECT_EQ(mirrored.score_counts[12], 1u);
  EXPECT_EQ(mirrored.score_counts[16], 1u);
  // Every key on the canary: it answers, and the response names it.
  ASSERT_TRUE(registry.SetRollout("sum", RolloutRoute{1, 2, 10000}).ok());
  ASSERT_TRUE(Rank(Request(2, 0), &response).ok());
  EXPECT_EQ(response.results(0).version(), 2);
  EXPECT_EQ(Scores(response.results(0)), (std::vector<float>{101.5f, 105.5f}));
  EXPECT_EQ(canary->stats->Snapshot().ok, 1u);
}

TEST_F(RankServerTest, AShadowThatFallsBehindIsShedWhileEveryCallIsAnswered) {
  server_->SetServing(true);
  ModelRegistry& registry = server_->registry();
  // 50 ms a batch of at most 2 rows: far slower than the calls it mirrors.
  std::shared_ptr<ServedModel> shadow = AddSumVersion(*pool_, registry, 2, 10.0f, milliseconds(50), 2);
  ASSERT_TRUE(registry.SetRollout("sum", RolloutRoute{1, 0, 0, 2, 10000}).ok());
  for (int i = 0; i < 20; ++i) {
    v1::RankResponse response;
    ASSERT_TRUE(Rank(Request(2, 0), &response).ok());
    EXPECT_EQ(response.results(0).version(), 1);
  }
  VersionStatsSnapshot mirrored = shadow->stats->Snapshot();
  for (int i = 0; i < 1000 && mirrored.ok + mirrored.dropped < 20; ++i) {
    std::this_thread::sleep_for(milliseconds(5));
    mirrored = shadow->stats->Snapshot();
  }
  EXPECT_EQ(mirrored.ok + mirrored.dropped, 20u);  // every mirror accounted for
  EXPECT_GT(mirrored.dropped, 0u);                 // those that found it behind were shed
  EXPECT_GT(mirrored.ok, 0u);
  EXPECT_EQ(mirrored.failed, 0u);
}

TEST_F(RankServerTest, LoadingServerAnswersUnavailableAndReportsNotServing) {
  v1::RankResponse response;
  const grpc::Status status = Rank(Request(2, 0), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(status.error_message().find("loading"), std::string::npos);
}

// grpc.health.v1.Health/Check for `service`, by hand (grpc++ ships no health stubs): the request is
// field 1 (the service name), the reply field 1 (1 SERVING, 2 NOT_SERVING); "NOT_FOUND" for a service
// the server does not know.
std::string HealthOf(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  std::string request;
  if (!service.empty()) request = std::string(1, '\x0a') + static_cast<char>(service.size()) + service;
  const grpc::Slice slice(request);
  const grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer reply_buffer;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  grpc::GenericStub stub(channel);
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer, &reply_buffer,
                 [&done](grpc::Status status) { done.set_value(std::move(status)); });
  const grpc::Status status = done.get_future().get();
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) return "NOT_FOUND";
  if (!status.ok()) return "error: " + status.error_message();
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(reply_buffer.Dump(&slices).ok());
  std::string reply;
  for (const grpc::Slice& s : slices) reply.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (reply == std::string("\x08\x01", 2)) return "SERVING";
  if (reply == std::string("\x08\x02", 2)) return "NOT_SERVING";
  return "unexpected reply of " + std::to_string(reply.size()) + " bytes";
}

TEST_F(RankServerTest, HealthIsPerServiceShownOnceServingAndEndsWithTheDrain) {
  const std::shared_ptr<grpc::Channel>& channel = channel_;
  EXPECT_EQ(HealthOf(channel, ""), "NOT_SERVING");
  EXPECT_EQ(HealthOf(channel, "adrank.v1.Ranking"), "NOT_SERVING");
  EXPECT_EQ(HealthOf(channel, "sum"), "NOT_FOUND");
  // Set while loading: kept, not shown.
  server_->SetServiceServing("sum", true);
  server_->SetServiceServing("strict", false);
  server_->SetServiceServing("", false);
  server_->SetServiceServing("adrank.v1.Ranking", false);
  EXPECT_EQ(HealthOf(channel, "sum"), "NOT_SERVING");
  server_->SetServing(true);
  // Serving shows each service as last set: SetServing(true) turns no service SERVING on its own.
  EXPECT_EQ(HealthOf(channel, "sum"), "SERVING");
  EXPECT_EQ(HealthOf(channel, "strict"), "NOT_SERVING");
  EXPECT_EQ(HealthOf(channel, ""), "NOT_SERVING");
  EXPECT_EQ(HealthOf(channel, "adrank.v1.Ranking"), "NOT_SERVING");
  v1::RankResponse response;
  EXPECT_TRUE(Rank(Request(2, 0), &response).ok()) << "health is not admission: Rank serves the models it has";
  // While serving a change shows at once, and only the service named changes.
  server_->SetServiceServing("strict", true);
  server_->SetServiceServing("", true);
  server_->SetServiceServing("adrank.v1.Ranking", true);
  EXPECT_EQ(HealthOf(channel, "strict"), "SERVING");
  EXPECT_EQ(HealthOf(channel, ""), "SERVING");
  server_->SetServiceServing("sum", false);
  EXPECT_EQ(HealthOf(channel, "sum"), "NOT_SERVING");
  EXPECT_EQ(HealthOf(channel, "strict"), "SERVING");
  EXPECT_EQ(HealthOf(channel, ""), "SERVING");
  // Draining: every service NOT_SERVING, and no later update brings one back.
  server_->StartDraining();
  server_->SetServiceServing("sum", true);
  server_->SetServiceServing("", true);
  for (const char* service : {"", "adrank.v1.Ranking", "sum", "strict"}) {
    EXPECT_EQ(HealthOf(channel, service), "NOT_SERVING") << "service '" << service << "'";
  }
}

TEST_F(RankServerTest, ServesEachCallItsOwnScoresWithTiming) {
  server_->SetServing(true);
  std::vector<std::thread> clients;
  std::atomic<int> wrong{0};
  for (int c = 0; c < 16; ++c) {
    clients.emplace_back([&, c] {
      const int64_t rows = 1 + 37 * c % 500;
      v1::RankResponse response;
      const grpc::Status status = Rank(Request(rows, static_cast<float>(c) * 1000), &response);
      if (!status.ok() || response.results_size() != 1) {
        ADD_FAILURE() << "call " << c << ": " << status.error_code() << " " << status.error_message();
        ++wrong;
        return;
      }
      const std::vector<float> scores = Scores(response.results(0));
      if (static_cast<int64_t>(scores.size()) != rows || response.request_id() != "r" + std::to_string(rows)) ++wrong;
      for (int64_t r = 0; r < rows && r < static_cast<int64_t>(scores.size()); ++r) {
        const float x0 = static_cast<float>(c) * 1000 + static_cast<float>(2 * r);
        if (scores[static_cast<size_t>(r)] != x0 + x0 + 1 + 0.5f) ++wrong;
      }
      if (response.results(0).version() != 1 || response.results(0).timing().batch_rows() < rows) ++wrong;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// The call object waiting on a queue is made before its call comes; the server's time (server_us, the request
// histogram) counts from the arrival, so it is never more than what the client saw, however long the server idled.
TEST_F(RankServerTest, ServerTimeCountsFromTheCallsArrivalNotFromWhenItWasArmed) {
  server_->SetServing(true);
  v1::RankResponse response;
  ASSERT_TRUE(Rank(Request(3, 0), &response).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the next call object waits meanwhile
  const auto sent = std::chrono::steady_clock::now();
  ASSERT_TRUE(Rank(Request(3, 0), &response).ok());
  const auto seen_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - sent).count();
  EXPECT_LE(response.server_us(), seen_us);
}

TEST_F(RankServerTest, BadRequestsGetTheirStatusAndTheServerKeepsServing) {
  server_->SetServing(true);
  v1::RankRequest request = Request(2, 0);
  request.mutable_models(0)->set_name("nope");
  v1::RankResponse response;
  EXPECT_EQ(Rank(request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  request = Request(2, 0);
  request.mutable_candidates(0)->mutable_raw_data()->resize(4);
  const grpc::Status status = Rank(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("candidates tensor 'x'"), std::string::npos) << status.error_message();
  request = Request(2, 0);
  request.set_priority(9);
  EXPECT_EQ(Rank(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Rank(Request(3, 0), &response).ok());
  // Every call is counted by its code; only the one that reached the model is in the version's stats.
  const auto calls = server_->admission()->CallCounts();
  EXPECT_EQ(calls[static_cast<size_t>(StatusCode::kOk)], 1u);
  EXPECT_EQ(calls[static_cast<size_t>(StatusCode::kNotFound)], 1u);
  EXPECT_EQ(calls[static_cast<size_t>(StatusCode::kInvalidArgument)], 2u);
  std::shared_ptr<const ServedModel> sum;
  ASSERT_TRUE(server_->registry().Resolve("sum", 0, &sum).ok());
  const VersionStatsSnapshot stats = sum->stats->Snapshot();
  EXPECT_EQ(stats.ok, 1u);
  EXPECT_EQ(stats.candidates, 3u);
  // The request's time in the server holds its queueing and compute.
  EXPECT_GE(stats.request_us_sum, stats.queue_us_sum + stats.compute_us_sum);
}

TEST_F(RankServerTest, ACallWhoseDeadlinePassesInTheQueueIsNeverComputed) {
  server_->SetServing(true);
  CloseGate();
  v1::RankResponse first_response;
  std::thread blocker([&] { EXPECT_TRUE(Rank(Request(1, 0), &first_response).ok()); });
  // The first batch holds the model's only instance; this one waits in the queue past its deadline.
  WaitEntered(1);
  v1::RankResponse response;
  const grpc::Status status = Rank(Request(2, 0), &response, milliseconds(50));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  OpenGate();
  blocker.join();
  EXPECT_TRUE(server_->WaitDrained(milliseconds(0), std::chrono::seconds(10)));
  // Only the first call's row was computed: the late one never reached the backend.
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(rows_computed_, 1);
}

TEST_F(RankServerTest, DrainingFinishesCallsInFlightAndRefusesNewOnes) {
  server_->SetServing(true);
  CloseGate();
  grpc::Status in_flight_status;
  v1::RankResponse in_flight_response;
  std::thread caller([&] { in_flight_status = Rank(Request(3, 0), &in_flight_response); });
  WaitEntered(1);
  server_->StartDraining();
  v1::RankResponse response;
  const grpc::Status refused = Rank(Request(1, 0), &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(refused.error_message().find("draining"), std::string::npos);
  EXPECT_FALSE(server_->WaitDrained(milliseconds(10), milliseconds(50))) << "a call is still in flight";
  OpenGate();
  EXPECT_TRUE(server_->WaitDrained(milliseconds(10), std::chrono::seconds(10)));
  caller.join();
  EXPECT_TRUE(in_flight_status.ok()) << in_flight_status.error_message();
  EXPECT_EQ(Scores(in_flight_response.results(0)).size(), 3u);
  server_->Shutdown(milliseconds(100));
}

TEST_F(RankServerTest, OneModelFailingCancelsTheOthersQueuedPartsAndAnswersAtOnce) {
  server_->SetServing(true);
  CloseGate();
  v1::RankResponse blocker_response;
  std::thread blocker([&] { EXPECT_TRUE(Rank(Request(1, 0), &blocker_response).ok()); });
  WaitEntered(1);  // "sum"'s only instance is held: the next part of "sum" waits in its queue
  v1::RankRequest request = Request(3, 0);
  request.add_models()->set_name("strict");  // refuses 3 rows at Submit
  v1::RankResponse response;
  const grpc::Status status = Rank(request, &response, milliseconds(5000));
  // Answered while the gate is still closed: the call did not wait for "sum"'s queued part.
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("strict"), std::string::npos) << status.error_message();
  OpenGate();
  blocker.join();
  EXPECT_TRUE(server_->WaitDrained(milliseconds(0), std::chrono::seconds(10)));
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(rows_computed_, 1) << "the cancelled part of 'sum' ran";
}

TEST_F(RankServerTest, WaitDrainedWithNoQuietPeriodDoesNotSpinWhileACallRuns) {
  server_->SetServing(true);
  CloseGate();
  v1::RankResponse response;
  std::thread caller([&] { EXPECT_TRUE(Rank(Request(2, 0), &response).ok()); });
  WaitEntered(1);
  server_->StartDraining();
  const std::clock_t cpu_before = std::clock();
  EXPECT_FALSE(server_->WaitDrained(milliseconds(0), milliseconds(200)));
  const double cpu_s = static_cast<double>(std::clock() - cpu_before) / CLOCKS_PER_SEC;
  EXPECT_LT(cpu_s, 0.1) << "WaitDrained burned CPU while waiting";
  OpenGate();
  caller.join();
  EXPECT_TRUE(server_->WaitDrained(milliseconds(0), std::chrono::seconds(10)));
}

}  // namespace
}  // namespace adrank

namespace adrank {
namespace {

TEST_F(RankServerTest, UnparseableBytesGetInvalidArgumentNamingTheFieldNeverUnimplemented) {
  server_->SetServing(true);
  const std::string good = Request(2, 0).SerializeAsString();
  // Cut inside the candidates tensor: the message says which field and where.
  grpc::Status status = RankBytes(good.substr(0, good.size() - 20));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("not an adrank.v1.RankRequest"), std::string::npos) << status.error_message();
  EXPECT_NE(status.error_message().find("at byte"), std::string::npos) << status.error_message();
  // A tensor name that is not UTF-8 (proto3 strings must be).
  v1::RankRequest request = Request(2, 0);
  request.mutable_candidates(0)->set_name("x");
  std::string bytes = request.SerializeAsString();
  const size_t at = bytes.find(std::string("\x0a\x01x", 3));
  ASSERT_NE(at, std::string::npos);
  bytes[at + 2] = '\xff';
  status = RankBytes(bytes);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("candidates[0].name"), std::string::npos) << status.error_message();
  EXPECT_NE(status.error_message().find("UTF-8"), std::string::npos) << status.error_message();
  // Random bytes: an invalid wire type.
  status = RankBytes(std::string("\x0f\x0f\x0f", 3));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  // The server still serves, and the answer is a RankResponse.
  std::string reply;
  ASSERT_TRUE(RankBytes(good, &reply).ok());
  v1::RankResponse response;
  ASSERT_TRUE(response.ParseFromString(reply));
  EXPECT_EQ(response.request_id(), "r2");
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_EQ(Scores(response.results(0)), (std::vector<float>{1.5f, 5.5f}));
  EXPECT_EQ(server_->admission()->CallCounts()[static_cast<size_t>(StatusCode::kInvalidArgument)], 3u);
}

TEST_F(RankServerTest, AMessageLargerThanAnyServedModelTakesIsRefusedByItsSizeUnparsed) {
  server_->SetServing(true);
  const int64_t largest = registry_->max_request_bytes();
  // sum and strict: 4096 rows of 2 float32 and one float32 of context each, plus the envelope.
  EXPECT_EQ(largest, 2 * (kRequestEnvelopeBytes + 4096 * 8 + 4));
  // Garbage past the bound: parsed, it would be INVALID_ARGUMENT; refused by size, it never is.
  const grpc::Status status = RankBytes(std::string(static_cast<size_t>(largest) + 1, '\xff'));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find(std::to_string(largest + 1) + " bytes"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(server_->admission()->in_flight_bytes(), 0);
  // At the bound exactly: parsed (and refused for what it is).
  EXPECT_EQ(RankBytes(std::string(static_cast<size_t>(largest), '\xff')).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(RankServerTest, RequestBytesInFlightPastTheBoundAreRefusedUntilTheCallsHoldingThemFinish) {
  const std::string one = Request(64, 0).SerializeAsString();  // 64 rows of 2 float32: ~550 bytes
  RankServerOptions options;
  options.port = 0;
  options.max_in_flight_bytes = static_cast<int64_t>(one.size()) * 3 / 2;  // one call fits, two do not
  std::unique_ptr<RankServer> bounded;
  ASSERT_TRUE(RankServer::Create(options, registry_, &bounded).ok());
  bounded->SetServing(true);
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(bounded->port()), grpc::InsecureChannelCredentials());
  CloseGate();
  std::promise<grpc::Status> first;
  std::thread holder([&] { first.set_value(RankBytes(one, nullptr, channel)); });
  WaitEntered(1);  // the first call is in the backend, its bytes reserved
  EXPECT_EQ(bounded->admission()->in_flight_bytes(), static_cast<int64_t>(one.size()));
  const grpc::Status refused = RankBytes(one, nullptr, channel);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("max_in_flight_bytes"), std::string::npos) << refused.error_message();
  OpenGate();
  EXPECT_TRUE(first.get_future().get().ok());
  holder.join();
  // The bytes are released when gRPC is done with the call, which may be just after its client has
  // the reply.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (bounded->admission()->in_flight_bytes() != 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_TRUE(RankBytes(one, nullptr, channel).ok());  // freed: served again
  while (bounded->admission()->in_flight_bytes() != 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_EQ(bounded->admission()->in_flight_bytes(), 0);
  EXPECT_EQ(bounded->admission()->released_bytes(), 2 * one.size());  // the refused one never held any
  bounded->Shutdown(Duration::zero());
}

TEST_F(RankServerTest, OptionsOutOfRangeAreRefusedNamingThem) {
  RankServerOptions options;
  options.port = 0;
  options.max_concurrent_streams = 0;
  std::unique_ptr<RankServer> server;
  Status status = RankServer::Create(options, registry_, &server);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("max_concurrent_streams"), std::string::npos);
  options.max_concurrent_streams = 1;
  options.max_in_flight_bytes = 0;
  status = RankServer::Create(options, registry_, &server);
  EXPECT_NE(status.message().find("max_in_flight_bytes"), std::string::npos);
  options.max_in_flight_bytes = 1;
  options.reply_margin = std::chrono::milliseconds(-1);
  status = RankServer::Create(options, registry_, &server);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("reply_margin"), std::string::npos);
}

TEST_F(RankServerTest, TlsFilesThatCannotBeServedAreRefusedNamingThemAndNothingListens) {
  RankServerOptions options;
  options.port = 0;
  std::unique_ptr<RankServer> server;
  options.tls.cert_file = "/nonexistent/adrank-test/tls.crt";
  Status status = RankServer::Create(options, registry_, &server);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("without its key"), std::string::npos) << status.message();
  options.tls.key_file = "/nonexistent/adrank-test/tls.key";
  status = RankServer::Create(options, registry_, &server);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("cannot read /nonexistent/adrank-test/tls.crt"), std::string::npos)
      << status.message();
  options.tls = TlsFiles{};
  options.tls.client_ca_file = "/nonexistent/adrank-test/ca.pem";
  status = RankServer::Create(options, registry_, &server);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("without a certificate"), std::string::npos) << status.message();
  EXPECT_EQ(server, nullptr);
}

TEST_F(RankServerTest, APortAnotherServerHoldsIsRefusedNotShared) {
  // With gRPC's default SO_REUSEPORT the second would bind beside the first and take some of its clients.
  RankServerOptions options;
  options.port = server_->port();
  std::unique_ptr<RankServer> second;
  const Status status = RankServer::Create(options, registry_, &second);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("127.0.0.1:" + std::to_string(server_->port())), std::string::npos)
      << status.message();
  EXPECT_EQ(second, nullptr);
  EXPECT_EQ(HealthOf(channel_, ""), "NOT_SERVING") << "the first server answers";
}

}  // namespace
}  // namespace adrank

namespace adrank {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// The names of this process's threads (/proc/self/task/*/comm, proc(5)).
std::vector<std::string> ThreadNames() {
  std::vector<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    if (std::getline(comm, name)) names.push_back(name);
  }
  return names;
}

int Count(const std::vector<std::string>& names, const std::string& prefix) {
  int count = 0;
  for (const std::string& name : names) count += name.rfind(prefix, 0) == 0 ? 1 : 0;
  return count;
}

// The thread names once `count` of them start with `prefix`, or after 5 s. A thread gRPC starts from one of the
// server's threads bears that thread's name until it names itself.
std::vector<std::string> ThreadNamesOnce(const std::string& prefix, int count) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  std::vector<std::string> names = ThreadNames();
  while (Count(names, prefix) != count && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(10));
    names = ThreadNames();
  }
  return names;
}

std::string Joined(const std::vector<std::string>& names) {
  std::string joined;
  for (const std::string& name : names) joined += name + " ";
  return joined;
}

// server_queues.h: every service on the completion queues, so that gRPC starts no thread that polls beside them.
// The clients here are sync or completion-queue ones: a callback client would start gRPC's callback threads in
// this process itself.
TEST_F(RankServerTest, EveryServiceIsServedOnTheServersOwnThreadsAndGrpcStartsNoCallbackOrSyncThread) {
  const int fixtures = AllowedCores();  // the fixture's server's: one per core
  EXPECT_EQ(Count(ThreadNamesOnce("adrank-grpc-", fixtures), "adrank-grpc-"), fixtures);
  RankServerOptions options;
  options.port = 0;
  options.grpc_threads = 3;
  std::unique_ptr<RankServer> server;
  ASSERT_TRUE(RankServer::Create(options, registry_, &server).ok());
  server->SetServing(true);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server->port()), grpc::InsecureChannelCredentials());
  {  // Rank
    grpc::ClientContext context;
    v1::RankResponse response;
    ASSERT_TRUE(v1::Ranking::NewStub(channel)->Rank(&context, Request(2, 0), &response).ok());
    EXPECT_EQ(Scores(response.results(0)), (std::vector<float>{1.5f, 5.5f}));
  }
  auto kserve = inference::GRPCInferenceService::NewStub(channel);
  {  // KServe v2: a typed method and ModelInfer (raw)
    grpc::ClientContext context;
    inference::ServerLiveResponse live;
    ASSERT_TRUE(kserve->ServerLive(&context, inference::ServerLiveRequest(), &live).ok());
    EXPECT_TRUE(live.live());
    grpc::ClientContext infer_context;
    inference::ModelInferRequest infer;
    infer.set_model_name("nope");
    inference::ModelInferResponse inferred;
    EXPECT_EQ(kserve->ModelInfer(&infer_context, infer, &inferred).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {  // Health
    grpc::ClientContext context;
    HealthCheckResponse health;
    ASSERT_TRUE(Health::NewStub(channel)->Check(&context, HealthCheckRequest(), &health).ok());
    EXPECT_EQ(health.status(), HealthCheckResponse::SERVING);
  }
  {  // Reflection (the generic service)
    grpc::ClientContext context;
    auto stream = grpc::reflection::v1::ServerReflection::NewStub(channel)->ServerReflectionInfo(&context);
    grpc::reflection::v1::ServerReflectionRequest request;
    request.set_list_services("");
    ASSERT_TRUE(stream->Write(request));
    grpc::reflection::v1::ServerReflectionResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.list_services_response().service_size(), 5);
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
  const std::vector<std::string> names = ThreadNamesOnce("adrank-grpc-", fixtures + 3);
  EXPECT_EQ(Count(names, "adrank-grpc-"), fixtures + 3) << Joined(names);
  for (const char* grpc_thread : {"nexting_thread", "grpcpp_sync_ser", "callback"}) {
    EXPECT_EQ(Count(names, grpc_thread), 0) << grpc_thread << " among " << Joined(names);
  }
  server->Shutdown(Duration::zero());
  const std::vector<std::string> after = ThreadNamesOnce("adrank-grpc-", fixtures);
  EXPECT_EQ(Count(after, "adrank-grpc-"), fixtures) << "the queues' threads exit with their server: " << Joined(after);
}

TEST_F(RankServerTest, AMethodTheServerDoesNotServeIsUnimplementedNamingIt) {
  grpc::CompletionQueue cq;
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  const grpc::Slice empty("", 0);
  const grpc::ByteBuffer request(&empty, 1);
  auto call = stub.PrepareUnaryCall(&context, "/nope.Service/Method", request, &cq);
  call->StartCall();
  grpc::ByteBuffer reply;
  grpc::Status status;
  call->Finish(&reply, &status, &cq);
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_NE(status.error_message().find("/nope.Service/Method"), std::string::npos) << status.error_message();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(RankServerTest, HealthWatchSendsTheStatusThenEachChangeAndEndsWhenTheServerShutsDown) {
  HealthCheckRequest request;
  request.set_service("sum");
  grpc::ClientContext context;
  auto watch = Health::NewStub(channel_)->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  server_->SetServiceServing("sum", true);  // loading: known, not shown
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  server_->SetServing(true);
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  server_->StartDraining();
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  // The stream does not hold the shutdown for its grace.
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown(std::chrono::seconds(20));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_FALSE(watch->Read(&response));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(RankServerTest, ACallTheClientCancelsWhileQueuedIsNeverComputed) {
  server_->SetServing(true);
  CloseGate();
  v1::RankResponse blocker_response;
  std::thread blocker([&] { EXPECT_TRUE(Rank(Request(1, 0), &blocker_response).ok()); });
  WaitEntered(1);
  grpc::ClientContext context;
  grpc::CompletionQueue cq;
  v1::RankResponse response;
  grpc::Status status;
  auto call = stub_->AsyncRank(&context, Request(2, 0), &cq);
  call->Finish(&response, &status, &cq);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (server_->admission()->in_flight() < 2 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_EQ(server_->admission()->in_flight(), 2) << "the call is queued behind the blocker";
  context.TryCancel();
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The server learns it from gRPC's done notification and cancels the queued part: its answer comes at once.
  while (server_->admission()->in_flight() > 1 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_EQ(server_->admission()->in_flight(), 1) << "the cancelled call is still in the model's queue";
  OpenGate();
  blocker.join();
  EXPECT_TRUE(server_->WaitDrained(milliseconds(0), std::chrono::seconds(10)));
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(rows_computed_, 1) << "the cancelled call's rows ran";
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// Calls that ride one batch are answered by its worker (grpc_call.h); one alone through its queue's thread.
TEST_F(RankServerTest, CallsThatShareABatchAreAnsweredEachWithItsScores) {
  server_->SetServing(true);
  CloseGate();
  v1::RankResponse blocker_response;
  std::thread blocker([&] { EXPECT_TRUE(Rank(Request(1, 0), &blocker_response).ok()); });
  WaitEntered(1);
  std::vector<v1::RankResponse> responses(4);
  std::vector<std::thread> callers;
  for (int i = 0; i < 4; ++i) {
    callers.emplace_back([&, i] { EXPECT_TRUE(Rank(Request(i + 2, static_cast<float>(i)), &responses[i]).ok()); });
  }
  // All four in the model's queue (2 + 3 + 4 + 5 rows) behind the held batch: they leave it as one.
  std::shared_ptr<const ServedModel> sum;
  ASSERT_TRUE(registry_->Resolve("sum", 1, &sum).ok());
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (sum->queue->stats().queued_rows < 14 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_EQ(sum->queue->stats().queued_rows, 14);
  OpenGate();
  blocker.join();
  for (auto& caller : callers) caller.join();
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(responses[i].results_size(), 1);
    const std::vector<float> scores = Scores(responses[i].results(0));
    ASSERT_EQ(scores.size(), static_cast<size_t>(i + 2));
    EXPECT_EQ(scores[0], 2.0f * static_cast<float>(i) + 1.0f + 0.5f);
    EXPECT_GE(responses[i].results(0).timing().batch_rows(), i + 2);
  }
  EXPECT_EQ(responses[0].results(0).timing().batch_rows(), 14) << "the queued calls shared a batch";
}

// Shutdown with a call whose answer the core has yet to give: the answer still comes back through its queue, which
// outlives it, and Shutdown returns once it is gone.
TEST_F(RankServerTest, ShutdownWaitsForACallInTheModelAndCancelsWhatIsQueued) {
  server_->SetServing(true);
  CloseGate();
  std::promise<grpc::Status> running, queued;
  std::thread first([&] {
    v1::RankResponse response;
    running.set_value(Rank(Request(1, 0), &response));
  });
  WaitEntered(1);
  std::thread second([&] {
    v1::RankResponse response;
    queued.set_value(Rank(Request(2, 0), &response));
  });
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (server_->admission()->in_flight() < 2 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  std::thread opener([&] {
    std::this_thread::sleep_for(milliseconds(200));
    OpenGate();
  });
  server_->Shutdown(milliseconds(50));  // both cancelled at 50 ms; the running batch ends at ~200 ms
  EXPECT_EQ(server_->admission()->in_flight(), 0);
  opener.join();
  first.join();
  second.join();
  EXPECT_FALSE(running.get_future().get().ok());
  EXPECT_FALSE(queued.get_future().get().ok());
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(rows_computed_, 1) << "the queued call was computed";
}

TEST_F(RankServerTest, GrpcThreadsOutOfRangeAreRefusedNamingThem) {
  RankServerOptions options;
  options.port = 0;
  options.grpc_threads = -1;
  std::unique_ptr<RankServer> server;
  const Status status = RankServer::Create(options, registry_, &server);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("grpc_threads"), std::string::npos) << status.message();
}

}  // namespace
}  // namespace adrank
