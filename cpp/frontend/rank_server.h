// RankServer: the gRPC front end in C++ — `adrank.v1.Ranking/Rank`, the Open Inference Protocol's
// `inference.GRPCInferenceService` (KServe v2: inference_service.h), `grpc.health.v1.Health` and server
// reflection v1 and v1alpha (reflection_service.h) on one port — so that a call is decoded, checked,
// batched and answered without Python. Only the backend's run of each batch enters Python (once per batch,
// not per request).
//
// Why in C++: on this project's reference machine a grpc.aio server costs ~370 us of CPU per unary call
// before any work (measured with a do-nothing handler), a grpc++ callback server ~65 us. With the
// server on one core that difference decides how much of the core the model gets.
//
// Why gRPC's async completion-queue API (server_queues.h), for every service on the port: with one queue per
// core, drained by one thread of the server's own that handles each event inline, gRPC's part of a call costs
// ~1 context switch instead of the callback API's ~6.5, and ~110 instead of ~205 µs of CPU
// (perf/results/echo-cq-2026-12-07-decision.md). Only while no callback or sync service is registered beside
// them: one brings gRPC's own polling threads back. So health (health_service.h) and reflection
// (reflection_service.h) are the server's own, on the same queues, and gRPC's default health service is off.
//
// A call: the Rank method is taken raw (its bytes, not a message gRPC parsed), so that the server
// decides what an unparseable request gets. RankAdmission (rank_admission.h) admits it by its declared
// size (the server's state, the largest request the models take, the bytes in flight); the contract's
// RankCall (rank_call.h) then parses it from gRPC's buffer, checks, routes, submits, mirrors, records and
// answers it, exactly as for the Python front end. This file is only the transport (grpc_call.h): the call's
// deadline and tenant from gRPC's context, a refusal answered on the queue's thread, the reply serialized into
// gRPC's buffer by the worker and handed back to the queue's thread (or written by the worker under load),
// cancellation from gRPC's done notification, the request's bytes released once gRPC is done with the call.
// Errors are the core's Status codes, which are gRPC's. No client input yields UNKNOWN, INTERNAL or
// UNIMPLEMENTED.
//
// Transport bounds, so that no client can take the server's memory or threads from the others:
//   - a message larger than the registry's max_request_bytes is refused by its size before it is parsed
//     (rank_admission.h); larger than max_message_bytes, gRPC refuses it the same way before the handler
//     sees it;
//   - at most max_concurrent_streams calls at once on one connection (HTTP/2 SETTINGS; streams beyond
//     it are refused by the transport, and grpc clients queue them on their side);
//   - at most max_in_flight_bytes of requests held by calls gRPC is not done with, across all connections
//     (rank_admission.h): a client that stops reading keeps its own calls' bytes and no more;
//   - HTTP/2 keepalive: a connection whose client does not answer a ping within keepalive_timeout is
//     closed and its calls cancelled, their memory freed. A client that opens streams and never reads
//     the socket (its window stays 0), or vanishes without a FIN, is found this way.
//
// States: loading (Rank answers UNAVAILABLE, health NOT_SERVING) until SetServing(true); serving;
// draining after StartDraining (health NOT_SERVING, new calls UNAVAILABLE, calls in flight finish).
// Health is per service: "" (the server), "adrank.v1.Ranking", and whatever else SetServiceServing names
// (the Python server names each model, SERVING while it has a version that serves, and turns "" and
// adrank.v1.Ranking NOT_SERVING while any model has none). While loading every service says NOT_SERVING;
// once serving, each says what it was last set to ("" and adrank.v1.Ranking: SERVING unless set).
// Cancellation (the client's, the deadline's, a closed connection's) cancels the call's requests not
// yet in a batch.
// The caller's tenant is its `x-adrank-tenant` metadata; the priority class is the request's, or the
// model's default when it sets none; both go to the batcher, which checks and shares by them.
//
// Options (defaults and why):
//   host = "127.0.0.1"           Loopback unless told otherwise.
//   port = 8500                  0 picks a free port (tests); port() says which.
//   max_message_bytes = 32 MiB   2048 candidates of a 384-float embedding are 3 MiB; 32 MiB leaves room
//                                for several models' inputs and refuses absurd messages unparsed.
//   max_concurrent_streams = 100 An ad server multiplexing its auctions on one channel at 100 in flight
//                                runs ~10^4 calls/s at ~10 ms each, more than one replica serves; more
//                                from one connection is a runaway client, whose excess waits on its side.
//   max_in_flight_bytes = 256 MiB  RankAdmissionOptions' (rank_admission.h says why).
//   keepalive_time = 10 s        How often an idle-looking connection is pinged: cheap (one frame), and
//   keepalive_timeout = 5 s      a client that does not answer within this is dead or not reading.
//   grpc_threads = 0             The completion queues, one thread each (adrank-grpc-N), that serve every call:
//                                0 is one per core this process may run on (its CPU affinity, as the core's
//                                num_workers = 0). More than one per core costs switches (server_queues.h).
//   yield_to_workers = true      The transport's threads (those queues', and gRPC's own) are created
//                                SCHED_BATCH (thread_priority.h): on a core shared with a model worker they
//                                wait for its batch instead of preempting it per call. Measured
//                                (perf/overload_bench.py, one core, on gRPC's callback threads): closed-loop
//                                saturation 2,616 -> 4,625-5,076 req/s, CPU per refusal 81.5 -> 44-54 µs.
//   version = ""                 The server's version, as KServe v2's ServerMetadata reports it.
//   tls = {}                     Plaintext unless its cert_file is set: TLS, or mutual TLS with a client CA,
//                                the files watched for rotation (tls_credentials.h).
//   reply_margin = 1 ms          The models get the call's deadline less this (rank_call.h): the answer still
//                                has to be serialized, written and read by the caller (~0.1 ms idle; up to a worker's
//                                slice, ~1-3 ms, while the transport yields to a busy worker), and an answer
//                                that arrives after the deadline is as lost as a refusal, only dearer. A call
//                                with less than this left is refused at once (DEADLINE_EXCEEDED).
//
// Thread-safety: every method may be called from any thread. Calls are served on the queues' threads and
// completed on the core's workers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "clock.h"
#include "inference_service.h"
#include "model_registry.h"
#include "rank_admission.h"
#include "status.h"
#include "tls_credentials.h"
#include "version_stats.h"

