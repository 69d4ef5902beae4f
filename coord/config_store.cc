// coord/: the configuration record's checks and text form, and the
// in-process store (hyperloop/coord.h).
#include <charconv>
#include <map>
#include <mutex>
#include <set>

#include "hyperloop/coord.h"

namespace hyperloop::coord {

std::string_view replica_state_name(ReplicaState s) {
  switch (s) {
    case ReplicaState::kServing: return "serving";
    case ReplicaState::kSyncing: return "syncing";
    case ReplicaState::kOffline: return "offline";
  }
  return "unknown";
}

namespace {

constexpr std::string_view kMagic = "hyperloop-tenant-config 1";

bool printable_name(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameBytes) return false;
  for (char c : s)
    if (c <= ' ' || c > '~') return false;
  return true;
}

Status malformed(std::string what) { return invalid_argument("malformed tenant config: " + std::move(what)); }

// Splits off the next '\n'-terminated line; false if there is none.
bool next_line(std::string_view& rest, std::string_view* line) {
  const size_t nl = rest.find('\n');
  if (nl == std::string_view::npos) return false;
  *line = rest.substr(0, nl);
  rest.remove_prefix(nl + 1);
  return true;
}

// "KEY VALUE" with exactly one space; the value non-empty.
bool split_field(std::string_view line, std::string_view key, std::string_view* value) {
  if (line.size() <= key.size() + 1 || line.substr(0, key.size()) != key || line[key.size()] != ' ') return false;
  *value = line.substr(key.size() + 1);
  return true;
}

}  // namespace

Status check_config(const TenantConfig& c) {
  if (c.epoch == 0) return invalid_argument("tenant config: epoch must be positive");
  if (c.chain.size() > kMaxChainEntries)
    return invalid_argument("tenant config: more than " + std::to_string(kMaxChainEntries) + " replicas");
  if (!c.owner.empty() && !printable_name(c.owner))
    return invalid_argument("tenant config: the owner must be 1 to 255 printable ASCII bytes without spaces");
  if (c.owner == "-") return invalid_argument("tenant config: '-' is not an owner (it writes 'none')");
  std::set<std::string_view> seen;
  for (const auto& r : c.chain) {
    if (!printable_name(r.endpoint))
      return invalid_argument("tenant config: a replica endpoint must be 1 to 255 printable ASCII bytes without spaces");
    if (r.state != ReplicaState::kServing && r.state != ReplicaState::kSyncing && r.state != ReplicaState::kOffline)
      return invalid_argument("tenant config: unknown replica state");
    if (!seen.insert(r.endpoint).second) return invalid_argument("tenant config: replica " + r.endpoint + " twice");
  }
  return Status::ok();
}

Status check_progress_name(std::string_view name) {
  if (!printable_name(name) || name.find('/') != std::string_view::npos || name == "." || name == "..")
    return invalid_argument("progress marker: a name must be 1 to 255 printable ASCII bytes without spaces or '/', "
                            "and not '.' or '..'");
  return Status::ok();
}

Result<std::string> encode_config(const TenantConfig& c) {
  HL_RETURN_IF_ERROR(check_config(c));
  std::string out(kMagic);
  out += "\nepoch " + std::to_string(c.epoch) + "\nowner " + (c.owner.empty() ? "-" : c.owner) + "\n";
  for (const auto& r : c.chain) out += "replica " + r.endpoint + " " + std::string(replica_state_name(r.state)) + "\n";
  return out;
}

Result<TenantConfig> decode_config(std::string_view text) {
  if (text.size() > kMaxRecordBytes) return malformed("longer than " + std::to_string(kMaxRecordBytes) + " bytes");
  std::string_view rest = text, line, v;
  if (!next_line(rest, &line) || line != kMagic) return malformed("no '" + std::string(kMagic) + "' line first");
  TenantConfig c;
  if (!next_line(rest, &line) || !split_field(line, "epoch", &v)) return malformed("no epoch line");
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), c.epoch);
  if (ec != std::errc() || end != v.data() + v.size() || v[0] == '0' || v[0] == '+')
    return malformed("the epoch is not a positive decimal number");
  if (!next_line(rest, &line) || !split_field(line, "owner", &v)) return malformed("no owner line");
  if (v != "-") {
    if (!printable_name(v)) return malformed("the owner is not a printable name");
    c.owner = std::string(v);
  }
  while (!rest.empty()) {
    if (!next_line(rest, &line)) return malformed("the last line has no end");
    if (!split_field(line, "replica", &v)) return malformed("a line that is not 'replica ENDPOINT STATE'");
    const size_t sp = v.find(' ');
    if (sp == std::string_view::npos) return malformed("a replica without a state");
    ReplicaEntry r;
    r.endpoint = std::string(v.substr(0, sp));
    const std::string_view state = v.substr(sp + 1);
    if (state == "serving")
      r.state = ReplicaState::kServing;
    else if (state == "syncing")
      r.state = ReplicaState::kSyncing;
    else if (state == "offline")
      r.state = ReplicaState::kOffline;
    else
      return malformed("a replica state that is not serving, syncing or offline");
    if (c.chain.size() == kMaxChainEntries) return malformed("more than " + std::to_string(kMaxChainEntries) + " replicas");
    c.chain.push_back(std::move(r));
  }
  if (Status s = check_config(c); !s.is_ok()) return malformed(s.message());
  return c;
}

