// hyperloop-bank: bank transfers on one tenant's replicated store over
// hyperloop-replica daemons, with the tenant's membership in ZooKeeper. It
// takes the tenant over when it opens (fencing the previous owner), heals
// the chain when a replica dies, brings in spares, and stops when another
// client takes the tenant over. The client an operator runs to see
// fail-over happen; the process-level fail-over test drives it.
//
//   hyperloop-bank --zk HOST:PORT --owner NAME --tag N --secret HEX
//                  [--chain IP:P,...] [--spares IP:P,...] [flags]
//
// Flags:
//   --zk HOSTS           ZooKeeper ensemble ("host:port[,host:port]")
//   --zk-root PATH       the records' root znode (default /hyperloop)
//   --zk-session-ms MS   session timeout asked for (default 4000)
//   --tenant N           tenant id (default 1)
//   --secret HEX         the tenant's secret, as in the daemons' config
//   --owner NAME         this client's name in the record
//   --tag N              1..65535: the high bits of every record this client
//                        writes (tells clients apart in the accounts)
//   --chain IP:P,...     the chain, used only if the tenant has no record yet
//   --spares IP:P,...    daemons that replace dead replicas (at the tail)
//   --replicas N         the chain length spares restore (default 3)
//   --min-replicas N     below this, commits are refused (default 2)
//   --mode M             offload (default) or cpu-forward
//   --address IP         local address of the soft wire (default 127.0.0.1)
//   --accounts N         accounts (default 16); --data-size and --log-size
//                        bytes of the store (defaults 64 KiB, 256 KiB):
//                        the daemons' tenant needs --print-region bytes
//   --transfers N        transfers to commit, 0 until stopped (default 0)
//   --op-timeout-ms MS   a chain operation fails after this (default 200)
//   --probe-timeout-ms MS  bound on probing a replica (default 100)
//   --heartbeat-ms MS    heartbeat READs of every replica this often (default
//                        10; 0: none, failures found by operations only)
//   --heartbeat-timeout-ms MS  a replica silent this long has failed (default 50)
//   --cached             read the accounts once (and after a failure), then
//                        transfer from this client's own copy without reading:
//                        blind writes, safe only while it owns the tenant
//                        (what fencing must stop once it does not)
//   --after-fence N      once fenced, go on issuing N more transfers, as a
//                        client that ignores the error would (each printed
//                        as "refused"), then exit 3: for fencing tests
//   --standby            before opening, wait while the tenant has a live
//                        owner (its ZooKeeper session); take over once it ends
//   --settle E:L,...     after opening, print whether these TxnIds committed
//   --check              open, print every account and the total, exit
//   --print-region       print the tenant region bytes these options need, exit
//
// Output, one line per event on stdout (t= is CLOCK_MONOTONIC in ns, which
// every process of the machine shares):
//   standby owner=O t=T                           (--standby: waiting while O lives)
//   ready owner=O epoch=E replicas=N t=T
//   outcome txn=E:L committed|absent|unknown
//   issue n=K a=A ba=BA b=B bb=BB                 (before each commit)
//   commit n=K txn=E:L t=T                        (acknowledged)
//   indoubt n=K txn=E:L t=T reason="..."          (the chain failed; then "outcome"
//                                                  once known; txn=0:0: not issued)
//   refused n=K code=C                            (--after-fence: refused, as it must be)
//   membership epoch=E replicas=N t=T             (the chain changed)
//   joined replica=IP:P epoch=E t=T
//   fenced t=T reason="..."
//   account K balance writer                      (--check; then: total T)
// Exit status: 0 done, 1 a runtime failure, 2 bad flags, 3 fenced (another
// client took the tenant over), 4 --check found the total wrong.
#include <signal.h>
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "hyperloop/coord.h"
#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/txn.h"
#include "tool_util.h"

using namespace hyperloop;

