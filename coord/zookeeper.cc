// coord/: the configuration store on ZooKeeper (Debian's libzookeeper-mt,
// the C client's synchronous calls). One persistent znode per tenant,
// <root>/tenants/<id>; its data is encode_config's text and its
// stat.version the compare-and-set token (zoo_set2 with that version:
// ZBADVERSION when another writer won). A tenant's progress markers are
// persistent znodes <root>/tenants/<id>.progress/<name>, each holding its
// value's decimal text, raised by read + versioned zoo_set.
#include <zookeeper/zookeeper.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "hyperloop/coord.h"

namespace hyperloop::coord {
namespace {

std::string zerr(int rc) { return std::string(zerror(rc)) + " (" + std::to_string(rc) + ")"; }

// A call's failure as a Status. ZCONNECTIONLOSS and ZOPERATIONTIMEOUT leave
// a write's outcome unknown: the caller must read before it decides.
Status from_zk(int rc, const std::string& what) {
  switch (rc) {
    case ZNONODE: return not_found(what + ": no such record");
    case ZNODEEXISTS: return Status(StatusCode::kAlreadyExists, what + ": the record exists");
    case ZBADVERSION: return Status(StatusCode::kAborted, what + ": the record changed since it was read");
    case ZCONNECTIONLOSS:
    case ZOPERATIONTIMEOUT:
      return unavailable(what + ": " + zerr(rc) + "; the outcome of a write is unknown, read again");
    case ZSESSIONEXPIRED:
    case ZINVALIDSTATE:
    case ZCLOSING:
      return unavailable(what + ": the ZooKeeper session is gone: " + zerr(rc));
    case ZNOAUTH: return permission_denied(what + ": " + zerr(rc));
    default: return unavailable(what + ": " + zerr(rc));
  }
}

constexpr size_t kMaxValueDigits = 20;  // UINT64_MAX is 18446744073709551615
constexpr int kPublishAttempts = 64;    // each lost one means another publisher moved the marker

// A progress marker's data: the canonical decimal text of a uint64, exactly
// what publish_progress writes (digits only, no sign, no leading zero).
bool parse_value(std::string_view text, uint64_t* v) {
  if (text.empty() || text.size() > kMaxValueDigits || (text.size() > 1 && text[0] == '0')) return false;
  for (char c : text)
    if (c < '0' || c > '9') return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *v);
  return ec == std::errc() && end == text.data() + text.size();
}

class ZooKeeperStore final : public ConfigStore {
 public:
  explicit ZooKeeperStore(ZooKeeperOptions o) : o_(std::move(o)) {}
  ~ZooKeeperStore() override {
    std::lock_guard<std::mutex> l(call_mu_);
    close_handle();
  }

  Status start() {
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    for (const std::string& p : {o_.root, o_.root + "/tenants"}) {
      const int rc = zoo_create(zh_, p.c_str(), nullptr, -1, &ZOO_OPEN_ACL_UNSAFE, 0, nullptr, 0);
      if (rc != ZOK && rc != ZNODEEXISTS) return from_zk(rc, "creating " + p);
    }
    return Status::ok();
  }

  Result<Versioned> read(uint32_t tenant) override {
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string path = path_of(tenant);
    std::vector<char> buf(kMaxRecordBytes + 1);
    int len = int(buf.size());
    Stat stat{};
    const int rc = zoo_get(zh_, path.c_str(), 0, buf.data(), &len, &stat);
    if (rc != ZOK) return from_zk(rc, "reading " + path);
    if (len < 0 || size_t(len) > kMaxRecordBytes)
      return Status(StatusCode::kDataLoss, path + " holds " + std::to_string(stat.dataLength) +
                                               " bytes: not a tenant config record");
    auto c = decode_config(std::string_view(buf.data(), size_t(len)));
    if (!c.is_ok()) return Status(StatusCode::kDataLoss, path + ": " + c.status().message());
    return Versioned{std::move(*c), int64_t(stat.version)};
  }

