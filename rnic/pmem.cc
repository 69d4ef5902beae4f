// PersistentMemory: a DRAM view over a libpmem2 mapping of a file.
#include "hyperloop/pmem.h"

#include <fcntl.h>
#include <libpmem2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace hyperloop {

namespace {
std::mutex g_registry_mu;
std::map<uintptr_t, PersistentMemory*> g_registry;  // view start -> object

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }
}  // namespace

struct PersistentMemory::Impl {
  std::string path;
  size_t size = 0;
  int fd = -1;
  pmem2_source* src = nullptr;
  pmem2_config* cfg = nullptr;
  pmem2_map* map = nullptr;
  std::byte* durable = nullptr;
  pmem2_persist_fn persist_fn = nullptr;
  std::byte* view = nullptr;

  mutable std::mutex mu;
  std::vector<std::pair<size_t, size_t>> dirty;  // [begin, end), merged on persist

  // Sorts and merges the dirty ranges in place. REQUIRES: mu held.
  void merge_dirty() {
    if (dirty.size() < 2) return;
    std::sort(dirty.begin(), dirty.end());
    size_t w = 0;
    for (size_t i = 1; i < dirty.size(); ++i) {
      if (dirty[i].first <= dirty[w].second) {
        dirty[w].second = std::max(dirty[w].second, dirty[i].second);
      } else {
        dirty[++w] = dirty[i];
      }
    }
    dirty.resize(w + 1);
  }

  ~Impl() {
    if (map) pmem2_map_delete(&map);
    if (cfg) pmem2_config_delete(&cfg);
    if (src) pmem2_source_delete(&src);
    if (fd >= 0) close(fd);
    std::free(view);
  }
  // REQUIRES: mu held.
  void persist_locked(size_t b, size_t e) {
    std::memcpy(durable + b, view + b, e - b);
    persist_fn(durable + b, e - b);
  }
};

PersistentMemory::PersistentMemory(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PersistentMemory::~PersistentMemory() {
  std::lock_guard<std::mutex> l(g_registry_mu);
  g_registry.erase(reinterpret_cast<uintptr_t>(impl_->view));
}

Result<std::unique_ptr<PersistentMemory>> PersistentMemory::open(const std::string& path, size_t size, bool create) {
  if (size == 0) return invalid_argument("persistent memory size must be positive");
  auto im = std::make_unique<Impl>();
  im->path = path;
  im->size = size;
  im->fd = ::open(path.c_str(), O_RDWR | (create ? O_CREAT : 0), 0644);
  if (im->fd < 0) {
    if (errno == ENOENT) return not_found("no persistent memory file " + path);
    return unavailable(sys_error("cannot open " + path));
  }
  struct stat st;
  if (fstat(im->fd, &st) != 0) return unavailable(sys_error("cannot stat " + path));
  if (st.st_size == 0) {
    if (ftruncate(im->fd, off_t(size)) != 0) return unavailable(sys_error("cannot size " + path));
  } else if (size_t(st.st_size) != size) {
    return invalid_argument(path + " holds " + std::to_string(st.st_size) + " bytes, not " + std::to_string(size));
  }
  if (pmem2_source_from_fd(&im->src, im->fd) != 0 || pmem2_config_new(&im->cfg) != 0 ||
      pmem2_config_set_required_store_granularity(im->cfg, PMEM2_GRANULARITY_PAGE) != 0 ||
      pmem2_map_new(&im->map, im->cfg, im->src) != 0)
    return unavailable("cannot map " + path + " with libpmem2: " + pmem2_errormsg());
  im->durable = static_cast<std::byte*>(pmem2_map_get_address(im->map));
  im->persist_fn = pmem2_get_persist_fn(im->map);
  im->view = static_cast<std::byte*>(std::aligned_alloc(4096, (size + 4095) & ~size_t{4095}));
  if (!im->view) return Status(StatusCode::kResourceExhausted, "no memory for the view of " + path);
  std::memcpy(im->view, im->durable, size);  // what survived is what we start from
  auto pm = std::unique_ptr<PersistentMemory>(new PersistentMemory(std::move(im)));
  std::lock_guard<std::mutex> l(g_registry_mu);
  g_registry[reinterpret_cast<uintptr_t>(pm->impl_->view)] = pm.get();
  return pm;
}

std::byte* PersistentMemory::data() const { return impl_->view; }
size_t PersistentMemory::size() const { return impl_->size; }
const std::string& PersistentMemory::path() const { return impl_->path; }

void PersistentMemory::mark_dirty(size_t offset, size_t len) {
  if (len == 0 || offset >= impl_->size) return;
  len = std::min(len, impl_->size - offset);
  std::lock_guard<std::mutex> l(impl_->mu);
  auto& d = impl_->dirty;
  // Extending the last range covers the common sequential case cheaply.
  if (!d.empty() && offset >= d.back().first && offset <= d.back().second) {
    d.back().second = std::max(d.back().second, offset + len);
  } else {
    d.emplace_back(offset, offset + len);
  }
}

void PersistentMemory::persist(size_t offset, size_t len) {
  if (len == 0 || offset >= impl_->size) return;
  len = std::min(len, impl_->size - offset);
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->persist_locked(offset, offset + len);
}

size_t PersistentMemory::persist_dirty() {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->merge_dirty();
  size_t bytes = 0;
  for (const auto& [b, e] : impl_->dirty) {
    impl_->persist_locked(b, e);
    bytes += e - b;
  }
  impl_->dirty.clear();
  return bytes;
}

size_t PersistentMemory::dirty_bytes() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->merge_dirty();
  size_t bytes = 0;
  for (const auto& [b, e] : impl_->dirty) bytes += e - b;
  return bytes;
}

void PersistentMemory::power_fail() {
  std::lock_guard<std::mutex> l(impl_->mu);
  std::memcpy(impl_->view, impl_->durable, impl_->size);
  impl_->dirty.clear();
}

PersistentMemory* PersistentMemory::containing(const void* addr, size_t len) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  std::lock_guard<std::mutex> l(g_registry_mu);
  auto it = g_registry.upper_bound(a);
  if (it == g_registry.begin()) return nullptr;
  --it;
  PersistentMemory* pm = it->second;
  const uintptr_t base = it->first;
  return (a - base <= pm->impl_->size && len <= pm->impl_->size - (a - base)) ? pm : nullptr;
}

}  // namespace hyperloop
