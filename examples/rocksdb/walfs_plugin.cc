// libhyperloop_walfs.so: the replicated WAL as a RocksDB FileSystem plugin,
// for programs that know nothing of hyperloop (stock db_bench):
//
//   HYPERLOOP_WALFS="replicas=3,mode=offload"
//   LD_PRELOAD=build/examples/rocksdb/libhyperloop_walfs.so
//     db_bench --fs_uri=hyperloop --benchmarks=fillrandom --sync=1 --write_buffer_size=4194304
//   (one command line)
//
// Loading the library registers the FileSystem "hyperloop" in RocksDB's
// ObjectLibrary. The first lookup builds an EmbeddedChain (software RNIC,
// replica hosts and their agents in this process) from HYPERLOOP_WALFS
// (parse_embedded_options; a bad value prints why and makes the lookup fail).
// At exit it prints one line of counters on stderr ("hyperloop-walfs: ...").
// The chain is deliberately never destroyed: the program may still hold the
// FileSystem while static destructors run.
#include <rocksdb/utilities/object_registry.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "replicated_rocksdb.h"

namespace {

using hyperloop::rocks::EmbeddedChain;

std::mutex g_mu;
EmbeddedChain* g_chain = nullptr;
std::shared_ptr<hyperloop::rocks::WalFileSystem> g_fs;

void report() {
  if (!g_chain) return;
  const auto w = g_chain->wal()->stats();
  std::fprintf(stderr,
               "hyperloop-walfs: replicas=%u syncs=%llu errors=%llu appends=%llu chunks=%llu bytes=%llu "
               "head_moves=%llu replica_agent_cpu_ms=%.1f\n",
               g_chain->replicas(), static_cast<unsigned long long>(g_fs->syncs()),
               static_cast<unsigned long long>(g_fs->errors()), static_cast<unsigned long long>(w.appends),
               static_cast<unsigned long long>(w.chunks), static_cast<unsigned long long>(w.bytes),
               static_cast<unsigned long long>(w.head_moves), g_chain->agent_cpu_ns() / 1e6);
}

rocksdb::FileSystem* make(const std::string&, std::unique_ptr<rocksdb::FileSystem>* guard, std::string* err) {
  std::lock_guard lk(g_mu);
  if (!g_chain) {
    const char* spec = std::getenv("HYPERLOOP_WALFS");
    auto o = hyperloop::rocks::parse_embedded_options(spec ? spec : "");
    if (!o.is_ok()) {
      *err = o.status().to_string();
      std::fprintf(stderr, "hyperloop-walfs: %s\n", err->c_str());
      return nullptr;
    }
    auto c = EmbeddedChain::create(o.value());
    if (!c.is_ok()) {
      *err = c.status().to_string();
      std::fprintf(stderr, "hyperloop-walfs: %s\n", err->c_str());
      return nullptr;
    }
    g_chain = c.value().release();
    g_fs = std::make_shared<hyperloop::rocks::WalFileSystem>(rocksdb::FileSystem::Default(), g_chain->wal());
    std::atexit(report);
  }
  // RocksDB owns what guard holds; ours stays shared.
  struct Shared final : rocksdb::FileSystemWrapper {
    explicit Shared(std::shared_ptr<rocksdb::FileSystem> t) : FileSystemWrapper(std::move(t)) {}
    static const char* kClassName() { return "HyperloopWalFileSystemRef"; }
    const char* Name() const override { return kClassName(); }
  };
  guard->reset(new Shared(g_fs));
  return guard->get();
}

const bool g_registered = [] {
  rocksdb::ObjectLibrary::Default()->AddFactory<rocksdb::FileSystem>(
      "hyperloop", make);
  return true;
}();

}  // namespace
