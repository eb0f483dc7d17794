#include "model_registry.h"

#include <algorithm>
#include <utility>

namespace adrank {
namespace {

constexpr int kBuckets = 10000;

std::string Quote(const std::string& name) { return "'" + name + "'"; }

Status NotRegistered(const std::string& name, int64_t version, const char* role) {
  return Status(StatusCode::kNotFound, std::string("rollout: ") + role + " version " + std::to_string(version) +
                                           " of model " + Quote(name) + " is not loaded");
}

}  // namespace

int RoutingBucket(std::string_view key, uint64_t salt) {
  uint64_t h = 0xcbf29ce484222325ull ^ salt;
  for (const char c : key) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  h += 0x9e3779b97f4a7c15ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  h ^= h >> 31;
  return static_cast<int>(h % kBuckets);
}

int64_t MaxRequestBytes(const ServedModel& model) {
  int64_t bytes = kRequestEnvelopeBytes;
  for (const ServedInput& input : model.inputs) {
    if (input.text_bytes > 0) {
      bytes += 4 + std::max(input.text_bytes, kMaxTextWireBytes);  // one STRING: its length, then the text
      continue;
    }
    int64_t row = static_cast<int64_t>(DTypeSize(input.dtype));
    for (int64_t dim : input.row_shape) row *= dim;
    bytes += input.role == Role::kContext ? row : row * model.max_candidates;
  }
  return bytes;
}

void ModelRegistry::Replace(std::shared_ptr<const Table> table) {
  int64_t total = 0;
  for (const auto& [name, entry] : *table) {
    int64_t largest = 0;
    for (const auto& [version, model] : entry.versions) largest = std::max(largest, MaxRequestBytes(*model));
    total += largest;
  }
  table_ = std::move(table);
  max_request_bytes_.store(total, std::memory_order_release);
}

std::shared_ptr<const ModelRegistry::Table> ModelRegistry::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_;
}

void ModelRegistry::MarkBackground(const Entry& entry) {
  for (const auto& [version, model] : entry.versions) {
    model->queue->SetBackground(entry.route.shadow == version);
  }
}

void ModelRegistry::Add(std::shared_ptr<ServedModel> model, bool serving) {
  if (!model->stats) model->stats = std::make_shared<VersionStats>(VersionStatsOptions{});
  std::lock_guard<std::mutex> lock(mu_);
  auto table = std::make_shared<Table>(*table_);
  Entry& entry = (*table)[model->name];
  if (serving) entry.route = RolloutRoute{model->version};
  entry.versions[model->version] = std::move(model);
  MarkBackground(entry);
  Replace(std::move(table));
}

void ReleaseLatch::Release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
  }
  cv_.notify_all();
}

bool ReleaseLatch::WaitFor(Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [this] { return released_; });
}

bool ReleaseLatch::released() const {
  std::lock_guard<std::mutex> lock(mu_);
  return released_;
}

VersionRelease ModelRegistry::Remove(const std::string& name, int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  auto table = std::make_shared<Table>(*table_);
  auto it = table->find(name);
  if (it == table->end()) return {};
  Entry& entry = it->second;
  auto found = entry.versions.find(version);
  if (found == entry.versions.end()) return {};
  VersionRelease removed(*found->second);
  found->second->queue->SetBackground(false);
  entry.versions.erase(found);
  if (entry.route.stable == version) entry.route.stable = 0;
  if (entry.route.canary == version) entry.route.canary = 0, entry.route.canary_basis_points = 0;
  if (entry.route.shadow == version) entry.route.shadow = 0;
  if (entry.versions.empty()) table->erase(it);
  Replace(std::move(table));
  return removed;
}

