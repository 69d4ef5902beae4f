// device_test_util.h: the device under test (HYPERLOOP_TEST_DEVICE) for the
// suites that can run on any device.
//
//   HYPERLOOP_TEST_DEVICE=NAME   the device-capable suites (tests named
//                                OnDevice/..., see tests/device-suites.sh)
//                                open their client and replica devices with
//                                rnic::open_device(NAME): one Device per
//                                replica host and one for the client (on a
//                                verbs device: several contexts on it)
//   unset                        those suites run on soft NICs of a private
//                                fabric, like every other test
//
// A test cannot claim the named device and quietly run on something else:
// every device opened here is checked against the name (a soft name must give
// a soft NIC; any other name a non-soft device whose caps().name is the name),
// a mismatch is an error (the cluster's construction fails, and so the test),
// and the first device opened prints "device under test: NAME" on stdout.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <string_view>

#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"
#include "hyperloop/status.h"

namespace hyperloop::device_test {

// The name in HYPERLOOP_TEST_DEVICE; empty when unset or empty.
inline std::string test_device_name() {
  const char* e = std::getenv("HYPERLOOP_TEST_DEVICE");
  return e ? std::string(e) : std::string();
}
inline bool device_mode() { return !test_device_name().empty(); }

// "soft" (and open_device's "soft:LABEL") name the software RNIC.
inline bool is_soft_name(std::string_view name) { return name == "soft" || name.starts_with("soft:"); }

// OK if `d` is what `name` asks for: a soft NIC for a soft name, else a
// device of another backend whose caps().name is `name`.
inline Status check_device(const rnic::Device& d, const std::string& name) {
  const rnic::DeviceCaps& c = d.caps();
  const std::string got = "caps().name '" + c.name + "', caps().backend '" + c.backend + "'";
  if (is_soft_name(name)) {
    if (c.backend != "soft")
      return Status(StatusCode::kFailedPrecondition,
                    "HYPERLOOP_TEST_DEVICE=" + name + " asks for the soft NIC, but the device opened has " + got);
    return Status::ok();
  }
  if (c.backend == "soft" || c.name != name)
    return Status(StatusCode::kFailedPrecondition,
                  "HYPERLOOP_TEST_DEVICE=" + name + " asks for that device, but the device opened has " + got);
  return Status::ok();
}

// Opens `name` with rnic::open_device and checks that it is what the name
// asks for (check_device). The first success in the process prints
// "device under test: NAME (backend B)" on stdout.
// what: how errors name the device ("device NAME" unless told).
inline Result<std::unique_ptr<rnic::Device>> open_named_device(const std::string& name, const std::string& what = {}) {
  auto d = rnic::open_device(name);
  if (!d.is_ok())
    return Status(d.status().code(), (what.empty() ? "device " + name : what) + ": " + d.status().message());
  if (Status s = check_device(**d, name); !s.is_ok()) return s;
  static std::once_flag printed;
  std::call_once(printed, [&] {
    std::printf("device under test: %s (backend %s)\n", name.c_str(), (*d)->caps().backend.c_str());
    std::fflush(stdout);
  });
  return d;
}

// Opens the device under test, HYPERLOOP_TEST_DEVICE (REQUIRES: device_mode()).
inline Result<std::unique_ptr<rnic::Device>> open_device_under_test() {
  const std::string name = test_device_name();
  if (name.empty()) return Status(StatusCode::kFailedPrecondition, "HYPERLOOP_TEST_DEVICE is not set");
  return open_named_device(name, "HYPERLOOP_TEST_DEVICE=" + name);
}

// Where a parametrized suite's chains run: the forwarding mode, and whether
// on the device under test. Instantiations: Modes/... over kSoftModes (soft
// NICs of a private fabric, manual or threaded as the test says), and
// OnDevice/... over kOnDevice (kCpuForward: the one mode of a verbs device
// without cross-channel; real threads; the device under test when
// HYPERLOOP_TEST_DEVICE is set, else soft NICs of a private fabric), and
// OnDeviceOffload/... over kOnDeviceOffload (the same tests in kOffload, for
// devices with cross-channel: soft, the patched rdma_rxe;
// tests/device-suites.sh --offload).
struct Where {
  prim::ForwardMode mode = prim::ForwardMode::kOffload;
  bool on_device = false;
};
inline constexpr Where kSoftModes[] = {{prim::ForwardMode::kOffload, false}, {prim::ForwardMode::kCpuForward, false}};
inline constexpr Where kOnDevice[] = {{prim::ForwardMode::kCpuForward, true}};
inline constexpr Where kOnDeviceOffload[] = {{prim::ForwardMode::kOffload, true}};
inline void PrintTo(const Where& w, std::ostream* os) {
  *os << prim::forward_mode_name(w.mode) << (w.on_device ? " on the device under test" : "");
}
// gtest's name for an instantiation's parameter: Offload or CpuForward.
template <typename Info>
std::string where_name(const Info& info) {
  return info.param.mode == prim::ForwardMode::kOffload ? "Offload" : "CpuForward";
}

}  // namespace hyperloop::device_test
