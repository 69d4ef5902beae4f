// ycsb_env.h: how hyperloop-ycsb turns its --env SPEC into a rocksdb::Env.
//
// The one coupling between the YCSB driver and the storage it runs on:
// ycsb_env_local.cc implements open_env() for "local" (RocksDB's default Env);
// a replicated build compiles its own implementation of this function instead
// (CMake: HYPERLOOP_YCSB_ENV_SOURCES).
#pragma once

#include <memory>
#include <string>

#include "hyperloop/status.h"

namespace rocksdb {
class Env;
struct Options;
}

namespace hyperloop::ycsb {

// Owns whatever must outlive the RocksDB instance opened on env() (an Env, a
// FileSystem, connections to replicas ...). Destroy it after closing the DB.
class EnvHandle {
 public:
  virtual ~EnvHandle() = default;
  // The Env to put in rocksdb::Options::env; nullptr means RocksDB's default.
  virtual rocksdb::Env* env() = 0;
  // Sets the options the storage needs (the replicated WAL's: its
  // check_options rules); called last on the options, before the DB opens.
  virtual void adjust_options(rocksdb::Options&) {}
};

// The Env named by `spec`. Errors: kInvalidArgument for a spec this build does
// not know; whatever opening the storage returns otherwise.
Result<std::unique_ptr<EnvHandle>> open_env(const std::string& spec);

}  // namespace hyperloop::ycsb