  Result<int64_t> create(uint32_t tenant, const TenantConfig& first) override {
    HL_ASSIGN_OR_RETURN(const std::string text, encode_config(first));
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string path = path_of(tenant);
    const int rc = zoo_create(zh_, path.c_str(), text.data(), int(text.size()), &ZOO_OPEN_ACL_UNSAFE, 0, nullptr, 0);
    if (rc != ZOK) return from_zk(rc, "creating " + path);
    return int64_t{0};
  }

  Result<int64_t> compare_and_set(uint32_t tenant, const Versioned& seen, const TenantConfig& next) override {
    HL_ASSIGN_OR_RETURN(const std::string text, encode_config(next));
    if (next.epoch <= seen.config.epoch)
      return invalid_argument("tenant config: the epoch must grow (" + std::to_string(seen.config.epoch) + " -> " +
                              std::to_string(next.epoch) + ")");
    if (seen.version < 0 || seen.version > INT32_MAX) return invalid_argument("tenant config: not a version read here");
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string path = path_of(tenant);
    Stat stat{};
    const int rc = zoo_set2(zh_, path.c_str(), text.data(), int(text.size()), int(seen.version), &stat);
    if (rc != ZOK) return from_zk(rc, "replacing " + path);
    return int64_t(stat.version);
  }

  std::string describe() const override { return "zookeeper " + o_.hosts + o_.root; }

  Status claim_owner(uint32_t tenant, const std::string& owner) override {
    if (owner.empty() || owner.size() > kMaxNameBytes) return invalid_argument("claim_owner: bad owner name");
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string path = path_of(tenant) + ".owner";
    // Another session's claim goes first (ZooKeeper lets any session delete
    // an ephemeral node); a race with another claimant is retried a few times.
    for (int attempt = 0; attempt < 8; ++attempt) {
      int rc = zoo_create(zh_, path.c_str(), owner.data(), int(owner.size()), &ZOO_OPEN_ACL_UNSAFE, ZOO_EPHEMERAL,
                          nullptr, 0);
      if (rc == ZOK) return Status::ok();
      if (rc != ZNODEEXISTS) return from_zk(rc, "claiming " + path);
      rc = zoo_delete(zh_, path.c_str(), -1);
      if (rc != ZOK && rc != ZNONODE) return from_zk(rc, "replacing the claim " + path);
    }
    return Status(StatusCode::kAborted, "claiming " + path + ": other clients kept claiming it");
  }

  Result<std::string> live_owner(uint32_t tenant) override {
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string path = path_of(tenant) + ".owner";
    std::vector<char> buf(kMaxNameBytes + 1);
    int len = int(buf.size());
    Stat stat{};
    const int rc = zoo_get(zh_, path.c_str(), 0, buf.data(), &len, &stat);
    if (rc == ZNONODE) return std::string();
    if (rc != ZOK) return from_zk(rc, "reading " + path);
    if (len <= 0 || size_t(len) > kMaxNameBytes) return Status(StatusCode::kDataLoss, path + ": not an owner's name");
    return std::string(buf.data(), size_t(len));
  }

  Status publish_progress(uint32_t tenant, const std::string& name, uint64_t value) override {
    HL_RETURN_IF_ERROR(check_progress_name(name));
    const std::string text = std::to_string(value);
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string dir = progress_dir_of(tenant), path = dir + "/" + name;
    // Read, then write with the version read: a publisher that raced ahead
    // fails the write (ZBADVERSION; ZNODEEXISTS for the first value) and the
    // loop reads again, so a marker never goes back.
    for (int attempt = 0; attempt < kPublishAttempts; ++attempt) {
      int rc;
      uint64_t now = 0;
      int32_t version = -1;
      HL_RETURN_IF_ERROR(read_marker_locked(path, &rc, &now, &version));
      if (rc == ZOK) {
        if (now >= value) return Status::ok();  // late or duplicated: ignored
        rc = zoo_set(zh_, path.c_str(), text.data(), int(text.size()), version);
        if (rc == ZOK) return Status::ok();
        if (rc != ZBADVERSION && rc != ZNONODE) return from_zk(rc, "publishing " + path);
        continue;  // another publisher moved it, or it was removed: read again
      }
      if (rc != ZNONODE) return from_zk(rc, "reading " + path);
      rc = zoo_create(zh_, path.c_str(), text.data(), int(text.size()), &ZOO_OPEN_ACL_UNSAFE, 0, nullptr, 0);
      if (rc == ZOK) return Status::ok();
      if (rc == ZNONODE) {  // the tenant's first marker: its parent first, then again
        rc = zoo_create(zh_, dir.c_str(), nullptr, -1, &ZOO_OPEN_ACL_UNSAFE, 0, nullptr, 0);
        if (rc != ZOK && rc != ZNODEEXISTS) return from_zk(rc, "creating " + dir);
        continue;
      }
      if (rc != ZNODEEXISTS) return from_zk(rc, "creating " + path);
      // ZNODEEXISTS: another publisher created it first: read again
    }
    return Status(StatusCode::kAborted, "publishing " + path + ": other publishers kept advancing it");
  }