namespace grpc {
class Server;
}

namespace adrank {

struct RankServerOptions {
  std::string host = "127.0.0.1";
  int port = 8500;
  int max_message_bytes = 32 << 20;
  int max_concurrent_streams = 100;
  int grpc_threads = 0;  // 0: one per core this process may run on
  int64_t max_in_flight_bytes = int64_t{256} << 20;
  Duration keepalive_time = std::chrono::seconds(10);
  Duration keepalive_timeout = std::chrono::seconds(5);
  bool yield_to_workers = true;
  Duration reply_margin = std::chrono::milliseconds(1);
  std::string version;  // the server's, as KServe v2's ServerMetadata reports it
  TlsFiles tls;
};

class RankService;
class InferenceService;
class HealthService;
class ReflectionService;
class ServerQueues;

class RankServer {
 public:
  // Binds, starts serving calls (in the loading state) and returns; UNAVAILABLE if it cannot listen (a port
  // another process holds included: the port is never shared, SO_REUSEPORT is off), INVALID_ARGUMENT for an
  // option out of range (naming it).
  static Status Create(const RankServerOptions& options, std::shared_ptr<ModelRegistry> registry,
                       std::unique_ptr<RankServer>* out);
  ~RankServer();  // Shutdown(0)

  int port() const { return port_; }
  ModelRegistry& registry() { return *registry_; }

  // Rank accepting, and every service's health as last set (SetServiceServing); or every service
  // NOT_SERVING and Rank UNAVAILABLE ("loading").
  void SetServing(bool serving);
  // One service's health: shown at once while serving, kept for SetServing(true) while loading, ignored
  // once draining. Only the named service changes (never the others, whatever grpc's "" means).
  void SetServiceServing(const std::string& service, bool serving);
  // Health NOT_SERVING for every service, for good; new calls get UNAVAILABLE ("draining"); calls in
  // flight go on.
  void StartDraining();
  // Blocks until no call is in flight (its work done: see in_flight) and none has arrived for `quiet`,
  // or `grace` has passed; true if it drained. A call that reaches gRPC just as the server stops would be cancelled
  // unseen, so the port closes only after callers have gone quiet.
  bool WaitDrained(Duration quiet, Duration grace);
  // Stops listening; calls still running, or whose replies their clients have not taken, get `grace`,
  // then are cancelled (health Watch streams end at once: health_service.h); returns once every call is gone
  // and the queues' threads have exited. Idempotent.
  void Shutdown(Duration grace);

  // Which calls it takes, and its counters (rank_admission.h): calls in flight (received and not yet
  // answered; one answered whose reply its client has not taken waits on the client, not the server),
  // request bytes held by calls gRPC is not done with (what max_in_flight_bytes bounds), bytes released
  // so far (a memory trimmer's cue: python/adrank/server/memory_release.py), and Rank calls answered by
  // status code, those refused before any model ran included.
  const std::shared_ptr<RankAdmission>& admission() const { return admission_; }

  // Who answers KServe v2's repository extension (inference_service.h); none: UNIMPLEMENTED.
  void SetRepositoryHandler(RepositoryHandler handler);

  // Implementation details follow. API users need not read.
 private:
  RankServer(std::shared_ptr<ModelRegistry> registry, const RankServerOptions& options);
  bool Ready();  // the server's health ("") says SERVING

  std::shared_ptr<ModelRegistry> registry_;
  std::shared_ptr<RankAdmission> admission_;
  // In this order: the queues outlive the services, which outlive the server (destroyed first).
  std::unique_ptr<ServerQueues> queues_;
  std::unique_ptr<RankService> service_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<HealthService> health_service_;
  std::unique_ptr<ReflectionService> reflection_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  // Orders the health updates of concurrent callers; guards what follows.
  std::mutex health_mu_;
  std::map<std::string, bool> health_;  // each service's status once serving
  bool health_shown_ = false;           // serving: health_ is what the health service says
  std::mutex shutdown_mu_;
  bool shut_down_ = false;
};

}  // namespace adrank
