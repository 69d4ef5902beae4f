// rnic/mlx5 as far as a machine without a ConnectX can take it: the entry
// points give clear errors, never a crash, and the by-name dispatch sends
// only mlx5 devices to DevX. (Nothing here needs hardware; what does is
// hyperloop-probe's, docs/mlx5.md: its hca-caps step checks that the caps
// rnic/mlx5 reports agree with QUERY_HCA_CAP.)
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "hyperloop/mlx5_rnic.h"
#include "hyperloop/rnic.h"

namespace hyperloop {
namespace {

bool has_mlx5() { return !mlx5dev::device_names().empty(); }

TEST(Mlx5Backend, UnknownNameIsNotFoundAndSaysWhatExists) {
  auto d = mlx5dev::open("mlx5_does_not_exist");
  ASSERT_FALSE(d.is_ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find("mlx5 devices here:"), std::string::npos) << d.status().message();
  if (!has_mlx5()) {
    EXPECT_NE(d.status().message().find("none"), std::string::npos) << d.status().message();
  }
}

TEST(Mlx5Backend, OnlyMlx5DevicesAreListed) {
  // Every name device_names() returns is an rdma-core device, and none is
  // the soft RNIC; on a machine whose rdma-core devices are rxe only, none.
  const auto all = rnic::list_devices();
  for (const auto& n : mlx5dev::device_names()) {
    EXPECT_NE(std::find(all.begin(), all.end(), n), all.end()) << n;
    EXPECT_NE(n.rfind("rxe", 0), 0u) << n;
  }
}

TEST(Mlx5Backend, AnRxeDeviceIsNotOpenedThroughDevX) {
  for (const auto& n : rnic::list_devices()) {
    if (n.rfind("rxe", 0) != 0) continue;
    auto d = mlx5dev::open(n);
    ASSERT_FALSE(d.is_ok()) << n;
    EXPECT_EQ(d.status().code(), StatusCode::kNotFound) << d.status().to_string();
  }
}

TEST(Mlx5Backend, HcaCapsOfAnotherBackendIsAnError) {
  auto soft = rnic::open_device("soft");
  ASSERT_TRUE(soft.is_ok()) << soft.status().to_string();
  auto c = mlx5dev::hca_caps(**soft);
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("not an rnic/mlx5 device"), std::string::npos) << c.status().message();
}

TEST(Mlx5Backend, VerbsPrefixAndUnknownNames) {
  auto v = rnic::open_device("verbs:mlx5_does_not_exist");
  ASSERT_FALSE(v.is_ok());
  EXPECT_EQ(v.status().code(), StatusCode::kNotFound) << v.status().to_string();
  auto m = rnic::open_device("mlx5_does_not_exist");
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound) << m.status().to_string();
}

}  // namespace
}  // namespace hyperloop