  Result<std::vector<std::pair<std::string, uint64_t>>> progress(uint32_t tenant) override {
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string dir = progress_dir_of(tenant);
    std::vector<std::pair<std::string, uint64_t>> out;
    String_vector children{};
    int rc = zoo_get_children(zh_, dir.c_str(), 0, &children);
    if (rc == ZNONODE) return out;  // no marker yet
    if (rc != ZOK) return from_zk(rc, "listing " + dir);
    std::vector<std::string> names;
    for (int32_t i = 0; i < children.count; ++i) names.emplace_back(children.data[i]);
    deallocate_String_vector(&children);
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      const std::string path = dir + "/" + name;
      if (!check_progress_name(name).is_ok())
        return Status(StatusCode::kDataLoss, path + ": not a progress marker's name");
      uint64_t value = 0;
      int32_t version = -1;
      HL_RETURN_IF_ERROR(read_marker_locked(path, &rc, &value, &version));
      if (rc == ZNONODE) continue;  // removed since the listing
      if (rc != ZOK) return from_zk(rc, "reading " + path);
      out.emplace_back(name, value);
    }
    return out;
  }

  Status remove_progress(uint32_t tenant, const std::string& name) override {
    HL_RETURN_IF_ERROR(check_progress_name(name));
    std::lock_guard<std::mutex> l(call_mu_);
    HL_RETURN_IF_ERROR(connect_locked());
    const std::string path = progress_dir_of(tenant) + "/" + name;
    const int rc = zoo_delete(zh_, path.c_str(), -1);
    if (rc != ZOK && rc != ZNONODE) return from_zk(rc, "removing " + path);
    return Status::ok();
  }

  uint64_t sessions_lost() const override {
    std::lock_guard<std::mutex> l(state_mu_);
    // Cut off for the session timeout: the session is as good as gone, and
    // this client gives it up for good (counted once; the next call closes
    // the handle, which ends the session and its claim even if the server,
    // stopped or slow, had not expired it yet and the client got back in).
    if (!abandoned_ && state_ == ZOO_CONNECTING_STATE && cut_since_ns_ != 0 && negotiated_ms_ != 0 &&
        mono_ns() - cut_since_ns_ >= uint64_t(negotiated_ms_) * 1'000'000) {
      abandoned_ = true;
      ++expired_;
    }
    return expired_;
  }

 private:
  std::string path_of(uint32_t tenant) const { return o_.root + "/tenants/" + std::to_string(tenant); }
  std::string progress_dir_of(uint32_t tenant) const { return path_of(tenant) + ".progress"; }

  // Reads the marker at `path`: *rc is zoo_get's code; on ZOK, *value and
  // *version are set, or kDataLoss (naming the znode) if its data is not a
  // marker's. REQUIRES: call_mu_ held.
  Status read_marker_locked(const std::string& path, int* rc, uint64_t* value, int32_t* version) {
    char buf[kMaxValueDigits + 1];
    int len = int(sizeof buf);
    Stat stat{};
    *rc = zoo_get(zh_, path.c_str(), 0, buf, &len, &stat);
    if (*rc != ZOK) return Status::ok();
    if (len < 0 || len != stat.dataLength || !parse_value(std::string_view(buf, size_t(len)), value))
      return Status(StatusCode::kDataLoss, path + " holds " + std::to_string(std::max(stat.dataLength, 0)) +
                                               " bytes that are not a progress marker (a decimal uint64)");
    *version = stat.version;
    return Status::ok();
  }

