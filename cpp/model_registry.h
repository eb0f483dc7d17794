// ModelRegistry: the model versions a front end routes requests to, and each model's rollout — its
// stable version, an optional canary taking a share of the traffic, and an optional shadow that sees a
// mirror of it.
//
// The Python side loads a version (backend sessions, warm-up, parity check) and then registers it here
// as a ServedModel: the core queue that batches it, what a front end needs to check and convert a wire
// request without Python (each input's name, dtype, row shape and role, whether NaN and inf are refused,
// and for a text input the width of the UTF-8 byte row it rides the core in), and its VersionStats.
//
// Routing a request (Route): a pinned version gets exactly that version and no shadow. Otherwise the
// request's routing key (its routing_key, else its request id) picks: RoutingBucket(key) in [0, 10000)
// below the canary's basis points goes to the canary, the rest to stable — so a key always sees the
// same version while the split stands, and P % of keys see the canary. An empty key draws a bucket from
// a counter (no stickiness without a key). The shadow mirrors the requests whose bucket, salted
// differently, falls below its basis points. Routing changes (SetRollout) apply to the next request;
// requests already routed finish on the version they got.
//
// A shadow version's queue is marked background (thread_pool.h): its batches run on the pool's own
// background worker at the lowest CPU priority, never on a serving worker (requests pinned to that
// version too, while it is the shadow).
//
// The largest request (MaxRequestBytes): what a front end refuses unparsed. A wire request naming every
// served model, each at its max_candidates rows, is the largest any client can usefully send; a larger
// message is refused by its declared size before any byte of it is parsed.
//
// Requests for a model it does not serve (unknown_model_requests): a call naming a model the registry has
// no version of is answered NOT_FOUND before any version sees it, so no version's stats count it. Route
// counts each such request (Rank on both front ends, and KServe inference, which routes through Rank);
// KServe inference resolves its model before routing and counts a miss there with CountUnknownModel.
// Resolve alone (metadata, statistics) counts nothing: those calls are not requests to score.
//
// Resolution takes a snapshot of the table (an immutable map behind a shared_ptr, replaced whole on
// every change), so a request never sees a half-updated table and changes never wait for requests. A
// routed ServedModel stays valid for as long as the caller holds it, even if removed meanwhile; Remove
// hands back a weak reference that expires once the last request holding the version is done.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "clock.h"
#include "status.h"
#include "tensor.h"
#include "thread_pool.h"
#include "version_stats.h"

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

// Signals once a removed version is no longer held by any request: the ServedModel's last owner
// releases it. Waiters block on a condition variable, never poll.
class ReleaseLatch {
 public:
  void Release();
  bool WaitFor(Duration timeout);  // true once released; false if the timeout passed first
  bool released() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

// A ServedModel's member: releases its latch when the model is destroyed. A copy of a model is another
// model, with a latch of its own: it never releases the original's.
class ReleaseOnDestroy {
 public:
  ReleaseOnDestroy() : latch_(std::make_shared<ReleaseLatch>()) {}
  ~ReleaseOnDestroy() { latch_->Release(); }
  ReleaseOnDestroy(const ReleaseOnDestroy&) : ReleaseOnDestroy() {}
  ReleaseOnDestroy& operator=(const ReleaseOnDestroy&) { return *this; }
  const std::shared_ptr<ReleaseLatch>& latch() const { return latch_; }

 private:
  std::shared_ptr<ReleaseLatch> latch_;
};

struct ServedModel {
  std::string name;
  int64_t version = 0;
  std::shared_ptr<ModelQueue> queue;
  std::vector<ServedInput> inputs;
  std::string score_output;             // the float32 output returned per candidate
  int64_t max_candidates = 0;           // N above it: INVALID_ARGUMENT
  int lowest_priority = 0;              // the priority class mirrored (shadow) requests ride in
  std::string platform;                 // what runs it, as v2's model metadata names it ("onnxruntime_onnx")
  std::shared_ptr<VersionStats> stats;  // never null once registered
  ReleaseOnDestroy release;             // what VersionRelease waits on
};

// A removed version (ModelRegistry::Remove): Wait returns once no request holds it any more. A version that
// was not registered is released from the start.
class VersionRelease {
 public:
  VersionRelease() = default;
  explicit VersionRelease(const ServedModel& model) : latch_(model.release.latch()) {}
  bool Wait(Duration timeout) const { return latch_ == nullptr || latch_->WaitFor(timeout); }
  bool released() const { return latch_ == nullptr || latch_->released(); }