namespace {

uint64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

struct Options {
  std::string zk, zk_root = "/hyperloop", owner, secret, address = "127.0.0.1";
  uint32_t zk_session_ms = 4000, tenant = 1, tag = 0, replicas = 3, min_replicas = 2, accounts = 16;
  uint64_t data_size = 64 << 10, log_size = 256 << 10, transfers = 0, op_timeout_ms = 200, probe_timeout_ms = 100;
  uint64_t after_fence = 0, heartbeat_ms = 10, heartbeat_timeout_ms = 50;
  std::vector<std::string> chain, spares, settle;
  prim::ForwardMode mode = prim::ForwardMode::kOffload;
  bool check = false, print_region = false, cached = false, standby = false;
};

const char kUsage[] =
    "usage: hyperloop-bank --zk HOST:PORT --owner NAME --tag N --secret HEX [--chain IP:P,...]\n"
    "                      [--spares IP:P,...] [--replicas N] [--min-replicas N] [--mode offload|cpu-forward]\n"
    "                      [--tenant N] [--accounts N] [--data-size B] [--log-size B] [--transfers N]\n"
    "                      [--op-timeout-ms MS] [--probe-timeout-ms MS] [--heartbeat-ms MS]\n"
    "                      [--heartbeat-timeout-ms MS] [--zk-root P] [--zk-session-ms MS]\n"
    "                      [--address IP] [--cached] [--after-fence N] [--standby] [--settle E:L,...] [--check] [--print-region]\n";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t c = s.find(',', at);
    const std::string part = s.substr(at, c == std::string::npos ? std::string::npos : c - at);
    if (!part.empty()) v.push_back(part);
    if (c == std::string::npos) break;
    at = c + 1;
  }
  return v;
}

bool parse_u64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  *out = std::strtoull(s.c_str(), nullptr, 10);
  return true;
}

