#include "exec_time_predictor.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>

namespace adrank {
namespace {

using std::chrono::microseconds;

double PredictMicros(const ExecTimePredictor& predictor, int64_t rows) {
  return static_cast<double>(predictor.Predict(rows).count()) / 1000.0;
}

TEST(ExecTimePredictorTest, PredictsZeroBeforeAnySample) {
  // Nothing is shed on a guess.
  ExecTimePredictor predictor;
  EXPECT_FALSE(predictor.has_samples());
  EXPECT_EQ(predictor.Predict(1).count(), 0);
  EXPECT_EQ(predictor.Predict(1024).count(), 0);
}

TEST(ExecTimePredictorTest, FitsFixedPlusPerRowFromTwoSizes) {
  ExecTimePredictor predictor;
  for (int i = 0; i < 10; ++i) {
    predictor.Record(100, microseconds(150));
    predictor.Record(500, microseconds(350));
  }
  ASSERT_TRUE(predictor.has_samples());
  // 100 us fixed + 0.5 us per row.
  EXPECT_NEAR(PredictMicros(predictor, 300), 250.0, 2.5);
  EXPECT_NEAR(PredictMicros(predictor, 100), 150.0, 1.5);
  EXPECT_NEAR(PredictMicros(predictor, 1000), 600.0, 6.0);
  EXPECT_NEAR(PredictMicros(predictor, 1), 100.5, 1.0);
}

TEST(ExecTimePredictorTest, OneSampleOfEachSizeIsEnough) {
  ExecTimePredictor predictor;
  predictor.Record(100, microseconds(150));
  predictor.Record(500, microseconds(350));
  EXPECT_NEAR(PredictMicros(predictor, 300), 250.0, 2.5);
}

TEST(ExecTimePredictorTest, SingleSizeScalesProportionally) {
  ExecTimePredictor predictor;
  predictor.Record(200, microseconds(400));
  EXPECT_NEAR(PredictMicros(predictor, 200), 400.0, 1.0);
  EXPECT_NEAR(PredictMicros(predictor, 100), 200.0, 1.0);
  EXPECT_NEAR(PredictMicros(predictor, 600), 1200.0, 1.0);
  for (int i = 0; i < 5; ++i) predictor.Record(200, microseconds(400));
  EXPECT_NEAR(PredictMicros(predictor, 50), 100.0, 1.0);
}

TEST(ExecTimePredictorTest, NeverPredictsNegativeTime) {
  // Bigger batches measured faster (noise): the slope is clamped, not extrapolated below zero.
  ExecTimePredictor predictor;
  for (int i = 0; i < 5; ++i) {
    predictor.Record(100, microseconds(500));
    predictor.Record(1000, microseconds(100));
  }
  EXPECT_GE(predictor.Predict(1).count(), 0);
  EXPECT_GE(predictor.Predict(4000).count(), 0);
}

TEST(ExecTimePredictorTest, FollowsDrift) {
  ExecTimePredictor predictor;
  for (int i = 0; i < 50; ++i) {
    predictor.Record(100, microseconds(150));
    predictor.Record(500, microseconds(350));
  }
  ASSERT_NEAR(PredictMicros(predictor, 300), 250.0, 2.5);
  // The machine becomes twice as slow (thermal throttling, a noisy neighbour).
  double previous_error = std::abs(PredictMicros(predictor, 300) - 500.0);
  for (int i = 0; i < 60; ++i) {
    predictor.Record(100, microseconds(300));
    predictor.Record(500, microseconds(700));
    const double error = std::abs(PredictMicros(predictor, 300) - 500.0);
    EXPECT_LE(error, previous_error + 1e-3) << "after " << i + 1 << " pairs the prediction moved away";
    previous_error = error;
  }
  EXPECT_NEAR(PredictMicros(predictor, 300), 500.0, 5.0);
}

TEST(ExecTimePredictorTest, DecayOfZeroKeepsOnlyTheLatestSample) {
  ExecTimePredictor predictor(0.0);
  predictor.Record(100, microseconds(1000));
  predictor.Record(100, microseconds(100));
  EXPECT_NEAR(PredictMicros(predictor, 100), 100.0, 0.5);
}

}  // namespace
}  // namespace adrank
