// ModelRegistry: the model versions the gRPC front end routes requests to, and each model's serving
// version.
//
// The Python side loads a version (backend sessions, warm-up, checks) and then registers it here as a
// ServedModel: the core queue that batches it, plus what the front end needs to check and convert a
// wire request without Python — each input's name, dtype, row shape and role, whether NaN and inf are
// refused, and for a text input the width of the UTF-8 byte row it rides the core in.
//
// Resolution takes a snapshot of the table (an immutable map behind a shared_ptr, replaced whole on
// every change), so a request never sees a half-updated table and registrations never wait for
// requests. A resolved ServedModel stays valid for as long as the caller holds it, even if the version
// is removed meanwhile.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "status.h"
#include "tensor.h"
#include "thread_pool.h"

namespace adrank {

struct ServedInput {
  std::string name;
  DType dtype = DType::kFloat32;  // for a text input: kUInt8 (its byte row)
  std::vector<int64_t> row_shape;
  Role role = Role::kCandidate;
  bool allow_nonfinite = true;
  // > 0: a text input. It travels as a STRING tensor of one element and rides the core as one row of
  // this many UTF-8 bytes, zero-padded, cut at a character boundary.
  int64_t text_bytes = 0;
};

struct ServedModel {
  std::string name;
  int64_t version = 0;
  std::shared_ptr<ModelQueue> queue;
  std::vector<ServedInput> inputs;
  std::string score_output;    // the float32 output returned per candidate
  int64_t max_candidates = 0;  // N above it: INVALID_ARGUMENT
};

class ModelRegistry {
 public:
  // Registers a version; with `serving`, it becomes the version that unpinned requests get.
  void Add(std::shared_ptr<const ServedModel> model, bool serving);
  // Forgets a version (a serving version leaves its model without one until SetServing).
  void Remove(const std::string& name, int64_t version);
  Status SetServing(const std::string& name, int64_t version);
  // version 0: the serving version. NOT_FOUND names the model or the version.
  Status Resolve(const std::string& name, int64_t version, std::shared_ptr<const ServedModel>* out) const;

  // Implementation details follow. API users need not read.
 private:
  struct Entry {
    int64_t serving = 0;
    std::map<int64_t, std::shared_ptr<const ServedModel>> versions;
  };
  using Table = std::map<std::string, Entry>;

  std::shared_ptr<const Table> Snapshot() const;

  mutable std::mutex mu_;
  std::shared_ptr<const Table> table_ = std::make_shared<Table>();
};

}  // namespace adrank
