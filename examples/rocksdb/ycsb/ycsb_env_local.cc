// ycsb_env_local.cc: open_env() for builds without replicated storage: only
// "local", RocksDB's default Env.
#include "ycsb_env.h"

namespace hyperloop::ycsb {

namespace {
class LocalEnv final : public EnvHandle {
 public:
  rocksdb::Env* env() override { return nullptr; }
};
}  // namespace

Result<std::unique_ptr<EnvHandle>> open_env(const std::string& spec) {
  if (spec == "local") return std::unique_ptr<EnvHandle>(std::make_unique<LocalEnv>());
  return invalid_argument("unknown --env '" + spec + "': this build knows only 'local'");
}

}  // namespace hyperloop::ycsb
