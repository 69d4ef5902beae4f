// EmbeddedChain: a whole chain in this process, and the plugin's options.
#include <sched.h>

#include <charconv>
#include <filesystem>

#include "replicated_rocksdb.h"

namespace hyperloop::rocks {

Result<EmbeddedOptions> parse_embedded_options(const std::string& spec) {
  EmbeddedOptions o;
  std::string_view rest(spec);
  auto number = [](std::string_view v, uint64_t lo, uint64_t hi, uint64_t* out) {
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || p != v.data() + v.size() || n < lo || n > hi) return false;
    *out = n;
    return true;
  };
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos) return invalid_argument("HYPERLOOP_WALFS: \"" + std::string(item) + "\" is not key=value");
    const std::string_view k = item.substr(0, eq), v = item.substr(eq + 1);
    uint64_t n = 0;
    if (k == "replicas" && number(v, 1, prim::kMaxReplicas, &n)) {
      o.replicas = static_cast<uint32_t>(n);
    } else if (k == "mode" && (v == "offload" || v == "cpu")) {
      o.mode = v == "offload" ? prim::ForwardMode::kOffload : prim::ForwardMode::kCpuForward;
    } else if (k == "ring_mb" && number(v, 1, 1 << 16, &n)) {
      o.wal.ring_bytes = n << 20;
    } else if (k == "chunk_kb" && number(v, 1, kMaxChunkPayload >> 10, &n)) {
      o.wal.max_chunk = static_cast<uint32_t>(n << 10);
    } else if (k == "appliers" && (v == "0" || v == "1")) {
      o.appliers = v == "1";
    } else if (k == "applier_dir" && !v.empty()) {
      o.applier_dir = std::string(v);
    } else {
      return invalid_argument("HYPERLOOP_WALFS: bad \"" + std::string(item) +
                              "\" (keys: replicas=1..7, mode=offload|cpu, ring_mb=N, chunk_kb=N, appliers=0|1, "
                              "applier_dir=PATH)");
    }
  }
  if (o.appliers && o.applier_dir.empty()) return invalid_argument("HYPERLOOP_WALFS: appliers=1 needs applier_dir=PATH");
  return o;
}

Result<std::unique_ptr<EmbeddedChain>> EmbeddedChain::create(const EmbeddedOptions& o) {
  std::unique_ptr<EmbeddedChain> c(new EmbeddedChain());
  c->o_ = o;
  WalOptions wo = o.wal;
  if (o.appliers) {
    c->config_ = coord::in_memory_config_store();
    wo.progress = c->config_.get();
    wo.tenant = kTenant;
    wo.appliers.clear();
    for (uint32_t i = 0; i < o.replicas; ++i) wo.appliers.push_back("replica-" + std::to_string(i));
  }
  txn::StoreOptions so = ring_store_options(kTenant, wo);
  so.group.mode = o.mode;
  so.group.slots = 1024;
  // Generous: opening reads every replica's whole region (recovery), which
  // on 2 shared cores with spinning CPU forwarders can take its time. Nothing
  // here waits on a dead replica.
  so.group.op_timeout_ns = 10'000'000'000;
  if (o.yield_while_waiting) so.group.progress = [] { sched_yield(); };
  const size_t region = txn::Store::region_bytes(so);
  if (region == 0) return invalid_argument("EmbeddedChain: the ring's store options are invalid");
  if (o.tenants == 0 || o.tenants > 64) return invalid_argument("EmbeddedChain: tenants must be 1..64");
  c->exec_ = std::make_unique<soft::SingleThreadExecutor>(o.executor_cpu);
  for (uint32_t t = 0; t < o.tenants; ++t) {
    HL_ASSIGN_OR_RETURN(auto client, c->fabric_.create_nic({.name = "primary-" + std::to_string(t)}));
    c->exec_->add(*client);
    c->clients_.push_back(std::move(client));
  }
  std::vector<prim::ReplicaHost*> raw;
  for (uint32_t i = 0; i < o.replicas; ++i) {
    HL_ASSIGN_OR_RETURN(auto nic, c->fabric_.create_nic({.name = "replica-" + std::to_string(i)}));
    c->exec_->add(*nic);
    prim::ReplicaHostOptions ho;
    ho.agent_cpu = o.agent_cpu;
    HL_ASSIGN_OR_RETURN(auto host, prim::ReplicaHost::create(*nic, ho));
    for (uint32_t t = 0; t < o.tenants; ++t) HL_RETURN_IF_ERROR(host->register_tenant(kTenant + t, region));
    raw.push_back(host.get());
    c->nics_.push_back(std::move(nic));
    c->hosts_.push_back(std::move(host));
  }
  for (uint32_t t = 0; t < o.tenants; ++t) {
    txn::StoreOptions st = so;
    st.tenant = kTenant + t;
    HL_ASSIGN_OR_RETURN(auto store, txn::Store::open(*c->clients_[t], std::span<prim::ReplicaHost* const>(raw), st));
    WalOptions wt = wo;
    wt.tenant = kTenant + t;
    if (t > 0) wt.appliers.clear();
    HL_ASSIGN_OR_RETURN(auto wal, ReplicatedWal::open(*store, wt));
    c->stores_.push_back(std::move(store));
    c->wals_.push_back(std::move(wal));
  }
  if (o.appliers) {
    const uint64_t data_off = txn::Store::data_offset(so);
    for (uint32_t i = 0; i < o.replicas; ++i) {
      const std::string dir = o.applier_dir + "/replica-" + std::to_string(i);
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
      rocksdb::Options dbo;
      dbo.create_if_missing = true;
      dbo.info_log_level = rocksdb::WARN_LEVEL;
      rocksdb::DB* db = nullptr;
      rocksdb::Status s = rocksdb::DB::Open(dbo, dir, &db);
      if (!s.ok()) return unavailable("applier db " + dir + ": " + s.ToString());
      c->applier_dbs_.emplace_back(db);
      ApplierOptions ao;
      ao.name = "replica-" + std::to_string(i);
      ao.ring_bytes = wo.ring_bytes;
      ao.progress = c->config_.get();
      ao.tenant = kTenant;
      HL_ASSIGN_OR_RETURN(auto a, Applier::create(host_reader(*c->hosts_[i], kTenant, data_off), db, ao));
      c->appliers_.push_back(std::move(a));
    }
    for (auto& a : c->appliers_) c->threads_.push_back(std::make_unique<ApplierThread>(*a));
  }
  return c;
}

void EmbeddedChain::stop_appliers() {
  for (auto& t : threads_) t->stop();
}

uint64_t EmbeddedChain::agent_cpu_ns() const {
  uint64_t s = 0;
  for (const auto& h : hosts_) s += h->agent_cpu_ns();
  return s;
}

EmbeddedChain::~EmbeddedChain() {
  threads_.clear();
  appliers_.clear();
  applier_dbs_.clear();
  wals_.clear();
  stores_.clear();
  hosts_.clear();
  exec_.reset();
  nics_.clear();
  clients_.clear();
}

}  // namespace hyperloop::rocks
