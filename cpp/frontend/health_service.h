// HealthService: the gRPC health checking protocol (`grpc.health.v1.Health`, Check and Watch) on the C++ front
// end's completion queues (server_queues.h), in place of grpc++'s default health service, which is a callback
// service: one callback service in the server brings gRPC's own polling threads back, and with them most of a
// call's context switches (perf/results/echo-cq-2026-12-07-decision.md).
//
// What it answers — grpc++ 1.51's default service's semantics, which the front end had before:
//   - a service is known once set (SetServingStatus); none is known at first (RankServer sets "" and its own);
//   - Check: the named service's status, SERVING or NOT_SERVING; NOT_FOUND for a service never set;
//   - Watch: the status now (SERVICE_UNKNOWN for a service never set), then the status each time it changes
//     (a change that is undone before the stream could send it is not sent), until the caller goes away, or
//     EndWatches (the server shutting down: the stream ends UNAVAILABLE, so that no watcher holds the shutdown
//     for its grace);
//   - Shutdown: every service NOT_SERVING, for good; a later SetServingStatus makes its service known,
//     NOT_SERVING.
//
// A Watch stream is fed by its queue's thread: a status change set from any thread wakes it through the stream's
// own grpc::Alarm (set, expired, under the service's lock; at most one pending), and the queue's thread writes
// the new status once the previous write is done. Ownership of the calls: server_queues.h.
//
// Lifetime: outlives the server's calls (RankServer's Shutdown waits for them). Thread-safety: SetServingStatus,
// Shutdown and EndWatches from any thread; Arm once, after the server has started.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"
#include "server_queues.h"

namespace adrank {

class HealthWatch;

class HealthService final : public grpc::health::v1::Health::AsyncService {
 public:
  explicit HealthService(ServerQueues* queues);
  ~HealthService() override;

  void SetServingStatus(const std::string& service, bool serving);
  void Shutdown();
  void EndWatches();

  // One Check and one Watch call waiting on each queue. After the server has started.
  void Arm();

  // Implementation details follow. API users need not read.
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;
  // `service`'s status now: SERVICE_UNKNOWN for a service never set.
  ServingStatus StatusOf(const std::string& service);

 private:
  friend class HealthWatch;
  struct Sites;
  ServingStatus StatusLocked(const std::string& service) const;

  ServerQueues* const queues_;
  std::mutex mu_;  // guards what follows; held while a watch's alarm is set (HealthWatch::ChangedLocked)
  std::map<std::string, bool> serving_;  // the known services
  bool shut_down_ = false;
  bool ending_ = false;  // EndWatches: no watch goes on
  std::set<HealthWatch*> watches_;
  std::unique_ptr<Sites> sites_;
};

}  // namespace adrank