// "" if fine, else what is wrong.
std::string parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&](std::string* v) {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    std::string v;
    uint64_t n = 0;
    auto number = [&](uint64_t lo, uint64_t hi) { return value(&v) && parse_u64(v, &n) && n >= lo && n <= hi; };
    if (f == "--zk") {
      if (!value(&o->zk)) return "--zk needs HOST:PORT";
    } else if (f == "--zk-root") {
      if (!value(&o->zk_root)) return "--zk-root needs a path";
    } else if (f == "--zk-session-ms") {
      if (!number(1, 600'000)) return "--zk-session-ms needs 1..600000";
      o->zk_session_ms = uint32_t(n);
    } else if (f == "--tenant") {
      if (!number(0, UINT32_MAX)) return "--tenant needs a number";
      o->tenant = uint32_t(n);
    } else if (f == "--secret") {
      if (!value(&v) || !tools::parse_hex(v, &o->secret) || o->secret.size() < 16)
        return "--secret needs at least 16 bytes as hex";
    } else if (f == "--owner") {
      if (!value(&o->owner)) return "--owner needs a name";
    } else if (f == "--tag") {
      if (!number(1, 65535)) return "--tag needs 1..65535";
      o->tag = uint32_t(n);
    } else if (f == "--chain") {
      if (!value(&v)) return "--chain needs IP:P,...";
      o->chain = split(v);
    } else if (f == "--spares") {
      if (!value(&v)) return "--spares needs IP:P,...";
      o->spares = split(v);
    } else if (f == "--replicas") {
      if (!number(1, prim::kMaxReplicas)) return "--replicas needs 1..7";
      o->replicas = uint32_t(n);
    } else if (f == "--min-replicas") {
      if (!number(1, prim::kMaxReplicas)) return "--min-replicas needs 1..7";
      o->min_replicas = uint32_t(n);
    } else if (f == "--mode") {
      if (!value(&v)) return "--mode needs offload or cpu-forward";
      if (v == "offload")
        o->mode = prim::ForwardMode::kOffload;
      else if (v == "cpu-forward")
        o->mode = prim::ForwardMode::kCpuForward;
      else
        return "--mode needs offload or cpu-forward";
    } else if (f == "--address") {
      if (!value(&o->address)) return "--address needs an IPv4 address";
    } else if (f == "--accounts") {
      if (!number(2, 4096)) return "--accounts needs 2..4096";
      o->accounts = uint32_t(n);
    } else if (f == "--data-size") {
      if (!number(1, 1ull << 32)) return "--data-size needs bytes";
      o->data_size = n;
    } else if (f == "--log-size") {
      if (!number(1, 1ull << 32)) return "--log-size needs bytes";
      o->log_size = n;
    } else if (f == "--transfers") {
      if (!number(0, UINT64_MAX / 2)) return "--transfers needs a number";
      o->transfers = n;
    } else if (f == "--op-timeout-ms") {
      if (!number(1, 3'600'000)) return "--op-timeout-ms needs 1..3600000";
      o->op_timeout_ms = n;
    } else if (f == "--probe-timeout-ms") {
      if (!number(1, 3'600'000)) return "--probe-timeout-ms needs 1..3600000";
      o->probe_timeout_ms = n;
    } else if (f == "--settle") {
      if (!value(&v)) return "--settle needs E:L,...";
      o->settle = split(v);
    } else if (f == "--heartbeat-ms") {
      if (!number(0, 3'600'000)) return "--heartbeat-ms needs 0..3600000";
      o->heartbeat_ms = n;
    } else if (f == "--heartbeat-timeout-ms") {
      if (!number(1, 3'600'000)) return "--heartbeat-timeout-ms needs 1..3600000";
      o->heartbeat_timeout_ms = n;
    } else if (f == "--after-fence") {
      if (!number(0, 1'000'000)) return "--after-fence needs 0..1000000";
      o->after_fence = n;
    } else if (f == "--standby") {
      o->standby = true;
    } else if (f == "--cached") {
      o->cached = true;
    } else if (f == "--check") {
      o->check = true;
    } else if (f == "--print-region") {
      o->print_region = true;
    } else {
      return "unknown flag " + f;
    }
  }
  if (o->print_region) return "";
  if (o->zk.empty()) return "--zk is required";
  if (o->owner.empty()) return "--owner is required";
  if (o->secret.empty()) return "--secret is required";
  if (!o->check && o->tag == 0) return "--tag is required";
  if (uint64_t(o->accounts) * 64 > o->data_size) return "--accounts do not fit --data-size (64 bytes each)";
  if (o->min_replicas > o->replicas) return "--min-replicas is above --replicas";
  return "";
}

txn::StoreOptions store_options(const Options& o) {
  txn::StoreOptions so;
  so.tenant = o.tenant;
  so.data_size = o.data_size;
  so.log_size = o.log_size;
  so.stripe_bytes = 64;
  so.group.mode = o.mode;
  so.group.secret = o.secret;
  so.group.op_timeout_ns = o.op_timeout_ms * 1'000'000;
  so.membership.owner = o.owner;
  so.membership.on_failure = txn::FailurePolicy::kReconfigure;
  so.membership.min_replicas = o.min_replicas;
  so.membership.probe_timeout_ns = o.probe_timeout_ms * 1'000'000;
  so.membership.heartbeat_interval_ns = o.heartbeat_ms * 1'000'000;
  so.membership.heartbeat_timeout_ns = o.heartbeat_timeout_ms * 1'000'000;
  return so;
}

// An account: {balance, writer, key + 1, check}: a torn or misplaced one is seen.
struct Account {
  uint64_t balance = 0, writer = 0;
};
uint64_t account_check(uint32_t k, const Account& a) {
  uint64_t x = a.balance * 0x9E3779B97F4A7C15ull ^ (a.writer + 0x632BE59BD9B4E019ull) ^ (uint64_t(k) << 32);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  return x ^ (x >> 29);
}
void encode(uint32_t k, const Account& a, std::byte* p) {
  std::memset(p, 0, 64);
  const uint64_t w[4] = {a.balance, a.writer, uint64_t(k) + 1, account_check(k, a)};
  std::memcpy(p, w, sizeof w);
}
// false: torn or not an account of this store (all zeros is a fresh account).
bool decode(uint32_t k, const std::byte* p, Account* a) {
  uint64_t w[4];
  std::memcpy(w, p, sizeof w);
  if (!w[0] && !w[1] && !w[2] && !w[3]) {
    *a = {};
    return true;
  }
  *a = {w[0], w[1]};
  return w[2] == uint64_t(k) + 1 && w[3] == account_check(k, *a);
}

std::string txn_text(const txn::TxnId& t) { return std::to_string(t.epoch) + ":" + std::to_string(t.lsn); }

void print_membership(txn::Store& s, uint64_t* last_epoch) {
  if (s.epoch() == *last_epoch) return;
  *last_epoch = s.epoch();
  std::printf("membership epoch=%llu replicas=%u t=%llu\n", (unsigned long long)s.epoch(), s.replicas(),
              (unsigned long long)mono_ns());
}

int fenced(const Status& s) {
  std::printf("fenced t=%llu reason=\"%s\"\n", (unsigned long long)mono_ns(), s.to_string().c_str());
  return 3;
}

// --after-fence: a client that ignores being fenced and issues on. Every
// transfer must be refused; each is printed ("refused", or "commit" should
// one ever be acknowledged, which the tests count as a failure).
int ignore_fence(txn::Store& store, const Options& o, uint64_t* n) {
  std::byte rec[64];
  for (uint64_t i = 0; i < o.after_fence; ++i) {
    ++*n;
    const uint64_t writer = (uint64_t(o.tag) << 40) | *n;
    const uint32_t a = uint32_t(i % o.accounts), b = uint32_t((i + 1) % o.accounts);
    txn::Transaction t = store.begin();
    encode(a, {1, writer}, rec);
    Status s = t.write(uint64_t(a) * 64, rec);
    encode(b, {1, writer}, rec);
    if (s.is_ok()) s = t.write(uint64_t(b) * 64, rec);
    std::printf("issue n=%llu a=%u ba=1 b=%u bb=1\n", (unsigned long long)*n, a, b);
    if (s.is_ok()) s = t.commit();
    if (s.is_ok())
      std::printf("commit n=%llu txn=%s t=%llu\n", (unsigned long long)*n, txn_text(t.id()).c_str(),
                  (unsigned long long)mono_ns());
    else
      std::printf("refused n=%llu code=%s\n", (unsigned long long)*n, std::string(status_code_name(s.code())).c_str());
  }
  return 3;
}

int run(const Options& o) {
  if (auto p = soft::default_fabric().listen(o.address); !p.is_ok() && p.status().code() != StatusCode::kAlreadyExists) {
    std::fprintf(stderr, "hyperloop-bank: soft fabric listen on %s: %s\n", o.address.c_str(),
                 p.status().to_string().c_str());
    return 1;
  }
  auto dev = rnic::open_device("soft");
  if (!dev.is_ok()) {
    std::fprintf(stderr, "hyperloop-bank: open_device(soft): %s\n", dev.status().to_string().c_str());
    return 1;
  }
  coord::ZooKeeperOptions zo;
  zo.hosts = o.zk;
  zo.root = o.zk_root;
  zo.session_timeout_ms = o.zk_session_ms;
  auto zk = coord::zookeeper_config_store(zo);
  if (!zk.is_ok()) {
    std::fprintf(stderr, "hyperloop-bank: ZooKeeper at %s: %s\n", o.zk.c_str(), zk.status().to_string().c_str());
    return 1;
  }
  if (o.standby) {
    bool announced = false;
    for (;;) {
      auto live = (*zk)->live_owner(o.tenant);
      if (!live.is_ok()) {
        std::fprintf(stderr, "hyperloop-bank: reading the live owner: %s\n", live.status().to_string().c_str());
        return 1;
      }
      if (live->empty()) break;
      if (!announced) {
        std::printf("standby owner=%s t=%llu\n", live->c_str(), (unsigned long long)mono_ns());
        std::fflush(stdout);
        announced = true;
      }
      timespec nap{0, 10'000'000};  // a poll every 10 ms: the session timeout dominates
      nanosleep(&nap, nullptr);
    }
  }
  txn::StoreOptions so = store_options(o);
  so.membership.config = zk->get();
  auto opened = txn::Store::connect(**dev, o.chain, so);
  if (!opened.is_ok()) {
    if (opened.status().code() == StatusCode::kPermissionDenied) return fenced(opened.status());
    std::fprintf(stderr, "hyperloop-bank: opening tenant %u: %s\n", o.tenant, opened.status().to_string().c_str());
    return 1;
  }
  std::unique_ptr<txn::Store> store = std::move(opened).value();
  uint64_t epoch = store->epoch();
  std::printf("ready owner=%s epoch=%llu replicas=%u t=%llu\n", o.owner.c_str(), (unsigned long long)epoch,
              store->replicas(), (unsigned long long)mono_ns());
  for (const std::string& t : o.settle) {
    txn::TxnId id;
    const size_t c = t.find(':');
    if (c == std::string::npos || !parse_u64(t.substr(0, c), &id.epoch) || !parse_u64(t.substr(c + 1), &id.lsn)) {
      std::fprintf(stderr, "hyperloop-bank: --settle %s is not E:L\n", t.c_str());
      return 2;
    }
    auto r = store->outcome(id);
    std::printf("outcome txn=%s %s\n", t.c_str(), !r.is_ok() ? "unknown" : *r ? "committed" : "absent");
  }
  std::vector<std::byte> all(size_t(o.accounts) * 64);
  if (o.check) {
    Status s = store->read(0, all);
    if (!s.is_ok()) {
      std::fprintf(stderr, "hyperloop-bank: reading the accounts: %s\n", s.to_string().c_str());
      return s.code() == StatusCode::kPermissionDenied ? 3 : 1;
    }
    uint64_t total = 0;
    bool torn = false;
    for (uint32_t k = 0; k < o.accounts; ++k) {
      Account a;
      if (!decode(k, all.data() + 64 * k, &a)) {
        std::printf("account %u torn\n", k);
        torn = true;
        continue;
      }
      std::printf("account %u %llu %llu\n", k, (unsigned long long)a.balance, (unsigned long long)a.writer);
      total += a.balance;
    }
    std::printf("total %llu\n", (unsigned long long)total);
    return torn || (total != 0 && total != uint64_t(o.accounts) * 1000) ? 4 : 0;
  }

  std::mt19937_64 rng(o.tag * 0x9E37ull + 1);
  uint64_t n = 0;
  auto on_fence = [&](const Status& s) {
    fenced(s);
    return ignore_fence(*store, o, &n);
  };
  size_t next_spare = 0;
  std::vector<Account> cache;  // --cached: this client's copy of the accounts
  for (uint64_t done = 0; o.transfers == 0 || done < o.transfers;) {
    ++n;
    const uint64_t writer = (uint64_t(o.tag) << 40) | n;
    txn::Transaction t = store->begin();
    Status s;
    if (!o.cached || cache.empty()) {
      s = t.read(0, all);
      cache.assign(o.accounts, Account{});
      for (uint32_t k = 0; s.is_ok() && k < o.accounts; ++k)
        if (!decode(k, all.data() + 64 * k, &cache[k])) {
          std::fprintf(stderr, "hyperloop-bank: account %u is torn\n", k);
          return 1;
        }
      if (!s.is_ok()) cache.clear();
    }
    std::vector<Account> acc = cache;
    bool fresh = true;
    for (const Account& x : acc) fresh = fresh && x.balance == 0 && x.writer == 0;
    uint32_t a = 0, b = 1;
    std::byte rec[64];
    if (s.is_ok() && fresh) {  // the first transfer opens every account with 1000
      for (uint32_t k = 0; k < o.accounts && s.is_ok(); ++k) {
        acc[k] = {1000, writer};
        encode(k, {1000, writer}, rec);
        s = t.write(uint64_t(k) * 64, rec);
      }
      std::printf("issue n=%llu init\n", (unsigned long long)n);
    } else if (s.is_ok()) {
      a = uint32_t(rng() % o.accounts);
      b = uint32_t(rng() % (o.accounts - 1));
      if (b >= a) ++b;
      const uint64_t amount = acc[a].balance ? rng() % (acc[a].balance / 2 + 1) : 0;
      const Account na{acc[a].balance - amount, writer}, nb{acc[b].balance + amount, writer};
      acc[a] = na;
      acc[b] = nb;
      encode(a, na, rec);
      s = t.write(uint64_t(a) * 64, rec);
      encode(b, nb, rec);
      if (s.is_ok()) s = t.write(uint64_t(b) * 64, rec);
      std::printf("issue n=%llu a=%u ba=%llu b=%u bb=%llu\n", (unsigned long long)n, a,
                  (unsigned long long)na.balance, b, (unsigned long long)nb.balance);
    }
    if (s.is_ok()) s = t.commit();
    if (s.is_ok()) {
      cache = std::move(acc);
      ++done;
      std::printf("commit n=%llu txn=%s t=%llu\n", (unsigned long long)n, txn_text(t.id()).c_str(),
                  (unsigned long long)mono_ns());
      print_membership(*store, &epoch);
      // A spare replaces a dead replica (after a commit: serving again comes first).
      while (store->healthy() && store->replicas() < o.replicas && next_spare < o.spares.size()) {
        const std::string& ep = o.spares[next_spare++];
        const Status j = store->add_replica(ep);
        if (j.code() == StatusCode::kPermissionDenied) return on_fence(j);
        if (!j.is_ok()) {
          std::fprintf(stderr, "hyperloop-bank: add_replica(%s): %s\n", ep.c_str(), j.to_string().c_str());
          continue;
        }
        std::printf("joined replica=%s epoch=%llu t=%llu\n", ep.c_str(), (unsigned long long)store->epoch(),
                    (unsigned long long)mono_ns());
        epoch = store->epoch();
      }
      std::fflush(stdout);
      continue;
    }
    cache.clear();  // read again: the store may hold what this copy does not
    if (s.code() == StatusCode::kPermissionDenied) return on_fence(s);
    if (s.code() == StatusCode::kAborted) continue;
    // The chain failed (t= is when this client noticed). txn=0:0: nothing of
    // this transfer was issued, so nothing of it can be there.
    std::printf("indoubt n=%llu txn=%s t=%llu reason=\"%s\"\n", (unsigned long long)n, txn_text(t.id()).c_str(),
                (unsigned long long)mono_ns(), s.to_string().c_str());
    // The store reconfigured itself (kReconfigure) or could not: try again
    // until it serves, or is fenced.
    for (int attempt = 0; !store->healthy(); ++attempt) {
      const Status r = store->reconfigure();
      if (r.code() == StatusCode::kPermissionDenied) return on_fence(r);
      if (r.is_ok()) break;
      if (attempt == 50) {
        std::fprintf(stderr, "hyperloop-bank: the chain does not heal: %s\n", r.to_string().c_str());
        return 1;
      }
      timespec nap{0, 100'000'000};
      nanosleep(&nap, nullptr);
    }
    if (!t.id().is_zero()) {
      auto r = store->outcome(t.id());
      std::printf("outcome txn=%s %s\n", txn_text(t.id()).c_str(), !r.is_ok() ? "unknown" : *r ? "committed" : "absent");
      if (r.is_ok() && *r) ++done;
    }
    print_membership(*store, &epoch);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  ::signal(SIGPIPE, SIG_IGN);
  Options o;
  if (const std::string why = parse(argc, argv, &o); !why.empty()) {
    std::fprintf(stderr, "hyperloop-bank: %s\n%s", why.c_str(), kUsage);
    return 2;
  }
  if (o.print_region) {
    const size_t r = txn::Store::region_bytes(store_options(o));
    if (r == 0) {
      std::fprintf(stderr, "hyperloop-bank: these sizes are not a valid store\n");
      return 2;
    }
    std::printf("%zu\n", r);
    return 0;
  }
  return run(o);
}
