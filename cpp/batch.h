// Batch: rows of one or more requests that run through the backend together, and the two copies
// around that run: the gather (request rows -> contiguous pooled input buffers) and the scatter
// (pooled output buffers -> each request's own outputs).
//
// Layout the backend sees (BatchIO):
//   - candidate inputs: [rows, ...row_shape], rows of the batch's slices in order;
//   - context inputs, by the model's ContextLayout:
//       kBroadcast  — [rows, ...]: each request's single context row repeated for every one of its
//                     rows, so a plain model that takes every input per row runs unchanged;
//       kPerRequest — [num_requests, ...]: one row per slice, plus `row_request_index` (int64,
//                     [rows]) saying which of those rows each candidate row belongs to, so that a
//                     model can run its context tower once per request and gather its output;
//   - outputs: [rows, ...row_shape], to be written by the backend;
//   - with padding (BatcherOptions::pad_to_preferred), rows >= real_rows: the padding rows repeat the
//     last real row, so that they are valid model input, and their outputs are discarded.
//
// Thread-safety: a Batch is owned by one worker at a time; it is not shared.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "memory_pool.h"
#include "request.h"
#include "status.h"
#include "tensor.h"

namespace adrank {

enum class ContextLayout : int { kBroadcast = 0, kPerRequest = 1 };

// A contiguous range of one request's rows.
struct BatchSlice {
  RequestHandle request;
  int64_t row_begin = 0;
  int64_t rows = 0;
};

struct BatchTensor {
  const TensorSpec* spec = nullptr;
  std::vector<int64_t> shape;
  void* data = nullptr;
  size_t byte_size = 0;
};

// What a backend gets: views over pooled buffers, valid only for the duration of the call.
struct BatchIO {
  std::vector<BatchTensor> inputs;             // in signature order
  std::vector<BatchTensor> outputs;            // in signature order, to be filled
  const int64_t* row_request_index = nullptr;  // kPerRequest layout only: [rows]
  int64_t rows = 0;                            // rows the backend runs (padded)
  int64_t real_rows = 0;                       // rows that belong to requests
  int64_t num_requests = 0;                    // slices in the batch
  ContextLayout context_layout = ContextLayout::kBroadcast;
  int instance = 0;  // which of the model's instances runs it
};

// A backend's output handed over in a host array of its own (a Python backend returns its outputs):
// copied into the batch's output buffer once it is that output's dtype and size. INTERNAL naming the
// output otherwise: the backend's fault, never the caller's.
Status CopyIntoOutput(BatchTensor& out, DType dtype, const void* data, size_t bytes);

// Runs the model on a batch: reads io.inputs, writes io.outputs. Must be safe to call concurrently
// for different instances. A non-OK status fails every request in the batch with it.
using Backend = std::function<Status(BatchIO& io)>;

class Batch {
 public:
  std::vector<BatchSlice> slices;
  int64_t rows = 0;         // real rows
  int64_t padded_rows = 0;  // rows the backend runs, >= rows
  TimePoint formed_at{};
  TimePoint started_at{};  // when the worker began the gather: the end of the rows' queue time

  // Leases buffers from `pool` and copies the slices' rows into them.
  Status Gather(const ModelSignature& signature, ContextLayout layout, MemoryPool* pool);
  BatchIO& io() { return io_; }
  // Copies the output rows back to each slice's request.
  void Scatter();
  // Accounts every slice as done with `status`, firing the completions this finishes.
  // `compute` is the batch's execution time, reported to each request.
  void Finish(const Status& status, Duration compute, TimePoint now);

 private:
  Status Lease(MemoryPool* pool, size_t bytes, void** data);
  void GatherCandidate(size_t input, const TensorSpec& spec, uint8_t* dst) const;
  void GatherContext(size_t input, const TensorSpec& spec, ContextLayout layout, uint8_t* dst) const;
  void PadRows(size_t row_bytes, uint8_t* base) const;

  std::vector<MemoryPool::Lease> leases_;
  BatchIO io_;
};

}  // namespace adrank