  static uint64_t mono_ns() {
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch()).count());
  }

  static void watcher(zhandle_t* zh, int type, int state, const char*, void* ctx) {
    if (type != ZOO_SESSION_EVENT) return;
    auto* self = static_cast<ZooKeeperStore*>(ctx);
    std::lock_guard<std::mutex> l(self->state_mu_);
    if (state == ZOO_CONNECTED_STATE) {
      self->cut_since_ns_ = 0;
      self->negotiated_ms_ = uint32_t(zoo_recv_timeout(zh));
    } else if (state == ZOO_CONNECTING_STATE && self->state_ == ZOO_CONNECTED_STATE) {
      self->cut_since_ns_ = mono_ns();
    } else if (state == ZOO_EXPIRED_SESSION_STATE && self->state_ != ZOO_EXPIRED_SESSION_STATE) {
      if (!self->abandoned_) ++self->expired_;  // an abandoned session was counted already
      self->cut_since_ns_ = 0;
    }
    self->state_ = state;
    self->state_cv_.notify_all();
  }

  void close_handle() {
    if (zh_) zookeeper_close(zh_);
    zh_ = nullptr;
  }

  // A connected handle, made anew when there is none or its session expired
  // (an expired handle refuses every call). REQUIRES: call_mu_ held.
  Status connect_locked() {
    int state;
    bool abandoned;
    {
      std::lock_guard<std::mutex> l(state_mu_);
      state = state_;
      abandoned = abandoned_;
    }
    if (zh_ && !abandoned && state != ZOO_EXPIRED_SESSION_STATE && state != ZOO_AUTH_FAILED_STATE)
      return Status::ok();
    close_handle();
    {
      std::lock_guard<std::mutex> l(state_mu_);
      state_ = 0;
      abandoned_ = false;
      cut_since_ns_ = 0;
    }
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    zh_ = zookeeper_init(o_.hosts.c_str(), &ZooKeeperStore::watcher, int(o_.session_timeout_ms), nullptr, this, 0);
    if (!zh_) return unavailable("zookeeper_init(" + o_.hosts + ") failed: " + std::string(std::strerror(errno)));
    std::unique_lock<std::mutex> l(state_mu_);
    const bool up = state_cv_.wait_for(l, std::chrono::milliseconds(o_.connect_timeout_ms),
                                       [&] { return state_ == ZOO_CONNECTED_STATE; });
    if (!up) {
      l.unlock();
      close_handle();
      return unavailable("no ZooKeeper server at " + o_.hosts + " answered within " +
                         std::to_string(o_.connect_timeout_ms) + " ms");
    }
    return Status::ok();
  }

  ZooKeeperOptions o_;
  std::mutex call_mu_;  // one call at a time on the handle (and its re-creation)
  zhandle_t* zh_ = nullptr;
  mutable std::mutex state_mu_;
  std::condition_variable state_cv_;
  int state_ = 0;  // the last session state the watcher reported
  mutable uint64_t expired_ = 0;  // sessions lost: expired by the server, or abandoned
  mutable bool abandoned_ = false;  // the current session was counted lost (cut off too long)
  uint64_t cut_since_ns_ = 0;  // when the connection was lost (0: connected)
  uint32_t negotiated_ms_ = 0;  // the session timeout the server granted
};

}  // namespace

Result<std::unique_ptr<ConfigStore>> zookeeper_config_store(const ZooKeeperOptions& o) {
  if (o.hosts.empty()) return invalid_argument("ZooKeeperOptions::hosts is empty");
  if (o.root.size() < 2 || o.root[0] != '/' || o.root.back() == '/')
    return invalid_argument("ZooKeeperOptions::root must be an absolute znode path such as /hyperloop");
  if (o.session_timeout_ms == 0 || o.connect_timeout_ms == 0)
    return invalid_argument("ZooKeeperOptions: the timeouts must be positive");
  auto s = std::make_unique<ZooKeeperStore>(o);
  HL_RETURN_IF_ERROR(s->start());
  return std::unique_ptr<ConfigStore>(std::move(s));
}

}  // namespace hyperloop::coord
