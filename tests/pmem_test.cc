// PersistentMemory (hyperloop/pmem.h) on its own: a DRAM view over a libpmem2
// mapping of a file. What persist()/persist_dirty() made durable survives a
// power failure and a restart (destroy + open again); everything else is lost.
// Errors follow the header: kInvalidArgument, kNotFound, kUnavailable.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "fault_test_util.h"
#include "hyperloop/pmem.h"
#include "soft_test_util.h"

namespace hyperloop::fault_test {
namespace {

using soft_test::AllBytesAre;
using soft_test::BytesEqual;
using soft_test::fill_pattern;
using soft_test::IsOk;
using soft_test::must;
using soft_test::pattern;

constexpr size_t kSize = 64 << 10;

std::unique_ptr<PersistentMemory> open_pm(const std::string& path, size_t size = kSize, bool create = true) {
  return must(PersistentMemory::open(path, size, create), "PersistentMemory::open");
}

// The file's bytes as the file system has them (the durable image).
std::vector<std::byte> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  std::memcpy(b.data(), c.data(), c.size());
  return b;
}

::testing::AssertionResult HasCode(const Status& s, StatusCode code) {
  if (s.code() == code) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << s.to_string() << ", want " << status_code_name(code);
}
template <typename T>
::testing::AssertionResult HasCode(const Result<T>& r, StatusCode code) {
  if (r.is_ok()) return ::testing::AssertionFailure() << "got OK, want " << status_code_name(code);
  return HasCode(r.status(), code);
}

class PmemTest : public ::testing::Test {
 protected:
  TempDir dir_;
  std::string path_ = dir_.file("region.pmem");
};

TEST_F(PmemTest, OpenCreatesAZeroFilledFileOfTheGivenSize) {
  auto pm = open_pm(path_);
  EXPECT_EQ(pm->size(), kSize);
  EXPECT_EQ(pm->path(), path_);
  ASSERT_NE(pm->data(), nullptr);
  EXPECT_TRUE(AllBytesAre(pm->data(), kSize, 0));
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  EXPECT_EQ(std::filesystem::file_size(path_), kSize);
  EXPECT_TRUE(AllBytesAre(file_bytes(path_).data(), kSize, 0));
}

TEST_F(PmemTest, ReopenFindsExactlyWhatWasPersisted) {
  const auto kept = pattern(1000, 7);
  const auto lost = pattern(500, 8);
  {
    auto pm = open_pm(path_);
    std::memcpy(pm->data() + 4096, kept.data(), kept.size());
    pm->persist(4096, kept.size());
    std::memcpy(pm->data() + 10000, lost.data(), lost.size());  // never persisted
  }
  // The file itself holds the persisted bytes and nothing else.
  const auto f = file_bytes(path_);
  ASSERT_EQ(f.size(), kSize);
  EXPECT_TRUE(BytesEqual(f.data() + 4096, kept.data(), kept.size()));
  EXPECT_TRUE(AllBytesAre(f.data() + 10000, lost.size(), 0));

  auto pm = open_pm(path_, kSize, /*create=*/false);
  std::vector<std::byte> want(kSize);
  std::memcpy(want.data() + 4096, kept.data(), kept.size());
  EXPECT_TRUE(BytesEqual(pm->data(), want.data(), kSize));
  EXPECT_EQ(pm->dirty_bytes(), 0u);
}

TEST_F(PmemTest, UnpersistedWritesAreLostOnPowerFail) {
  auto pm = open_pm(path_);
  const auto kept = pattern(256, 1);
  std::memcpy(pm->data(), kept.data(), kept.size());
  pm->persist(0, kept.size());
  const auto lost = pattern(512, 2);
  std::memcpy(pm->data() + 128, lost.data(), lost.size());  // overwrites half the persisted bytes
  pm->mark_dirty(128, lost.size());                            // marked, not persisted: still lost
  std::memcpy(pm->data() + 30000, lost.data(), lost.size());  // not even marked
  EXPECT_TRUE(BytesEqual(pm->data() + 128, lost.data(), lost.size())) << "writes are visible before the fault";
  pm->power_fail();
  std::vector<std::byte> want(kSize);
  std::memcpy(want.data(), kept.data(), kept.size());
  EXPECT_TRUE(BytesEqual(pm->data(), want.data(), kSize));
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  EXPECT_EQ(pm->persist_dirty(), 0u) << "dirty marks must not survive a power failure";
}

TEST_F(PmemTest, UnpersistedWritesAreLostOnRestart) {
  {
    auto pm = open_pm(path_);
    fill_pattern(pm->data(), kSize, 3);
    pm->mark_dirty(0, kSize);  // marked dirty but never persisted
  }
  auto pm = open_pm(path_);
  EXPECT_TRUE(AllBytesAre(pm->data(), kSize, 0));
}

TEST_F(PmemTest, PersistDirtyPersistsMergedOverlappingAndAdjacentRangesAndReturnsTheirBytes) {
  auto pm = open_pm(path_);
  fill_pattern(pm->data(), kSize, 4);  // the whole view changes; only marked ranges become durable
  pm->mark_dirty(100, 50);             // [100, 150)
  pm->mark_dirty(120, 60);             // overlaps:  [100, 180)
  pm->mark_dirty(180, 20);             // adjacent:  [100, 200)
  pm->mark_dirty(5000, 8);             // separate:  [5000, 5008)
  pm->mark_dirty(90, 15);              // overlaps from below: [90, 200)
  pm->mark_dirty(kSize - 4, 100);      // clamped to the end: [kSize-4, kSize)
  EXPECT_EQ(pm->persist_dirty(), 110u + 8u + 4u);
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  EXPECT_EQ(pm->persist_dirty(), 0u) << "nothing left to persist";

  pm->power_fail();
  const auto p = pattern(kSize, 4);
  std::vector<std::byte> want(kSize);
  for (auto [b, e] : {std::pair<size_t, size_t>{90, 200}, {5000, 5008}, {kSize - 4, kSize}})
    std::memcpy(want.data() + b, p.data() + b, e - b);
  EXPECT_TRUE(BytesEqual(pm->data(), want.data(), kSize));
}

TEST_F(PmemTest, PowerFailAfterPersistDirtyKeepsThePersistedBytesAlsoAcrossARestart) {
  const auto a = pattern(300, 5), b = pattern(40, 6);
  {
    auto pm = open_pm(path_);
    std::memcpy(pm->data() + 1000, a.data(), a.size());
    pm->mark_dirty(1000, a.size());
    std::memcpy(pm->data() + 2000, b.data(), b.size());
    pm->mark_dirty(2000, b.size());
    EXPECT_EQ(pm->persist_dirty(), a.size() + b.size());
    pm->power_fail();
    EXPECT_TRUE(BytesEqual(pm->data() + 1000, a.data(), a.size()));
    EXPECT_TRUE(BytesEqual(pm->data() + 2000, b.data(), b.size()));
  }
  auto pm = open_pm(path_, kSize, false);
  EXPECT_TRUE(BytesEqual(pm->data() + 1000, a.data(), a.size()));
  EXPECT_TRUE(BytesEqual(pm->data() + 2000, b.data(), b.size()));
  EXPECT_TRUE(AllBytesAre(pm->data(), 1000, 0));
}

// The header: dirty_bytes() is "bytes marked dirty and not yet persisted".
// A byte marked twice is one dirty byte.
TEST_F(PmemTest, DirtyBytesCountsEachMarkedByteOnce) {
  auto pm = open_pm(path_);
  pm->mark_dirty(0, 10);
  EXPECT_EQ(pm->dirty_bytes(), 10u);
  pm->mark_dirty(100, 10);
  EXPECT_EQ(pm->dirty_bytes(), 20u);
  pm->mark_dirty(5, 10);  // [5, 15): 5 new bytes
  EXPECT_EQ(pm->dirty_bytes(), 25u);
  pm->mark_dirty(100, 10);  // all already dirty
  EXPECT_EQ(pm->dirty_bytes(), 25u);
  EXPECT_EQ(pm->persist_dirty(), 25u);
  EXPECT_EQ(pm->dirty_bytes(), 0u);
}

TEST_F(PmemTest, PersistOutsideOrAcrossTheEndIsClampedAndHarmless) {
  auto pm = open_pm(path_);
  fill_pattern(pm->data(), kSize, 9);
  pm->persist(kSize - 8, 64);  // clamped to 8 bytes
  pm->persist(kSize, 8);       // nothing
  pm->persist(kSize + 100, 8);
  pm->mark_dirty(kSize, 8);
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  pm->power_fail();
  const auto p = pattern(kSize, 9);
  EXPECT_TRUE(BytesEqual(pm->data() + kSize - 8, p.data() + kSize - 8, 8));
  EXPECT_TRUE(AllBytesAre(pm->data(), kSize - 8, 0));
}

TEST_F(PmemTest, OpeningAFileOfAnotherSizeIsInvalidArgument) {
  { auto pm = open_pm(path_); }
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, kSize * 2), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, kSize - 8), StatusCode::kInvalidArgument));
  EXPECT_EQ(std::filesystem::file_size(path_), kSize) << "a refused open must not resize the file";
  EXPECT_TRUE(IsOk(PersistentMemory::open(path_, kSize)));
}

