#include "infer_statistics.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer_request.h"
#include "thread_pool.h"
#include "version_stats.h"

namespace adrank {
namespace {

constexpr double kNanosPerMicro = 1000.0;

void SetDuration(uint64_t count, double us, inference::StatisticDuration* duration) {
  duration->set_count(count);
  duration->set_ns(static_cast<uint64_t>(us * kNanosPerMicro));
}

void Describe(const ServedModel& model, inference::ModelStatistics* out) {
  const VersionStatsSnapshot stats = model.stats->Snapshot();
  uint64_t not_ok = 0;
  for (size_t code = 1; code < stats.codes.size(); ++code) not_ok += stats.codes[code];
  out->set_name(model.name);
  out->set_version(std::to_string(model.version));
  out->set_inference_count(stats.candidates);
  out->set_execution_count(model.queue ? model.queue->stats().batches : 0);
  inference::InferStatistics* inference = out->mutable_inference_stats();
  SetDuration(stats.ok, stats.request_us_sum, inference->mutable_success());
  SetDuration(not_ok, 0, inference->mutable_fail());
  SetDuration(stats.ok, stats.queue_us_sum, inference->mutable_queue());
  SetDuration(stats.ok, 0, inference->mutable_compute_input());
  SetDuration(stats.ok, stats.compute_us_sum, inference->mutable_compute_infer());
  SetDuration(stats.ok, 0, inference->mutable_compute_output());
}

// Every registered version of one model; NOT_FOUND (the registry's message) for a model it does not serve.
Status DescribeModel(const ModelRegistry& registry, const std::string& name,
                     inference::ModelStatisticsResponse* response) {
  const std::vector<int64_t> versions = registry.Versions(name);
  if (versions.empty()) {
    std::shared_ptr<const ServedModel> model;
    const Status status = registry.Resolve(name, 0, &model);
    return status.ok() ? Status(StatusCode::kNotFound, "model_name: model '" + name + "' has no version") : status;
  }
  for (const int64_t version : versions) {
    std::shared_ptr<const ServedModel> model;
    // A version removed since Versions() was read is skipped: it has nothing more to report.
    if (registry.Resolve(name, version, &model).ok()) Describe(*model, response->add_model_stats());
  }
  return Status::Ok();
}

}  // namespace

Status ModelStatistics(const ModelRegistry& registry, const inference::ModelStatisticsRequest& request,
                       inference::ModelStatisticsResponse* response) {
  if (request.name().empty()) {
    if (!request.version().empty()) return InvalidArgument("version: '" + request.version() + "' without a model name");
    for (const std::string& name : registry.Models()) {
      const Status status = DescribeModel(registry, name, response);
      if (!status.ok() && status.code() != StatusCode::kNotFound) return status;  // one gone since: skipped
    }
    return Status::Ok();
  }
  int64_t version = 0;
  Status status = ParseInferVersion(request.version(), &version);
  if (!status.ok()) return status;
  if (version == 0) return DescribeModel(registry, request.name(), response);
  std::shared_ptr<const ServedModel> model;
  status = registry.Resolve(request.name(), version, &model);
  if (!status.ok()) return status;
  Describe(*model, response->add_model_stats());
  return Status::Ok();
}

}  // namespace adrank
