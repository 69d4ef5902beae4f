// hyperloop-rocks: one node of the replicated RocksDB across processes, over
// hyperloop-replica daemons and a ZooKeeper (the tenant's record, the owner's
// claim and the appliers' progress markers).
//
//   hyperloop-rocks region-bytes [--ring-mb M]
//       prints the region size a daemon's tenant line needs, and the data
//       area's offset in it
//   hyperloop-rocks writer --zk H:P --tenant T --secret HEX --chain IP:P,... --owner NAME
//                          --dir DIR [--tag S] [--count N] [--ring-mb M] [--appliers a,b,...]
//                          [--op-timeout-ms MS (5000)]
//       opens DIR as the primary (open_primary: the ring's batches above its
//       sequence number are applied first; a promoted replica passes its
//       applier's DIR), taking the tenant over (a new epoch: the previous
//       primary is fenced on every replica). Then writes batches i = 0, 1, ...:
//       keys "S.<i>.0" .. "S.<i>.2", each with value "S.<i>", one synced
//       WriteBatch each, and prints "ack S i" once Write returned OK. With
//       --count it stops after N, settles the ring and exits 0.
//   hyperloop-rocks applier --zk H:P --tenant T --name N --region FILE --dir DIR [--ring-mb M]
//       applies the ring from FILE (the daemon's region file, mapped
//       read-only) to DIR's RocksDB; SIGTERM: it takes what is there, flushes,
//       publishes and exits 0 ("stopped seq=S").
//   hyperloop-rocks dump --dir DIR
//       prints "kv KEY VALUE" for every key and "seq S".
//
// Lines on stdout are events; errors go to stderr with exit 1 (2: bad flags).
#include <pthread.h>
#include <sched.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#include "replicated_rocksdb.h"
#include "tool_util.h"

using namespace hyperloop;

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

struct Flags {
  std::map<std::string, std::string> v;
  std::string get(const std::string& k, const std::string& d = "") const {
    auto it = v.find(k);
    return it == v.end() ? d : it->second;
  }
  bool has(const std::string& k) const { return v.count(k) != 0; }
};

int usage(const std::string& why) {
  std::fprintf(stderr, "hyperloop-rocks: %s (see the comment at the top of examples/rocksdb/rocks_node.cc)\n",
               why.c_str());
  return 2;
}

bool parse_u64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint64_t(c - '0');
  }
  *out = v;
  return true;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size() && !s.empty()) {
    const size_t c = s.find(',', at);
    out.push_back(s.substr(at, c == std::string::npos ? std::string::npos : c - at));
    if (c == std::string::npos) break;
    at = c + 1;
  }
  return out;
}

rocks::WalOptions wal_options(const Flags& f, uint64_t* bad) {
  rocks::WalOptions w;
  uint64_t mb = 16;
  if (f.has("--ring-mb") && (!parse_u64(f.get("--ring-mb"), &mb) || mb == 0 || mb > 4096)) *bad = 1;
  w.ring_bytes = mb << 20;
  w.max_chunk = 64 << 10;
  return w;
}

int fail(const char* what, const Status& s) {
  std::fprintf(stderr, "hyperloop-rocks: %s: %s\n", what, s.to_string().c_str());
  return 1;
}

Result<std::unique_ptr<coord::ConfigStore>> zookeeper(const Flags& f) {
  coord::ZooKeeperOptions zo;
  zo.hosts = f.get("--zk");
  zo.session_timeout_ms = 1000;
  return coord::zookeeper_config_store(zo);
}

int region_bytes(const Flags& f) {
  uint64_t bad = 0;
  rocks::WalOptions w = wal_options(f, &bad);
  if (bad) return usage("--ring-mb needs 1..4096");
  txn::StoreOptions so = rocks::ring_store_options(1, w);
  std::printf("%zu %zu\n", txn::Store::region_bytes(so), txn::Store::data_offset(so));
  return 0;
}

