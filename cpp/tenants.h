// Tenants: who is calling, what each caller is allowed, and what each one got.
//
// A tenant is a caller identity taken from the request (the `x-adrank-tenant` gRPC metadata; absent:
// "default"). It is identification, not authentication: it exists so that one caller's burst cannot
// take another caller's share of a model, and so that an operator can see who sent what. Every model's
// batcher (batcher.h) keeps a queue per tenant and shares its batches between the tenants with queued
// work in proportion to their weights; the limits below bound what one tenant may hold of a model.
//
// TenantPolicy (defaults and why; the defaults also apply to every tenant the options do not name):
//   weight = 1                 Share of a saturated model's rows relative to the other tenants with
//                              queued work: two tenants of weight 1 and 3 get 1/4 and 3/4 of the rows
//                              while both have work queued; an idle tenant's share goes to the others.
//   max_queued_rows = 0        Rows one tenant may have queued (not yet in a batch) in one model; 0: no
//                              cap of its own. Either way, once the model's queue is full (its
//                              max_queue_rows, batcher.h) only a tenant holding less than its weighted
//                              share of that bound is admitted, so one tenant alone cannot lock the others
//                              out. A cap of its own refuses the tenant at once even while the queue has
//                              room: refused at once, a client that keeps its requests in flight resends at
//                              once, and each resend costs the transport again (measured: perf/
//                              overload_bench.py's heavy tenant, refused at a cap of 8192 rows, resent
//                              ~1500 calls/s of 532 KB, 800 MB/s into the server's one core, and took the
//                              light tenant beside it from 100 % to 86 % OK). Queued, it waits its share.
//   max_in_flight = 1024       Requests one tenant may have accepted and not yet answered by one model
//                              (queued or running). Callers that send no tenant all share "default",
//                              which may be the whole legitimate load: at this server's capacity on one
//                              core (~4k requests/s) and its 50 ms bound on queueing (batcher.h) that is
//                              ~200 in flight. 1024 leaves room for that on more cores and still bounds
//                              a runaway client's memory; its rows meanwhile wait their share.
//   highest_priority = -1      The highest priority class (0 is the highest) the tenant may ask for.
//                              -1: none above the model's default class; a request for a class above it
//                              is refused with PERMISSION_DENIED naming the tenant. Lower classes than
//                              the default are open to every tenant: asking to go later harms no one.
//
// TenantOptions:
//   defaults                   The policy of tenants not listed.
//   tenants = {}               Per-tenant policies by name ("default" may be listed too).
//   max_tenants = 1024         Distinct tenants one model tracks (listed ones included). The name comes
//                              from the client: without a bound, a client inventing names would grow the
//                              tracking and the metrics without end. A new name beyond it is refused
//                              with RESOURCE_EXHAUSTED.
//
// Names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters (kMaxTenantNameBytes); anything else is
// INVALID_ARGUMENT naming the tenant field. They become metric labels, so they are kept printable.
//
// Thread-safety: TenantOptions is a value; TenantCounters is atomics, updated from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "status.h"

namespace adrank {

inline constexpr char kDefaultTenant[] = "default";
inline constexpr size_t kMaxTenantNameBytes = 64;

struct TenantPolicy {
  double weight = 1.0;
  int64_t max_queued_rows = 0;
  int64_t max_in_flight = 1024;
  int highest_priority = -1;
};

struct TenantOptions {
  TenantPolicy defaults;
  std::map<std::string, TenantPolicy> tenants;
  int max_tenants = 1024;

  // The policy of `name`: its own if listed, else the defaults.
  const TenantPolicy& PolicyOf(const std::string& name) const;
  Status Validate() const;
};

// OK for a valid tenant name; INVALID_ARGUMENT naming `name` otherwise. An empty name is the caller's
// "no tenant": resolve it to kDefaultTenant before checking.
Status ValidateTenantName(std::string_view name);

// One tenant's outcomes in one model, shared by the batcher and the requests it accepted (a request
// may complete after the batcher is gone).
struct TenantCounters {
  std::atomic<int64_t> in_flight{0};        // accepted, not yet completed
  std::atomic<uint64_t> submitted{0};       // accepted by Submit
  std::atomic<uint64_t> rows{0};            // candidate rows accepted
  std::atomic<uint64_t> completed_ok{0};    // answered OK
  std::atomic<uint64_t> deadline{0};        // DEADLINE_EXCEEDED: refused at Submit, shed or expired
  std::atomic<uint64_t> refused_limit{0};   // RESOURCE_EXHAUSTED at Submit (the tenant's or the queue's)
  std::atomic<uint64_t> refused_denied{0};  // PERMISSION_DENIED at Submit (priority class)
  std::atomic<uint64_t> failed{0};          // any other error after acceptance, or CANCELLED
};

}  // namespace adrank
