// hyperloop-ycsb: YCSB's core workloads A-F against RocksDB, on the Env that
// --env names (ycsb_env.h). Loads --records records into a fresh --dir, runs
// --operations operations over --threads threads, and prints both phases in
// YCSB's format. Usage: hyperloop-ycsb --help.
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>

#include "ycsb.h"
#include "ycsb_env.h"

namespace hyperloop::ycsb {
namespace {

Status from_rocksdb(const rocksdb::Status& s) {
  if (s.ok()) return Status::ok();
  if (s.IsNotFound()) return not_found(s.ToString());
  if (s.IsCorruption()) return Status(StatusCode::kDataLoss, s.ToString());
  if (s.IsInvalidArgument()) return invalid_argument(s.ToString());
  return unavailable(s.ToString());
}

// A record is one value: per field, a 4-byte little-endian length and the
// name, then a 4-byte length and the value.
void put_bytes(std::string* out, const std::string& s) {
  const auto n = static_cast<uint32_t>(s.size());
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out->append(s);
}
std::string encode(const Fields& fields) {
  std::string out;
  for (const auto& [name, value] : fields) {
    put_bytes(&out, name);
    put_bytes(&out, value);
  }
  return out;
}
bool get_bytes(const rocksdb::Slice& in, size_t* pos, std::string* out) {
  if (in.size() - *pos < 4) return false;
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(static_cast<unsigned char>(in[*pos + i])) << (8 * i);
  *pos += 4;
  if (in.size() - *pos < n) return false;
  out->assign(in.data() + *pos, n);
  *pos += n;
  return true;
}
Status decode(const rocksdb::Slice& in, Fields* out) {
  out->clear();
  for (size_t pos = 0; pos < in.size();) {
    std::string name, value;
    if (!get_bytes(in, &pos, &name) || !get_bytes(in, &pos, &value))
      return Status(StatusCode::kDataLoss, "truncated record");
    out->emplace_back(std::move(name), std::move(value));
  }
  return Status::ok();
}

// The RocksDB binding: as YCSB's, an update reads the record, merges the new
// fields and writes it back, so two concurrent updates of one key may lose
// one's fields. Safe for concurrent use (RocksDB's DB is).
class RocksDb final : public Db {
 public:
  static Result<std::unique_ptr<RocksDb>> open(const std::string& dir, const rocksdb::Options& options, bool sync) {
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(options, dir, &raw);
    if (!s.ok()) return from_rocksdb(s);
    return std::unique_ptr<RocksDb>(new RocksDb(raw, sync));
  }

  Status insert(const std::string& key, const Fields& values) override {
    return from_rocksdb(db_->Put(write_, key, encode(values)));
  }
  Status read(const std::string& key, Fields* out) override {
    std::string value;
    HL_RETURN_IF_ERROR(from_rocksdb(db_->Get(rocksdb::ReadOptions(), key, &value)));
    return decode(value, out);
  }
  Status update(const std::string& key, const Fields& values) override {
    Fields record;
    HL_RETURN_IF_ERROR(read(key, &record));
    for (const auto& [name, value] : values) {
      auto it = std::find_if(record.begin(), record.end(), [&](const auto& f) { return f.first == name; });
      if (it != record.end()) it->second = value;
      else record.emplace_back(name, value);
    }
    return from_rocksdb(db_->Put(write_, key, encode(record)));
  }
  Status scan(const std::string& start_key, int count, std::vector<Fields>* out) override {
    out->clear();
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(start_key); it->Valid() && static_cast<int>(out->size()) < count; it->Next()) {
      out->emplace_back();
      HL_RETURN_IF_ERROR(decode(it->value(), &out->back()));
    }
    return from_rocksdb(it->status());
  }

