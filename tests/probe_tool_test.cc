// probe_tool_test: hyperloop-probe as a program (tools/probe.cc, docs/probe.md).
// Runs the built binary as a child process: on the software RNIC every step
// PASSes (exit 0); without arguments on a machine with no mlx5 device it says
// "no mlx5 device found" (exit 2); an unknown device exits 2 naming it; bad
// flags exit 64 with the usage; a fault injected into a step makes that step
// FAIL with the completion status and syndrome the device returned (exit 1)
// while the other steps still PASS. Nothing sleeps: each run is awaited with
// a bound (daemon_test_util.h's run_command).
#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "daemon_test_util.h"
#include "hyperloop/rnic.h"

#ifndef HYPERLOOP_PROBE_BIN
#error "HYPERLOOP_PROBE_BIN must name the hyperloop-probe executable"
#endif

namespace hyperloop::daemon_test {
namespace {

// A whole run, under the sanitizers and on a loaded machine too.
constexpr int kRunTimeoutMs = 120'000;
// The bound the probe gives each step here: generous, a slow machine must
// not turn into a FAIL (the default, 2000 ms, is for a real NIC).
const std::string kStepTimeout = "--timeout-ms=20000";

const std::vector<std::string> kSteps = {"rc-write",  "atomic-cas", "wait", "send-enable",
                                         "recv-patch", "chain-offload"};

RunResult run_probe(const std::vector<std::string>& args, const TempDir& dir) {
  std::vector<std::string> argv = {HYPERLOOP_PROBE_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, dir.path(), kRunTimeoutMs);
}

std::string describe(const RunResult& r) {
  return r.describe + "\n--- stdout:\n" + r.out + "--- stderr:\n" + r.err;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// The result lines of the steps ("PASS step ...", "FAIL step ...", "n/a step
// ..."), by step name; a step reported twice is a failure of the test.
std::map<std::string, std::string> step_lines(const std::string& out) {
  std::map<std::string, std::string> m;
  for (const auto& l : lines(out)) {
    std::istringstream ls(l);
    std::string verdict, step;
    if (!(ls >> verdict >> step)) continue;
    if (verdict != "PASS" && verdict != "FAIL" && verdict != "n/a") continue;
    EXPECT_EQ(m.count(step), 0u) << "step " << step << " reported twice:\n" << out;
    m[step] = l;
  }
  return m;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

TEST(ProbeTool, EveryStepPassesOnTheSoftwareRnic) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const RunResult r = run_probe({"--device", "soft", kStepTimeout}, dir);
  ASSERT_EQ(r.code, 0) << describe(r);
  EXPECT_NE(r.out.find("device soft"), std::string::npos) << describe(r);
  EXPECT_NE(r.out.find("backend soft"), std::string::npos) << describe(r);
  EXPECT_NE(r.out.find("cross_channel        yes"), std::string::npos) << describe(r);
  EXPECT_NE(r.out.find("forwarding modes     offload and cpu-forward"), std::string::npos) << describe(r);
  const auto steps = step_lines(r.out);
  EXPECT_EQ(steps.size(), kSteps.size()) << describe(r);
  for (const auto& s : kSteps) {
    ASSERT_EQ(steps.count(s), 1u) << "no line for step " << s << "\n" << describe(r);
    EXPECT_TRUE(starts_with(steps.at(s), "PASS " + s + " ")) << steps.at(s);
    EXPECT_GT(steps.at(s).size(), ("PASS " + s + " ").size() + 10) << "a PASS without its detail: " << steps.at(s);
  }
  EXPECT_NE(r.out.find("summary: 6 PASS, 0 FAIL, 0 n/a"), std::string::npos) << describe(r);
  EXPECT_EQ(r.out.find("no mlx5 device found"), std::string::npos) << "--device probes that device only";
}

// Without --device the probe reports on this machine's RDMA devices (never
// soft) and, where none is an mlx5 device, says so and exits 2 (1 if a step
// of a device it did probe, e.g. rxe0 in the VM, FAILed).
TEST(ProbeTool, WithoutArgumentsReportsTheMachinesDevicesAndTheMissingMlx5) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::vector<std::string> rdma;
  bool have_mlx5 = false;
  for (const auto& n : rnic::list_devices()) {
    if (n == "soft" || starts_with(n, "soft:")) continue;
    rdma.push_back(n);
    have_mlx5 = have_mlx5 || starts_with(n, "mlx5");
  }
  const RunResult r = run_probe({kStepTimeout}, dir);
  ASSERT_GE(r.code, 0) << describe(r);
  ASSERT_TRUE(starts_with(r.out, "RDMA devices: ")) << describe(r);
  for (const auto& l : lines(r.out))
    EXPECT_FALSE(starts_with(l, "device soft")) << "soft is not one of the machine's devices\n" << describe(r);
  for (const auto& n : rdma) EXPECT_NE(r.out.find("\ndevice " + n), std::string::npos) << n << "\n" << describe(r);
  if (rdma.empty()) {
    EXPECT_NE(r.out.find("RDMA devices: none"), std::string::npos) << describe(r);
    EXPECT_TRUE(step_lines(r.out).empty()) << describe(r);
  }
  const bool any_fail = r.out.find("\nFAIL ") != std::string::npos;
  if (!have_mlx5) {
    EXPECT_NE(r.out.find("no mlx5 device found"), std::string::npos) << describe(r);
    EXPECT_EQ(r.code, any_fail ? 1 : 2) << describe(r);
  } else {
    EXPECT_EQ(r.out.find("no mlx5 device found"), std::string::npos) << describe(r);
    EXPECT_EQ(r.code, any_fail ? 1 : 0) << describe(r);
  }
}

TEST(ProbeTool, AnUnknownDeviceExits2NamingIt) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const RunResult r = run_probe({"--device", "nosuch"}, dir);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE(r.err.find("device 'nosuch' does not open"), std::string::npos) << describe(r);
  EXPECT_NE(r.err.find("NotFound"), std::string::npos) << describe(r);
  EXPECT_TRUE(step_lines(r.out).empty()) << "no step runs on a device that does not open\n" << describe(r);
}

TEST(ProbeTool, BadFlagsExit64WithTheUsage) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<std::vector<std::string>> bad = {
      {"--bogus"},
      {"--device"},
      {"--timeout-ms", "0"},
      {"--timeout-ms=abc"},
      {"--inject-fault=nosuch"},
      {"--inject-fault=chain-offload"},  // nothing to inject there
      {"stray"},
  };
  for (const auto& args : bad) {
    const RunResult r = run_probe(args, dir);
    EXPECT_EQ(r.code, 64) << args[0] << "\n" << describe(r);
    EXPECT_NE(r.err.find("usage: hyperloop-probe"), std::string::npos) << args[0] << "\n" << describe(r);
    EXPECT_TRUE(r.out.empty()) << args[0] << "\n" << describe(r);
  }
  const RunResult r = run_probe({"--bogus"}, dir);
  EXPECT_NE(r.err.find("unknown flag '--bogus'"), std::string::npos) << describe(r);
}

