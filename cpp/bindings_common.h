// What the binding's files share (bindings*.cc, one concept each): the error that becomes
// adrank._core.CoreError, Python's timeouts and durations checked before any arithmetic on them, and
// the entry points each file binds. Binding only: the logic lives in the plain C++ the tests use.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <utility>

#include "batch.h"
#include "clock.h"
#include "status.h"
#include "tensor.h"

namespace adrank {

// Carries a non-OK Status to the exception translator, which raises adrank._core.CoreError.
struct StatusError : std::exception {
  explicit StatusError(Status s) : status(std::move(s)) {}
  const char* what() const noexcept override { return status.message().c_str(); }
  Status status;
};

// Whether the interpreter is going away: a core thread must then not take the GIL (it would hang or crash).
inline bool PythonFinalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

inline void ThrowIfError(const Status& status) {
  if (!status.ok()) throw StatusError(status);
}

// Beyond a year a timeout means "none": no caller means a longer one, and capping it keeps deadline
// and wait arithmetic in nanoseconds far from overflow (~292 years). +inf and 1e300, common ways of
// saying "never", land here too.
inline constexpr double kMaxTimeoutS = 365.0 * 24 * 3600;

// A caller's timeout_s, checked before any arithmetic on it: converting NaN, inf or an out-of-range
// double to a Duration is undefined behaviour.
struct Timeout {
  enum Kind { kNone, kPassed, kAfter } kind = kNone;
  Duration after{0};  // for kAfter
};

inline Timeout ParseTimeout(std::optional<double> timeout_s) {
  if (!timeout_s) return {};
  const double seconds = *timeout_s;
  if (std::isnan(seconds)) {
    throw StatusError(InvalidArgument("timeout_s is NaN: pass a number of seconds, or None for no timeout"));
  }
  if (seconds <= 0) return {Timeout::kPassed};  // -0.0 and -inf included
  if (seconds > kMaxTimeoutS) return {};        // +inf included
  return {Timeout::kAfter, std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds))};
}

// The deadline a timeout sets on the core's clock: kNoDeadline for none, now for one already passed (the
// core then refuses with DEADLINE_EXCEEDED).
inline TimePoint DeadlineOf(const Timeout& timeout) {
  if (timeout.kind == Timeout::kNone) return kNoDeadline;
  const TimePoint now = SteadyClock::Get()->Now();
  return timeout.kind == Timeout::kPassed ? now : now + timeout.after;
}

inline Duration Seconds(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) throw StatusError(InvalidArgument("seconds must be finite and >= 0"));
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
}

inline double ToSeconds(Duration d) { return std::chrono::duration<double>(d).count(); }

template <typename Counts>
pybind11::array_t<uint64_t> CountsArray(const Counts& counts) {
  return pybind11::array_t<uint64_t>(static_cast<pybind11::ssize_t>(counts.size()), counts.data());
}

// numpy's dtypes and the core's (bindings.cc): a non-native byte order or a type the core lacks is none.
std::optional<DType> DTypeOf(const pybind11::dtype& dt);
pybind11::dtype NumpyDType(DType dtype);
DType ParseDTypeOrThrow(const std::string& name);

// bindings_backend.cc: a Python callable as the core's Backend, and the Batch it is handed.
Backend MakeBackend(pybind11::object fn);
void BindBackend(pybind11::module_& m);
// bindings_registry.cc: the registry, its versions and their stats.
void BindRegistry(pybind11::module_& m);
// bindings_cuda.cc: the CUDA runtime found at run time.
void BindCuda(pybind11::module_& m);
// bindings_context_cache.cc: the context-tower cache (cpp/context_cache.h).
void BindContextCache(pybind11::module_& m);
// bindings_rank.cc: the Rank contract (RankAdmission, start_rank) and, when built, the C++ front end.
void BindRank(pybind11::module_& m);
// bindings_server_errors.cc: where the calls answered INTERNAL are reported (server_errors.h).
void BindServerErrors(pybind11::module_& m);

}  // namespace adrank
