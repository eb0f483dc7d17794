#include "exec_time_predictor.h"

#include <algorithm>

namespace adrank {

void ExecTimePredictor::Record(int64_t rows, Duration elapsed) {
  const double x = static_cast<double>(rows);
  const double y = static_cast<double>(elapsed.count());
  weight_ = weight_ * decay_ + 1.0;
  sum_x_ = sum_x_ * decay_ + x;
  sum_y_ = sum_y_ * decay_ + y;
  sum_xx_ = sum_xx_ * decay_ + x * x;
  sum_xy_ = sum_xy_ * decay_ + x * y;
}

Duration ExecTimePredictor::Predict(int64_t rows) const {
  if (weight_ <= 0) return Duration(0);
  const double x = static_cast<double>(rows);
  const double mean_x = sum_x_ / weight_;
  const double mean_y = sum_y_ / weight_;
  const double var_x = sum_xx_ / weight_ - mean_x * mean_x;
  double y;
  // Below one row of spread the slope is noise: scale the mean instead.
  if (var_x < 1.0) {
    y = mean_x > 0 ? mean_y * x / mean_x : mean_y;
  } else {
    const double slope = std::max(0.0, (sum_xy_ / weight_ - mean_x * mean_y) / var_x);
    const double fixed = std::max(0.0, mean_y - slope * mean_x);
    y = fixed + slope * x;
  }
  return Duration(static_cast<int64_t>(std::max(0.0, y)));
}

}  // namespace adrank
