// ExecTimePredictor: predicts how long a batch of R rows takes to execute, from the batches the
// model actually ran, so that the batcher can close a batch early for a deadline and shed a request
// whose deadline its batch cannot meet.
//
// Model: time = fixed + per_row * R, fitted by least squares over exponentially decayed samples
// (each new sample weighs `1 - decay` of the total), so it follows drift (thermal, noisy neighbours)
// within tens of batches. With samples of one size only it scales the mean time by R / mean rows.
// Before the first sample it predicts 0: nothing is shed on a guess.
//
// Thread-safety: none; the batcher calls it under its own mutex.
#pragma once

#include <cstdint>

#include "clock.h"

namespace adrank {

class ExecTimePredictor {
 public:
  explicit ExecTimePredictor(double decay = 0.95) : decay_(decay) {}

  void Record(int64_t rows, Duration elapsed);
  Duration Predict(int64_t rows) const;
  bool has_samples() const { return weight_ > 0; }

 private:
  double decay_;
  double weight_ = 0, sum_x_ = 0, sum_y_ = 0, sum_xx_ = 0, sum_xy_ = 0;
};

}  // namespace adrank