namespace {

class InMemoryStore final : public ConfigStore {
 public:
  Result<Versioned> read(uint32_t tenant) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = records_.find(tenant);
    if (it == records_.end()) return not_found("tenant " + std::to_string(tenant) + " has no config record");
    return it->second;
  }
  Result<int64_t> create(uint32_t tenant, const TenantConfig& first) override {
    HL_RETURN_IF_ERROR(check_config(first));
    std::lock_guard<std::mutex> l(mu_);
    if (records_.count(tenant))
      return Status(StatusCode::kAlreadyExists, "tenant " + std::to_string(tenant) + " already has a config record");
    records_[tenant] = Versioned{first, 0};
    return int64_t{0};
  }
  Result<int64_t> compare_and_set(uint32_t tenant, const Versioned& seen, const TenantConfig& next) override {
    HL_RETURN_IF_ERROR(check_config(next));
    if (next.epoch <= seen.config.epoch)
      return invalid_argument("tenant config: the epoch must grow (" + std::to_string(seen.config.epoch) + " -> " +
                              std::to_string(next.epoch) + ")");
    std::lock_guard<std::mutex> l(mu_);
    auto it = records_.find(tenant);
    if (it == records_.end()) return not_found("tenant " + std::to_string(tenant) + " has no config record");
    if (it->second.version != seen.version)
      return Status(StatusCode::kAborted, "tenant " + std::to_string(tenant) + "'s config changed (version " +
                                              std::to_string(it->second.version) + ", not " +
                                              std::to_string(seen.version) + ")");
    it->second = Versioned{next, seen.version + 1};
    return it->second.version;
  }
  std::string describe() const override { return "in-memory"; }
  Status claim_owner(uint32_t tenant, const std::string& owner) override {
    if (owner.empty() || owner.size() > kMaxNameBytes) return invalid_argument("claim_owner: bad owner name");
    std::lock_guard<std::mutex> l(mu_);
    owners_[tenant] = owner;
    return Status::ok();
  }
  Result<std::string> live_owner(uint32_t tenant) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = owners_.find(tenant);
    return it == owners_.end() ? std::string() : it->second;
  }
  Status publish_progress(uint32_t tenant, const std::string& name, uint64_t value) override {
    HL_RETURN_IF_ERROR(check_progress_name(name));
    std::lock_guard<std::mutex> l(mu_);
    auto [it, fresh] = progress_[tenant].try_emplace(name, value);
    if (!fresh && it->second < value) it->second = value;  // never back
    return Status::ok();
  }
  Result<std::vector<std::pair<std::string, uint64_t>>> progress(uint32_t tenant) override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<std::pair<std::string, uint64_t>> out;
    auto it = progress_.find(tenant);
    if (it != progress_.end()) out.assign(it->second.begin(), it->second.end());
    return out;
  }
  Status remove_progress(uint32_t tenant, const std::string& name) override {
    HL_RETURN_IF_ERROR(check_progress_name(name));
    std::lock_guard<std::mutex> l(mu_);
    auto it = progress_.find(tenant);
    if (it == progress_.end()) return Status::ok();
    it->second.erase(name);
    if (it->second.empty()) progress_.erase(it);
    return Status::ok();
  }

 private:
  std::mutex mu_;
  std::map<uint32_t, Versioned> records_;
  std::map<uint32_t, std::string> owners_;
  std::map<uint32_t, std::map<std::string, uint64_t>> progress_;  // names sorted: progress() lists them in order
};

}  // namespace

std::unique_ptr<ConfigStore> in_memory_config_store() { return std::make_unique<InMemoryStore>(); }

#ifndef HYPERLOOP_HAVE_ZOOKEEPER
Result<std::unique_ptr<ConfigStore>> zookeeper_config_store(const ZooKeeperOptions&) {
  return not_supported("this build has no ZooKeeper client (install libzookeeper-mt-dev and reconfigure)");
}
#endif

}  // namespace hyperloop::coord