TEST(ProbeTool, HelpPrintsTheUsageAndExits0) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const RunResult r = run_probe({"--help"}, dir);
  EXPECT_EQ(r.code, 0) << describe(r);
  EXPECT_TRUE(starts_with(r.out, "usage: hyperloop-probe")) << describe(r);
  EXPECT_EQ(r.out.find("inject"), std::string::npos) << "--inject-fault is hidden";
}

// A fault injected into a step is a request the device must reject: that
// step FAILs with the completion's status and syndrome (the software RNIC
// writes mlx5 CQEs: remote access error is syndrome 0x13), every other step
// still PASSes, and the run exits 1.
TEST(ProbeTool, AnInjectedFaultFailsItsStepWithTheDevicesStatus) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  for (const std::string step : {"rc-write", "atomic-cas", "wait", "send-enable", "recv-patch"}) {
    const RunResult r = run_probe({"--device=soft", kStepTimeout, "--inject-fault=" + step}, dir);
    EXPECT_EQ(r.code, 1) << step << "\n" << describe(r);
    const auto steps = step_lines(r.out);
    ASSERT_EQ(steps.size(), kSteps.size()) << step << "\n" << describe(r);
    for (const auto& s : kSteps) {
      ASSERT_EQ(steps.count(s), 1u) << s << "\n" << describe(r);
      if (s == step) {
        EXPECT_TRUE(starts_with(steps.at(s), "FAIL " + s + " remote access error syndrome 0x13 vendor_syndrome 0x"))
            << steps.at(s);
        EXPECT_NE(steps.at(s).find("fault injected"), std::string::npos) << steps.at(s);
      } else {
        EXPECT_TRUE(starts_with(steps.at(s), "PASS " + s + " ")) << "injecting into " << step << ": " << steps.at(s);
      }
    }
    EXPECT_NE(r.out.find("summary: 5 PASS, 1 FAIL, 0 n/a"), std::string::npos) << describe(r);
  }
}

// A step that cannot finish within --timeout-ms FAILs with "timeout" instead
// of hanging: 1 ms is too short for the offload chain's set-up and gWRITE.
TEST(ProbeTool, AStepThatRunsOutOfTimeFailsInsteadOfHanging) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const RunResult r = run_probe({"--device", "soft", "--timeout-ms", "1"}, dir);
  ASSERT_GE(r.code, 0) << describe(r);
  const auto steps = step_lines(r.out);
  ASSERT_EQ(steps.size(), kSteps.size()) << describe(r);
  bool timed_out = false;
  for (const auto& [s, l] : steps) {
    EXPECT_TRUE(starts_with(l, "PASS ") || starts_with(l, "FAIL " + s + " timeout ")) << l;
    timed_out = timed_out || starts_with(l, "FAIL ");
  }
  EXPECT_EQ(r.code, timed_out ? 1 : 0) << describe(r);
}

}  // namespace
}  // namespace hyperloop::daemon_test