int writer(const Flags& f) {
  uint64_t bad = 0, tenant = 0, count = 0;
  rocks::WalOptions w = wal_options(f, &bad);
  std::string secret;
  if (bad || !parse_u64(f.get("--tenant"), &tenant) || tenant == 0 || tenant > UINT32_MAX)
    return usage("--tenant and --ring-mb need numbers");
  if (!tools::parse_hex(f.get("--secret"), &secret) || secret.size() < 16) return usage("--secret needs >= 16 bytes of hex");
  if (f.has("--count") && !parse_u64(f.get("--count"), &count)) return usage("--count needs a number");
  const std::string dir = f.get("--dir"), owner = f.get("--owner"), tag = f.get("--tag", owner);
  if (dir.empty() || owner.empty() || f.get("--zk").empty()) return usage("writer needs --dir, --owner and --zk");
  const std::vector<std::string> chain = split(f.get("--chain"));
  if (auto p = soft::default_fabric().listen("127.0.0.1"); !p.is_ok() && p.status().code() != StatusCode::kAlreadyExists)
    return fail("soft fabric listen", p.status());
  auto dev = rnic::open_device("soft");
  if (!dev.is_ok()) return fail("open_device(soft)", dev.status());
  auto zk = zookeeper(f);
  if (!zk.is_ok()) return fail("ZooKeeper", zk.status());
  w.tenant = static_cast<uint32_t>(tenant);
  w.progress = zk.value().get();
  w.appliers = split(f.get("--appliers"));
  txn::StoreOptions so = rocks::ring_store_options(w.tenant, w);
  so.group.secret = secret;
  // Opening reads every replica's whole region (recovery): generous by
  // default, so a loaded host (a sanitizer build, 2 shared cores) is not taken
  // for a dead one.
  uint64_t op_ms = 5000;
  if (f.has("--op-timeout-ms") && (!parse_u64(f.get("--op-timeout-ms"), &op_ms) || op_ms == 0))
    return usage("--op-timeout-ms needs a positive number");
  so.group.op_timeout_ns = op_ms * 1'000'000;
  so.membership.config = zk.value().get();
  so.membership.owner = owner;
  so.membership.heartbeat_interval_ns = 0;
  auto store = txn::Store::connect(**dev, chain, so);
  if (!store.is_ok()) return fail("opening the tenant", store.status());
  auto wal = rocks::ReplicatedWal::open(*store.value(), w);
  if (!wal.is_ok()) return fail("opening the WAL ring", wal.status());
  std::shared_ptr<rocks::ReplicatedWal> ring = std::move(wal).value();
  rocksdb::Options o;
  o.create_if_missing = true;
  o.info_log_level = rocksdb::WARN_LEVEL;
  o.write_buffer_size = 1 << 20;
  rocks::apply_required_options(o, w.ring_bytes);
  auto primary = rocks::open_primary(dir, o, ring);
  if (!primary.is_ok()) return fail("opening the primary", primary.status());
  rocksdb::DB* db = primary.value()->db.get();
  std::printf("ready epoch=%llu generation=%llu replayed=%llu seq=%llu\n",
              (unsigned long long)store.value()->epoch(), (unsigned long long)ring->generation(),
              (unsigned long long)primary.value()->replayed, (unsigned long long)db->GetLatestSequenceNumber());
  std::fflush(stdout);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  for (uint64_t i = 0; count == 0 || i < count; ++i) {
    rocksdb::WriteBatch b;
    const std::string base = tag + "." + std::to_string(i);
    for (int k = 0; k < 3; ++k) b.Put(base + "." + std::to_string(k), base);
    rocksdb::Status s = db->Write(wo, &b);
    if (!s.ok()) {
      std::fprintf(stderr, "hyperloop-rocks: write %llu: %s\n", (unsigned long long)i, s.ToString().c_str());
      return 1;
    }
    std::printf("ack %s %llu\n", tag.c_str(), (unsigned long long)i);
    std::fflush(stdout);
  }
  primary.value().reset();  // closes the db
  if (Status s = ring->settle(); !s.is_ok()) return fail("settling the ring", s);
  std::printf("done\n");
  std::fflush(stdout);
  return 0;
}

