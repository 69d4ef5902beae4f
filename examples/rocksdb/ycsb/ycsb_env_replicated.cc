// ycsb_env_replicated.cc: open_env() with the replicated WAL.
//   "local"                        RocksDB's default Env (the synced local WAL)
//   "hyperloop[:key=value,...]"    the WAL on an EmbeddedChain in this process
//                                  (parse_embedded_options: replicas=3,
//                                  mode=offload|cpu, ring_mb, ...)
#include <rocksdb/env.h>
#include <rocksdb/options.h>

#include "replicated_rocksdb.h"
#include "ycsb_env.h"

namespace hyperloop::ycsb {
namespace {

class LocalEnv final : public EnvHandle {
 public:
  rocksdb::Env* env() override { return nullptr; }
};

class ReplicatedEnv final : public EnvHandle {
 public:
  std::unique_ptr<rocks::EmbeddedChain> chain;
  std::shared_ptr<rocks::WalFileSystem> fs;
  std::unique_ptr<rocksdb::Env> e;
  uint64_t ring_bytes = 0;
  rocksdb::Env* env() override { return e.get(); }
  void adjust_options(rocksdb::Options& o) override { rocks::apply_required_options(o, ring_bytes); }
  ~ReplicatedEnv() override {
    e.reset();
    fs.reset();
    chain.reset();
  }
};

}  // namespace

Result<std::unique_ptr<EnvHandle>> open_env(const std::string& spec) {
  if (spec == "local") return std::unique_ptr<EnvHandle>(std::make_unique<LocalEnv>());
  if (spec.rfind("hyperloop", 0) != 0 || (spec.size() > 9 && spec[9] != ':'))
    return invalid_argument("unknown --env '" + spec + "': 'local' or 'hyperloop[:key=value,...]'");
  HL_ASSIGN_OR_RETURN(rocks::EmbeddedOptions o, rocks::parse_embedded_options(spec.size() > 10 ? spec.substr(10) : ""));
  auto r = std::make_unique<ReplicatedEnv>();
  HL_ASSIGN_OR_RETURN(r->chain, rocks::EmbeddedChain::create(o));
  r->ring_bytes = o.wal.ring_bytes;
  r->fs = std::make_shared<rocks::WalFileSystem>(rocksdb::FileSystem::Default(), r->chain->wal());
  r->e = rocksdb::NewCompositeEnv(r->fs);
  return std::unique_ptr<EnvHandle>(std::move(r));
}

}  // namespace hyperloop::ycsb