Status ModelRegistry::SetRollout(const std::string& name, const RolloutRoute& route) {
  if (route.stable < 1) return InvalidArgument("rollout: model " + Quote(name) + " needs a stable version");
  if (route.canary_basis_points < 0 || route.canary_basis_points > kBuckets || route.shadow_basis_points < 0 ||
      route.shadow_basis_points > kBuckets) {
    return InvalidArgument("rollout: basis points must be in [0, 10000]");
  }
  if (route.canary == route.stable || route.shadow == route.stable) {
    return InvalidArgument("rollout: canary and shadow of model " + Quote(name) + " must differ from stable " +
                           std::to_string(route.stable));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = table_->find(name);
  if (it == table_->end()) return Status(StatusCode::kNotFound, "rollout: model " + Quote(name) + " is not loaded");
  const auto& versions = it->second.versions;
  if (versions.count(route.stable) == 0) return NotRegistered(name, route.stable, "stable");
  if (route.canary != 0 && versions.count(route.canary) == 0) return NotRegistered(name, route.canary, "canary");
  if (route.shadow != 0 && versions.count(route.shadow) == 0) return NotRegistered(name, route.shadow, "shadow");
  auto table = std::make_shared<Table>(*table_);
  Entry& entry = (*table)[name];
  entry.route = route;
  MarkBackground(entry);
  table_ = std::move(table);
  return Status::Ok();
}

Status ModelRegistry::SetServing(const std::string& name, int64_t version) {
  RolloutRoute route;
  route.stable = version;
  return SetRollout(name, route);
}

RolloutRoute ModelRegistry::rollout(const std::string& name) const {
  const std::shared_ptr<const Table> table = Snapshot();
  auto it = table->find(name);
  return it == table->end() ? RolloutRoute{} : it->second.route;
}

Status ModelRegistry::Route(const std::string& name, int64_t version, std::string_view key, Routed* out) const {
  const std::shared_ptr<const Table> table = Snapshot();
  const Entry* entry = nullptr;
  Status status = FindModel(*table, name, &entry);
  if (!status.ok()) {
    CountUnknownModel();
    return status;
  }
  out->shadow.reset();
  if (version != 0) return FindVersion(name, *entry, version, true, &out->model);
  const RolloutRoute& route = entry->route;
  std::string counter;
  if (key.empty()) {
    counter = std::to_string(unkeyed_.fetch_add(1, std::memory_order_relaxed));
    key = counter;
  }
  const bool canary = route.canary != 0 && RoutingBucket(key) < route.canary_basis_points;
  if (route.shadow != 0 && RoutingBucket(key, kShadowSalt) < route.shadow_basis_points) {
    auto shadow = entry->versions.find(route.shadow);
    if (shadow != entry->versions.end()) out->shadow = shadow->second;
  }
  return FindVersion(name, *entry, canary ? route.canary : route.stable, false, &out->model);
}

Status ModelRegistry::Resolve(const std::string& name, int64_t version, std::shared_ptr<const ServedModel>* out) const {
  const std::shared_ptr<const Table> table = Snapshot();
  const Entry* entry = nullptr;
  Status status = FindModel(*table, name, &entry);
  if (!status.ok()) return status;
  return FindVersion(name, *entry, version != 0 ? version : entry->route.stable, version != 0, out);
}

std::vector<int64_t> ModelRegistry::Versions(const std::string& name) const {
  const std::shared_ptr<const Table> table = Snapshot();
  std::vector<int64_t> versions;
  auto it = table->find(name);
  if (it == table->end()) return versions;
  for (const auto& [version, model] : it->second.versions) versions.push_back(version);
  return versions;
}

std::vector<std::string> ModelRegistry::Models() const {
  const std::shared_ptr<const Table> table = Snapshot();
  std::vector<std::string> names;
  for (const auto& [name, entry] : *table) names.push_back(name);
  return names;
}

Status ModelRegistry::FindModel(const Table& table, const std::string& name, const Entry** out) {
  auto it = table.find(name);
  if (it != table.end()) {
    *out = &it->second;
    return Status::Ok();
  }
  std::string served;
  for (const auto& [known, entry] : table) served += (served.empty() ? "" : ", ") + known;
  return Status(StatusCode::kNotFound,
                "models: model " + Quote(name) + " is not served (served: " + (served.empty() ? "none" : served) + ")");
}

Status ModelRegistry::FindVersion(const std::string& name, const Entry& entry, int64_t version, bool pinned,
                                  std::shared_ptr<const ServedModel>* out) {
  auto found = entry.versions.find(version);
  if (found != entry.versions.end()) {
    *out = found->second;
    return Status::Ok();
  }
  std::string loaded;
  for (const auto& [v, model] : entry.versions) loaded += (loaded.empty() ? "" : ", ") + std::to_string(v);
  const std::string which = pinned ? "no version " + std::to_string(version) : "no serving version";
  return Status(StatusCode::kNotFound,
                "models: model " + Quote(name) + " has " + which + " loaded (loaded: " + loaded + ")");
}

}  // namespace adrank
