// ServerError: a call the Rank contract (rank_call.h) answered INTERNAL — the server's own fault (a backend
// that raised, an output that is not what the model declares, a reply that cannot be serialized), never the
// caller's — reported so that the server's log names what an operator needs to find the call: the model, the
// version, the tenant and the request id.
//
// Only INTERNAL is reported. A caller's mistake or a refusal (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED,
// DEADLINE_EXCEEDED, CANCELLED...) is the caller's answer and a metric, not a log line: it is not the server's
// to fix, and a client's bad traffic must not flood the server's log.
//
// One sink per process, set at the server's start (the Python binding: `set_server_error_log`, which writes
// the `adrank.calls` log records); with none set (the C++ tests, a process that only publishes) reports are
// dropped. The sink runs on the thread that answered the call (a worker) and should be quick: it is called on
// the error path only, never for a call answered OK.
//
// Thread-safety: SetServerErrorSink and ReportServerError from any thread; a report uses the sink set before
// it or the one after, whole.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace adrank {

struct ServerError {
  std::string model;
  int64_t version = 0;     // the version that failed the call; 0 where none did (the reply failed)
  std::string tenant;      // "" for the default tenant
  std::string request_id;  // the request's own id; "" if it gave none
  std::string message;     // the status message the caller got
};

using ServerErrorSink = std::function<void(const ServerError&)>;

// Replaces the process's sink; an empty one drops reports.
void SetServerErrorSink(ServerErrorSink sink);

// Hands `error` to the sink, if one is set.
void ReportServerError(const ServerError& error);

}  // namespace adrank