TEST_F(PmemTest, AMissingFileWithoutCreateIsNotFoundAndNotCreated) {
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, kSize, /*create=*/false), StatusCode::kNotFound));
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(PmemTest, SizeZeroIsInvalidArgument) {
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, 0), StatusCode::kInvalidArgument));
  { auto pm = open_pm(path_); }
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, 0, false), StatusCode::kInvalidArgument));
}

// A directory no file can be created in: a read-only directory when not root;
// as root (permissions do not stop root) sysfs, which refuses new files.
TEST_F(PmemTest, AnUnwritableDirectoryIsUnavailableWithTheSystemsReason) {
  std::string dir = dir_.file("ro");
  if (::geteuid() == 0) {
    struct stat st;
    if (::stat("/sys", &st) != 0 || !S_ISDIR(st.st_mode)) GTEST_SKIP() << "root and no /sys";
    dir = "/sys";
  } else {
    std::filesystem::create_directories(dir);
    std::filesystem::permissions(dir, std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  }
  const auto r = PersistentMemory::open(dir + "/hyperloop_region.pmem", kSize);
  ASSERT_TRUE(HasCode(r, StatusCode::kUnavailable));
  EXPECT_NE(r.status().message().find(std::strerror(EACCES)), std::string::npos)
      << "message without the system's reason: " << r.status().message();
  EXPECT_NE(r.status().message().find("hyperloop_region.pmem"), std::string::npos) << r.status().message();
}

TEST_F(PmemTest, APathThroughARegularFileIsUnavailableWithTheSystemsReason) {
  { std::ofstream(dir_.file("plain")) << "x"; }
  const auto r = PersistentMemory::open(dir_.file("plain") + "/region.pmem", kSize);
  ASSERT_TRUE(HasCode(r, StatusCode::kUnavailable));
  EXPECT_NE(r.status().message().find(std::strerror(ENOTDIR)), std::string::npos) << r.status().message();
}

TEST_F(PmemTest, ContainingFindsTheObjectForInnerRangesOnly) {
  auto pm = open_pm(path_);
  std::byte* d = pm->data();
  EXPECT_EQ(PersistentMemory::containing(d, kSize), pm.get());
  EXPECT_EQ(PersistentMemory::containing(d, 1), pm.get());
  EXPECT_EQ(PersistentMemory::containing(d + 100, 200), pm.get());
  EXPECT_EQ(PersistentMemory::containing(d + kSize - 1, 1), pm.get());
  // Crossing the end, starting before, or elsewhere entirely (checked while
  // pm is the only object, so no neighbour can hold those addresses).
  EXPECT_EQ(PersistentMemory::containing(d + kSize - 1, 2), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d, kSize + 1), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + 10, kSize), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d - 1, 2), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d - 4096, 8), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + kSize, 1), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + 2 * kSize, 8), nullptr);
  uint64_t local = 0;
  EXPECT_EQ(PersistentMemory::containing(&local, 8), nullptr);
  // A second object is found for its own ranges; pm still for its own.
  auto other = open_pm(dir_.file("other.pmem"), 4096);
  EXPECT_EQ(PersistentMemory::containing(other->data() + 8, 8), other.get());
  EXPECT_EQ(PersistentMemory::containing(other->data(), 4097), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + 8, 8), pm.get());
  // Destroyed: no longer found.
  std::byte* od = other->data();
  other.reset();
  EXPECT_EQ(PersistentMemory::containing(od, 8), nullptr);
}

}  // namespace
}  // namespace hyperloop::fault_test