 private:
  RocksDb(rocksdb::DB* db, bool sync) : db_(db) { write_.sync = sync; }
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::WriteOptions write_;
};

constexpr const char* kUsage =
    "usage: hyperloop-ycsb [flags]\n"
    "  --workload a..f      YCSB core workload (default a)\n"
    "  --records N          recordcount (default 1000)\n"
    "  --operations N       operationcount (default 1000)\n"
    "  --threads T          client threads (default 1)\n"
    "  --fieldcount N       fields per record (default 10)\n"
    "  --fieldlength N      bytes per field (default 100)\n"
    "  --seed N             generator seed (default 1)\n"
    "  --dir DIR            RocksDB directory (default /tmp/hyperloop-ycsb); its DB is destroyed first\n"
    "  --use-existing       keep the DB in DIR and skip the load phase\n"
    "  --sync 0|1           WriteOptions::sync (default 1)\n"
    "  --env SPEC           storage under RocksDB (default local)\n";

struct Flags {
  Workload workload;
  std::string dir = "/tmp/hyperloop-ycsb";
  std::string env = "local";
  bool sync = true;
  bool use_existing = false;
};

template <typename T>
Status parse_number(const std::string& flag, const std::string& text, T min, T* out) {
  T v{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty() || v < min)
    return invalid_argument(flag + " wants an integer >= " + std::to_string(min) + ", got '" + text + "'");
  *out = v;
  return Status::ok();
}

Result<Flags> parse_flags(int argc, char** argv) {
  Flags f;
  std::string letter = "a";
  struct Numbers {
    std::optional<int64_t> records, operations;
    std::optional<int> threads, fieldcount, fieldlength;
    std::optional<uint64_t> seed;
  } n;
  for (int i = 1; i < argc; ++i) {
    std::string name = argv[i], value;
    if (name.rfind("--", 0) != 0) return invalid_argument("unexpected argument '" + name + "'");
    if (name == "--use-existing") {
      f.use_existing = true;
      continue;
    }
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return invalid_argument(name + " needs a value");
    }
    auto num = [&](auto& slot, auto min) -> Status {
      typename std::remove_reference_t<decltype(slot)>::value_type v{};
      HL_RETURN_IF_ERROR(parse_number(name, value, min, &v));
      slot = v;
      return Status::ok();
    };
    if (name == "--workload") letter = value;
    else if (name == "--records") HL_RETURN_IF_ERROR(num(n.records, int64_t{1}));
    else if (name == "--operations") HL_RETURN_IF_ERROR(num(n.operations, int64_t{0}));
    else if (name == "--threads") HL_RETURN_IF_ERROR(num(n.threads, 1));
    else if (name == "--fieldcount") HL_RETURN_IF_ERROR(num(n.fieldcount, 1));
    else if (name == "--fieldlength") HL_RETURN_IF_ERROR(num(n.fieldlength, 0));
    else if (name == "--seed") HL_RETURN_IF_ERROR(num(n.seed, uint64_t{0}));
    else if (name == "--dir") f.dir = value;
    else if (name == "--env") f.env = value;
    else if (name == "--sync") {
      if (value != "0" && value != "1") return invalid_argument("--sync wants 0 or 1, got '" + value + "'");
      f.sync = value == "1";
    } else {
      return invalid_argument("unknown flag '" + name + "'");
    }
  }
  if (f.dir.empty()) return invalid_argument("--dir must not be empty");
  HL_ASSIGN_OR_RETURN(f.workload, core_workload(letter));
  Workload& w = f.workload;
  if (n.records) w.record_count = *n.records;
  if (n.operations) w.operation_count = *n.operations;
  if (n.threads) w.threads = *n.threads;
  if (n.fieldcount) w.field_count = *n.fieldcount;
  if (n.fieldlength) w.field_length = *n.fieldlength;
  if (n.seed) w.seed = *n.seed;
  HL_RETURN_IF_ERROR(validate(w));
  return f;
}

int fail(const char* what, const Status& s) {
  std::fprintf(stderr, "hyperloop-ycsb: %s: %s\n", what, s.message().c_str());
  return 1;
}

int run_main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  Result<Flags> flags = parse_flags(argc, argv);
  if (!flags) {
    std::fprintf(stderr, "hyperloop-ycsb: %s\n%s", flags.status().message().c_str(), kUsage);
    return 2;
  }
  const Flags& f = *flags;

  std::string params = describe(f.workload);
  params += "dir=" + f.dir + "\nsync=" + (f.sync ? "1" : "0") + "\nenv=" + f.env + "\n";
  params += std::string("useexisting=") + (f.use_existing ? "true" : "false") + "\n";
  for (size_t pos = 0; pos < params.size();) {
    const size_t nl = params.find('\n', pos);
    std::printf("# %s\n", params.substr(pos, nl - pos).c_str());
    pos = nl + 1;
  }

  // The handle outlives the DB: `db` is declared after it.
  Result<std::unique_ptr<EnvHandle>> env = open_env(f.env);
  if (!env) {
    std::fprintf(stderr, "hyperloop-ycsb: %s\n", env.status().message().c_str());
    return 2;
  }
  rocksdb::Options options;
  options.create_if_missing = true;
  options.info_log_level = rocksdb::WARN_LEVEL;
  if ((*env)->env() != nullptr) options.env = (*env)->env();
  // As YCSB's RocksDB binding (RocksDBClient.initRocksDB) sets them.
  options.OptimizeLevelStyleCompaction();
  options.IncreaseParallelism(static_cast<int>(std::max(1u, std::thread::hardware_concurrency()) * 2));
  (*env)->adjust_options(options);

  if (!f.use_existing) {
    // Removes only RocksDB's files in the directory, through the chosen Env.
    rocksdb::Status s = rocksdb::DestroyDB(f.dir, options);
    if (!s.ok() && !s.IsNotFound() && !s.IsPathNotFound()) return fail("wiping --dir", from_rocksdb(s));
  }
  Result<std::unique_ptr<RocksDb>> db = RocksDb::open(f.dir, options, f.sync);
  if (!db) return fail("opening RocksDB", db.status());

  if (!f.use_existing) {
    Result<Report> loaded = load(**db, f.workload);
    if (!loaded) return fail("load", loaded.status());
    std::printf("# load phase\n%s", format_report(*loaded).c_str());
  }
  Result<Report> ran = run(**db, f.workload);
  if (!ran) return fail("run", ran.status());
  std::printf("# run phase\n%s", format_report(*ran).c_str());
  return 0;
}

}  // namespace
}  // namespace hyperloop::ycsb

int main(int argc, char** argv) { return hyperloop::ycsb::run_main(argc, argv); }
