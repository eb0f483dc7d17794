// adrank._core's registry bindings: the versions a front end routes to (ModelRegistry, ServedModel,
// ServedInput, RolloutRoute, VersionRelease), each version's VersionStats, and the routing bucket
// (cpp/model_registry.h, cpp/version_stats.h). Binding only.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings_common.h"
#include "model_registry.h"
#include "version_stats.h"

namespace py = pybind11;

namespace adrank {
namespace {

// ---- the model registry: versions, rollout routing, version stats ---------------------------------

py::dict SnapshotDict(const VersionStats& stats) {
  const VersionStatsSnapshot snapshot = stats.Snapshot();
  py::dict out;
  out["ok"] = snapshot.ok;
  out["failed"] = snapshot.failed;
  out["dropped"] = snapshot.dropped;
  out["shadow_shed"] = snapshot.shadow_shed;
  out["codes"] = CountsArray(snapshot.codes);
  out["candidates"] = snapshot.candidates;
  out["request_counts"] = CountsArray(snapshot.request_counts);
  out["queue_counts"] = CountsArray(snapshot.queue_counts);
  out["compute_counts"] = CountsArray(snapshot.compute_counts);
  out["latency_counts"] = CountsArray(snapshot.latency_counts);
  out["request_us_sum"] = snapshot.request_us_sum;
  out["queue_us_sum"] = snapshot.queue_us_sum;
  out["compute_us_sum"] = snapshot.compute_us_sum;
  out["score_counts"] = CountsArray(snapshot.score_counts);
  return out;
}

}  // namespace

void BindRegistry(py::module_& m) {
  py::class_<ServedInput>(m, "ServedInput")
      .def(py::init([](std::string name, const std::string& dtype, std::vector<int64_t> row_shape, Role role,
                       bool allow_nonfinite, int64_t text_bytes) {
             const std::optional<DType> parsed = ParseDType(dtype);
             if (!parsed) throw StatusError(InvalidArgument("ServedInput '" + name + "': unknown dtype " + dtype));
             return ServedInput{std::move(name), *parsed, std::move(row_shape), role, allow_nonfinite, text_bytes};
           }),
           py::arg("name"), py::arg("dtype"), py::arg("row_shape") = std::vector<int64_t>{},
           py::arg("role") = Role::kCandidate, py::arg("allow_nonfinite") = true, py::arg("text_bytes") = 0)
      .def_readonly("name", &ServedInput::name)
      .def_readonly("text_bytes", &ServedInput::text_bytes);

  py::class_<VersionStats, std::shared_ptr<VersionStats>>(m, "VersionStats")
      .def(py::init([](double score_low, double score_high, int score_bins) {
             std::shared_ptr<VersionStats> stats;
             ThrowIfError(VersionStats::Create(VersionStatsOptions{score_low, score_high, score_bins}, &stats));
             return stats;
           }),
           py::arg("score_low") = 0.0, py::arg("score_high") = 1.0, py::arg("score_bins") = 1000)
      .def_property("enabled", &VersionStats::enabled, &VersionStats::set_enabled)
      .def_property("record_scores", &VersionStats::record_scores, &VersionStats::set_record_scores)
      .def("snapshot", &SnapshotDict)
      .def_property_readonly("score_low", [](const VersionStats& s) { return s.options().score_low; })
      .def_property_readonly("score_high", [](const VersionStats& s) { return s.options().score_high; })
      .def_property_readonly("score_bins", [](const VersionStats& s) { return s.options().score_bins; })
      .def_property_readonly_static("latency_bounds_us",
                                    [](const py::object&) { return VersionStats::LatencyBucketBounds(); });

  py::class_<ServedModel, std::shared_ptr<ServedModel>>(m, "ServedModel")
      .def_readonly("name", &ServedModel::name)
      .def_readonly("version", &ServedModel::version)
      .def_readonly("model", &ServedModel::queue)
      .def_readonly("lowest_priority", &ServedModel::lowest_priority)
      .def_readonly("platform", &ServedModel::platform)
      .def_readonly("stats", &ServedModel::stats);

  py::class_<RolloutRoute>(m, "RolloutRoute")
      .def(py::init(
               [](int64_t stable, int64_t canary, int canary_basis_points, int64_t shadow, int shadow_basis_points) {
                 return RolloutRoute{stable, canary, canary_basis_points, shadow, shadow_basis_points};
               }),
           py::arg("stable"), py::arg("canary") = 0, py::arg("canary_basis_points") = 0, py::arg("shadow") = 0,
           py::arg("shadow_basis_points") = 10000)
      .def_readonly("stable", &RolloutRoute::stable)
      .def_readonly("canary", &RolloutRoute::canary)
      .def_readonly("canary_basis_points", &RolloutRoute::canary_basis_points)
      .def_readonly("shadow", &RolloutRoute::shadow)
      .def_readonly("shadow_basis_points", &RolloutRoute::shadow_basis_points);

  py::class_<VersionRelease>(m, "VersionRelease")
      .def(
          "wait",
          [](const VersionRelease& release, double timeout_s) {
            const Duration timeout = Seconds(timeout_s);
            py::gil_scoped_release unlocked;  // the requests holding it may need the GIL to finish
            return release.Wait(timeout);
          },
          py::arg("timeout_s"))
      .def_property_readonly("released", &VersionRelease::released);

  py::class_<ModelRegistry, std::shared_ptr<ModelRegistry>>(m, "ModelRegistry")
      .def(py::init<>())
      .def(
          "add",
          [](ModelRegistry& r, const std::shared_ptr<ModelQueue>& queue, const std::string& name, int64_t version,
             std::vector<ServedInput> inputs, const std::string& score_output, int64_t max_candidates,
             int lowest_priority, std::shared_ptr<VersionStats> stats, bool serving, const std::string& platform) {
            if (!queue) throw StatusError(InvalidArgument("add: model is None"));
            if (version < 1) throw StatusError(InvalidArgument("add: version must be >= 1"));
            if (max_candidates < 1) throw StatusError(InvalidArgument("add: max_candidates must be >= 1"));
            if (!stats) throw StatusError(InvalidArgument("add: stats is None"));
            auto model = std::make_shared<ServedModel>();
            model->name = name;
            model->version = version;
            model->queue = queue;
            model->inputs = std::move(inputs);
            model->score_output = score_output;
            model->max_candidates = max_candidates;
            model->lowest_priority = lowest_priority;
            model->stats = std::move(stats);
            model->platform = platform;
            r.Add(std::move(model), serving);
          },
          py::arg("model"), py::arg("name"), py::arg("version"), py::arg("inputs"), py::arg("score_output"),
          py::arg("max_candidates"), py::arg("lowest_priority"), py::arg("stats"), py::arg("serving") = false,
          py::arg("platform") = "")
      .def(
          "remove", [](ModelRegistry& r, const std::string& name, int64_t version) { return r.Remove(name, version); },
          py::arg("name"), py::arg("version"))
      .def(
          "set_rollout",
          [](ModelRegistry& r, const std::string& name, const RolloutRoute& route) {
            ThrowIfError(r.SetRollout(name, route));
          },
          py::arg("name"), py::arg("route"))
      .def("rollout", &ModelRegistry::rollout, py::arg("name"))
      .def("versions", &ModelRegistry::Versions, py::arg("name"))
      .def("models", &ModelRegistry::Models)
      .def(
          "route",
          [](const ModelRegistry& r, const std::string& name, int64_t version, const std::string& key) {
            Routed routed;
            ThrowIfError(r.Route(name, version, key, &routed));
            return py::make_tuple(std::const_pointer_cast<ServedModel>(routed.model),
                                  std::const_pointer_cast<ServedModel>(routed.shadow));
          },
          py::arg("name"), py::arg("version") = 0, py::arg("key") = "")
      .def_property_readonly("max_request_bytes", &ModelRegistry::max_request_bytes,
                             "The largest request the served models take together (cpp/model_registry.h).")
      .def_property_readonly("unknown_model_requests", &ModelRegistry::unknown_model_requests,
                             "Requests that named a model it does not serve (cpp/model_registry.h).");

  m.def("routing_bucket", &RoutingBucket, py::arg("key"), py::arg("salt") = 0,
        "The routing bucket of a key, in [0, 10000) (cpp/model_registry.h).");
  m.attr("SHADOW_SALT") = kShadowSalt;
}

}  // namespace adrank
