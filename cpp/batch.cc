#include "batch.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace adrank {
namespace {

// Fills `count` copies of the `row_bytes` bytes at `dst` (already written once) by doubling, so a
// context row broadcast to 1000 candidates costs ~10 memcpy calls, not 1000.
void RepeatRow(uint8_t* dst, size_t row_bytes, int64_t count) {
  const size_t total = row_bytes * static_cast<size_t>(count);
  size_t filled = row_bytes;
  while (filled < total) {
    const size_t chunk = std::min(filled, total - filled);
    std::memcpy(dst + filled, dst, chunk);
    filled += chunk;
  }
}

std::vector<int64_t> BatchShape(int64_t rows, const TensorSpec& spec) {
  std::vector<int64_t> shape{rows};
  shape.insert(shape.end(), spec.row_shape.begin(), spec.row_shape.end());
  return shape;
}

}  // namespace

Status CopyIntoOutput(BatchTensor& out, DType dtype, const void* data, size_t bytes) {
  if (bytes != out.byte_size || dtype != out.spec->dtype) {
    return Internal("backend output '" + out.spec->name + "' has dtype " + DTypeName(dtype) + " and " +
                    std::to_string(bytes) + " bytes, expected " + DTypeName(out.spec->dtype) + " and " +
                    std::to_string(out.byte_size));
  }
  std::memcpy(out.data, data, bytes);
  return Status::Ok();
}

Status Batch::Lease(MemoryPool* pool, size_t bytes, void** data) {
  MemoryPool::Lease lease;
  Status status = pool->Acquire(bytes, &lease);
  if (!status.ok()) return status;
  *data = lease.data();
  leases_.push_back(std::move(lease));
  return Status::Ok();
}

void Batch::GatherCandidate(size_t input, const TensorSpec& spec, uint8_t* dst) const {
  const size_t row_bytes = spec.RowBytes();
  for (const BatchSlice& slice : slices) {
    const TensorView& view = slice.request->input(input);
    const auto* src = static_cast<const uint8_t*>(view.data) + static_cast<size_t>(slice.row_begin) * row_bytes;
    const size_t bytes = static_cast<size_t>(slice.rows) * row_bytes;
    std::memcpy(dst, src, bytes);
    dst += bytes;
  }
}

void Batch::GatherContext(size_t input, const TensorSpec& spec, ContextLayout layout, uint8_t* dst) const {
  const size_t row_bytes = spec.RowBytes();
  for (const BatchSlice& slice : slices) {
    std::memcpy(dst, slice.request->input(input).data, row_bytes);
    if (layout == ContextLayout::kPerRequest) {
      dst += row_bytes;
    } else {
      RepeatRow(dst, row_bytes, slice.rows);
      dst += row_bytes * static_cast<size_t>(slice.rows);
    }
  }
}

void Batch::PadRows(size_t row_bytes, uint8_t* base) const {
  if (padded_rows <= rows) return;
  // Padding repeats the last real row: valid model input whose outputs are discarded.
  RepeatRow(base + static_cast<size_t>(rows - 1) * row_bytes, row_bytes, padded_rows - rows + 1);
}

Status Batch::Gather(const ModelSignature& signature, ContextLayout layout, MemoryPool* pool) {
  if (padded_rows < rows) padded_rows = rows;
  io_ = BatchIO();
  io_.rows = padded_rows;
  io_.real_rows = rows;
  io_.num_requests = static_cast<int64_t>(slices.size());
  io_.context_layout = layout;
  leases_.reserve(signature.inputs.size() + signature.outputs.size() + 1);

  for (size_t i = 0; i < signature.inputs.size(); ++i) {
    const TensorSpec& spec = signature.inputs[i];
    const bool per_request = spec.role == Role::kContext && layout == ContextLayout::kPerRequest;
    const int64_t tensor_rows = per_request ? io_.num_requests : padded_rows;
    BatchTensor tensor{&spec, BatchShape(tensor_rows, spec), nullptr,
                       static_cast<size_t>(tensor_rows) * spec.RowBytes()};
    Status status = Lease(pool, tensor.byte_size, &tensor.data);
    if (!status.ok()) return status;
    auto* dst = static_cast<uint8_t*>(tensor.data);
    if (spec.role == Role::kCandidate) {
      GatherCandidate(i, spec, dst);
    } else {
      GatherContext(i, spec, layout, dst);
    }
    if (!per_request) PadRows(spec.RowBytes(), dst);
    io_.inputs.push_back(std::move(tensor));
  }

  if (layout == ContextLayout::kPerRequest) {
    void* data = nullptr;
    Status status = Lease(pool, static_cast<size_t>(padded_rows) * sizeof(int64_t), &data);
    if (!status.ok()) return status;
    auto* index = static_cast<int64_t*>(data);
    int64_t row = 0;
    for (int64_t r = 0; r < io_.num_requests; ++r) {
      for (int64_t k = 0; k < slices[static_cast<size_t>(r)].rows; ++k) index[row++] = r;
    }
    while (row < padded_rows) index[row++] = io_.num_requests - 1;
    io_.row_request_index = index;
  }

  for (const TensorSpec& spec : signature.outputs) {
    BatchTensor tensor{&spec, BatchShape(padded_rows, spec), nullptr,
                       static_cast<size_t>(padded_rows) * spec.RowBytes()};
    Status status = Lease(pool, tensor.byte_size, &tensor.data);
    if (!status.ok()) return status;
    io_.outputs.push_back(std::move(tensor));
  }
  return Status::Ok();
}

void Batch::Scatter() {
  for (size_t o = 0; o < io_.outputs.size(); ++o) {
    const size_t row_bytes = io_.outputs[o].spec->RowBytes();
    const auto* src = static_cast<const uint8_t*>(io_.outputs[o].data);
    for (const BatchSlice& slice : slices) {
      uint8_t* dst = slice.request->outputs()[o].data.data() + static_cast<size_t>(slice.row_begin) * row_bytes;
      const size_t bytes = static_cast<size_t>(slice.rows) * row_bytes;
      std::memcpy(dst, src, bytes);
      src += bytes;
    }
  }
}

void Batch::Finish(const Status& status, Duration compute, TimePoint now) {
  // Return the buffers before waking callers: the next batch can reuse them at once.
  leases_.clear();
  io_ = BatchIO();
  RequestTiming timing;
  timing.compute_us = ToMicros(compute);
  timing.batch_rows = rows;
  timing.batches = 1;
  timing.batch_requests = static_cast<int32_t>(slices.size());
  for (BatchSlice& slice : slices) {
    timing.queue_us = ToMicros(started_at - slice.request->enqueue_time());
    slice.request->FinishRows(slice.rows, status, timing, now);
  }
  slices.clear();
}

}  // namespace adrank
