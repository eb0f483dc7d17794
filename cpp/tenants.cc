#include "tenants.h"

#include <cmath>

namespace adrank {
namespace {

bool IsNameChar(char c, bool first) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
  return !first && (c == '_' || c == '.' || c == '-');
}

Status ValidatePolicy(const std::string& who, const TenantPolicy& p) {
  if (!(p.weight > 0) || !std::isfinite(p.weight)) return InvalidArgument(who + ": weight must be a positive number");
  if (p.max_queued_rows < 0) return InvalidArgument(who + ": max_queued_rows must be >= 0 (0: no cap of its own)");
  if (p.max_in_flight < 1) return InvalidArgument(who + ": max_in_flight must be >= 1");
  if (p.highest_priority < -1) return InvalidArgument(who + ": highest_priority must be >= 0 (or -1: the default)");
  return Status::Ok();
}

}  // namespace

Status ValidateTenantName(std::string_view name) {
  bool ok = !name.empty() && name.size() <= kMaxTenantNameBytes;
  for (size_t i = 0; ok && i < name.size(); ++i) ok = IsNameChar(name[i], i == 0);
  if (ok) return Status::Ok();
  // The name is the client's: show a bounded, printable prefix of it only.
  std::string shown;
  for (size_t i = 0; i < name.size() && i < kMaxTenantNameBytes; ++i) {
    const char c = name[i];
    shown += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return InvalidArgument("tenant (x-adrank-tenant) '" + shown + "'" + (name.size() > kMaxTenantNameBytes ? "..." : "") +
                         " is not a tenant name: 1 to " + std::to_string(kMaxTenantNameBytes) +
                         " characters of [A-Za-z0-9_.-], starting with a letter or digit");
}

const TenantPolicy& TenantOptions::PolicyOf(const std::string& name) const {
  auto it = tenants.find(name);
  return it == tenants.end() ? defaults : it->second;
}

Status TenantOptions::Validate() const {
  Status status = ValidatePolicy("tenant defaults", defaults);
  if (!status.ok()) return status;
  if (max_tenants < 1) return InvalidArgument("max_tenants must be >= 1");
  if (tenants.size() > static_cast<size_t>(max_tenants)) {
    return InvalidArgument(std::to_string(tenants.size()) + " tenants configured, more than max_tenants (" +
                           std::to_string(max_tenants) + ")");
  }
  for (const auto& [name, policy] : tenants) {
    status = ValidateTenantName(name);
    if (!status.ok()) return status;
    status = ValidatePolicy("tenant '" + name + "'", policy);
    if (!status.ok()) return status;
  }
  return Status::Ok();
}

}  // namespace adrank