 private:
  std::shared_ptr<ReleaseLatch> latch_;
};

// Room for what a request carries besides its tensors' bytes: ids, the routing key, model and tensor
// names, shapes and protobuf framing. Generous: real ones take well under 1 KiB.
inline constexpr int64_t kRequestEnvelopeBytes = 64 << 10;
// A text input's string on the wire may be longer than the row it rides the core in (it is cut): a
// query of this many bytes is far beyond any a model reads whole.
inline constexpr int64_t kMaxTextWireBytes = 64 << 10;

// The largest wire request this version takes whole: max_candidates rows of each candidate input, one
// row of each context input, a text of kMaxTextWireBytes, and kRequestEnvelopeBytes.
int64_t MaxRequestBytes(const ServedModel& model);

// A model's rollout. Versions are 0 when absent; basis points are of 10000 routing buckets.
struct RolloutRoute {
  int64_t stable = 0;
  int64_t canary = 0;
  int canary_basis_points = 0;
  int64_t shadow = 0;
  int shadow_basis_points = 10000;
};

struct Routed {
  std::shared_ptr<const ServedModel> model;   // answers the request
  std::shared_ptr<const ServedModel> shadow;  // mirrors it, or null
};

// The routing bucket of a key, in [0, 10000): FNV-1a 64 then a SplitMix64 finaliser, so that keys
// differing in one character land far apart. Both front ends route through Route (rank_call.h).
int RoutingBucket(std::string_view key, uint64_t salt = 0);
inline constexpr uint64_t kShadowSalt = 0x5348414457ull;  // "SHADW": shadow sampling independent of canary

class ModelRegistry {
 public:
  // Registers a version; with `serving`, it becomes the stable version, with no canary or shadow.
  // A version already registered is replaced. Its stats are created when the model carries none.
  void Add(std::shared_ptr<ServedModel> model, bool serving);
  // Forgets a version; a rollout that names it loses that role (a stable version leaves the model
  // without one: unpinned requests get NOT_FOUND until SetRollout). The release is signalled once no
  // request holds the version any more.
  VersionRelease Remove(const std::string& name, int64_t version);
  // Every version the route names must be registered (NOT_FOUND otherwise); INVALID_ARGUMENT for a
  // route without stable, basis points outside [0, 10000], or a canary or shadow equal to stable.
  Status SetRollout(const std::string& name, const RolloutRoute& route);
  Status SetServing(const std::string& name, int64_t version);  // stable = version, nothing else
  RolloutRoute rollout(const std::string& name) const;

  // version > 0: that version (pinned). 0: the rollout picks by `key`. NOT_FOUND names the model or the
  // version; a model it does not serve is counted (unknown_model_requests).
  Status Route(const std::string& name, int64_t version, std::string_view key, Routed* out) const;
  // Route without a key or shadow: the stable version, or the pinned one.
  Status Resolve(const std::string& name, int64_t version, std::shared_ptr<const ServedModel>* out) const;
  // The versions registered for `name`, ascending (empty for a model it does not know), and every model's
  // name: what a protocol's metadata and repository index list.
  std::vector<int64_t> Versions(const std::string& name) const;
  std::vector<std::string> Models() const;
  // Requests that named a model the registry does not serve, since it was made (see above).
  uint64_t unknown_model_requests() const { return unknown_model_requests_.load(std::memory_order_relaxed); }
  // Counts one such request for a protocol that found the model unknown through Resolve.
  void CountUnknownModel() const { unknown_model_requests_.fetch_add(1, std::memory_order_relaxed); }
  // The sum over served models of their largest version's MaxRequestBytes (a request may name every
  // model); 0 with none registered. Kept up to date as versions come and go: a read costs one load.
  int64_t max_request_bytes() const { return max_request_bytes_.load(std::memory_order_acquire); }

  // Implementation details follow. API users need not read.
 private:
  struct Entry {
    RolloutRoute route;
    std::map<int64_t, std::shared_ptr<const ServedModel>> versions;
  };
  using Table = std::map<std::string, Entry>;

  std::shared_ptr<const Table> Snapshot() const;
  static void MarkBackground(const Entry& entry);
  void Replace(std::shared_ptr<const Table> table);  // with mu_ held
  static Status FindModel(const Table& table, const std::string& name, const Entry** out);
  static Status FindVersion(const std::string& name, const Entry& entry, int64_t version, bool pinned,
                            std::shared_ptr<const ServedModel>* out);

  mutable std::mutex mu_;
  std::shared_ptr<const Table> table_ = std::make_shared<Table>();
  mutable std::atomic<uint64_t> unkeyed_{0};
  mutable std::atomic<uint64_t> unknown_model_requests_{0};
  std::atomic<int64_t> max_request_bytes_{0};
};

}  // namespace adrank
