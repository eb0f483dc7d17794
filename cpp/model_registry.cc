#include "model_registry.h"

#include <utility>

namespace adrank {

std::shared_ptr<const ModelRegistry::Table> ModelRegistry::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_;
}

void ModelRegistry::Add(std::shared_ptr<const ServedModel> model, bool serving) {
  std::lock_guard<std::mutex> lock(mu_);
  auto table = std::make_shared<Table>(*table_);
  Entry& entry = (*table)[model->name];
  if (serving) entry.serving = model->version;
  entry.versions[model->version] = std::move(model);
  table_ = std::move(table);
}

void ModelRegistry::Remove(const std::string& name, int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  auto table = std::make_shared<Table>(*table_);
  auto it = table->find(name);
  if (it == table->end()) return;
  it->second.versions.erase(version);
  if (it->second.serving == version) it->second.serving = 0;
  if (it->second.versions.empty()) table->erase(it);
  table_ = std::move(table);
}

Status ModelRegistry::SetServing(const std::string& name, int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = table_->find(name);
  if (it == table_->end() || it->second.versions.count(version) == 0) {
    return Status(StatusCode::kNotFound,
                  "model '" + name + "' has no version " + std::to_string(version) + " registered");
  }
  auto table = std::make_shared<Table>(*table_);
  (*table)[name].serving = version;
  table_ = std::move(table);
  return Status::Ok();
}

Status ModelRegistry::Resolve(const std::string& name, int64_t version, std::shared_ptr<const ServedModel>* out) const {
  const std::shared_ptr<const Table> table = Snapshot();
  auto it = table->find(name);
  if (it == table->end()) {
    std::string served;
    for (const auto& [known, entry] : *table) served += (served.empty() ? "" : ", ") + known;
    return Status(StatusCode::kNotFound,
                  "models: model '" + name + "' is not served (served: " + (served.empty() ? "none" : served) + ")");
  }
  const Entry& entry = it->second;
  auto found = entry.versions.find(version != 0 ? version : entry.serving);
  if (found == entry.versions.end()) {
    std::string loaded;
    for (const auto& [v, model] : entry.versions) loaded += (loaded.empty() ? "" : ", ") + std::to_string(v);
    return Status(StatusCode::kNotFound, "models: model '" + name + "' has no version " + std::to_string(version) +
                                             " loaded (loaded: " + loaded + ")");
  }
  *out = found->second;
  return Status::Ok();
}

}  // namespace adrank