int applier(const Flags& f) {
  uint64_t bad = 0, tenant = 0;
  rocks::WalOptions w = wal_options(f, &bad);
  if (bad || !parse_u64(f.get("--tenant"), &tenant) || tenant == 0 || tenant > UINT32_MAX)
    return usage("--tenant and --ring-mb need numbers");
  const std::string name = f.get("--name"), dir = f.get("--dir"), region = f.get("--region");
  if (name.empty() || dir.empty() || region.empty() || f.get("--zk").empty())
    return usage("applier needs --name, --dir, --region and --zk");
  std::signal(SIGTERM, on_term);
  auto zk = zookeeper(f);
  if (!zk.is_ok()) return fail("ZooKeeper", zk.status());
  txn::StoreOptions so = rocks::ring_store_options(static_cast<uint32_t>(tenant), w);
  auto map = rocks::MappedRegion::open(region, txn::Store::region_bytes(so));
  if (!map.is_ok()) return fail("mapping the region", map.status());
  rocksdb::Options o;
  o.create_if_missing = true;
  o.info_log_level = rocksdb::WARN_LEVEL;
  rocksdb::DB* raw = nullptr;
  if (rocksdb::Status s = rocksdb::DB::Open(o, dir, &raw); !s.ok())
    return fail("opening the db", Status(StatusCode::kInternal, s.ToString()));
  std::unique_ptr<rocksdb::DB> db(raw);
  rocks::ApplierOptions ao;
  ao.name = name;
  ao.ring_bytes = w.ring_bytes;
  ao.progress = zk.value().get();
  ao.tenant = static_cast<uint32_t>(tenant);
  ao.publish_bytes = 1 << 20;
  auto a = rocks::Applier::create(map.value()->reader(txn::Store::data_offset(so)), db.get(), ao);
  if (!a.is_ok()) return fail("starting the applier", a.status());
  sched_param p{};
  pthread_setschedparam(pthread_self(), SCHED_IDLE, &p);
  std::printf("ready name=%s seq=%llu\n", name.c_str(), (unsigned long long)db->GetLatestSequenceNumber());
  std::fflush(stdout);
  while (!g_stop) {
    auto n = a.value()->poll();
    if (!n.is_ok()) return fail("applying", n.status());
    if (n.value() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (;;) {  // what is there now, then stop
    auto n = a.value()->poll();
    if (!n.is_ok()) return fail("applying", n.status());
    if (n.value() == 0) break;
  }
  if (Status s = a.value()->publish(); !s.is_ok()) return fail("publishing", s);
  std::printf("stopped seq=%llu\n", (unsigned long long)a.value()->applied_sequence());
  std::fflush(stdout);
  return 0;
}

int dump(const Flags& f) {
  const std::string dir = f.get("--dir");
  if (dir.empty()) return usage("dump needs --dir");
  rocksdb::Options o;
  o.info_log_level = rocksdb::WARN_LEVEL;
  rocksdb::DB* raw = nullptr;
  if (rocksdb::Status s = rocksdb::DB::OpenForReadOnly(o, dir, &raw); !s.ok())
    return fail("opening the db", Status(StatusCode::kInternal, s.ToString()));
  std::unique_ptr<rocksdb::DB> db(raw);
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next())
    std::printf("kv %s %s\n", it->key().ToString().c_str(), it->value().ToString().c_str());
  if (!it->status().ok()) return fail("iterating", Status(StatusCode::kInternal, it->status().ToString()));
  std::printf("seq %llu\n", (unsigned long long)db->GetLatestSequenceNumber());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage("a command is needed: region-bytes, writer, applier or dump");
  const std::string cmd = argv[1];
  Flags f;
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) return usage("flags are --name VALUE pairs: " + k);
    f.v[k] = argv[++i];
  }
  if (cmd == "region-bytes") return region_bytes(f);
  if (cmd == "writer") return writer(f);
  if (cmd == "applier") return applier(f);
  if (cmd == "dump") return dump(f);
  return usage("unknown command " + cmd);
}
