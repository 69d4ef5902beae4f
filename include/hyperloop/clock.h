// hyperloop/clock.h: where time comes from.
//
// Everything that waits or times out takes its time from a Clock, so the same
// code runs on real time (threaded executors) and on virtual time (the
// deterministic ManualExecutor used by simulation tests).
#pragma once

#include <cstdint>
#include <functional>

namespace hyperloop {

// Nanoseconds, monotonic. An empty Clock means monotonic_ns.
using Clock = std::function<uint64_t()>;

// CLOCK_MONOTONIC in nanoseconds.
uint64_t monotonic_ns();

inline uint64_t now_ns(const Clock& c) { return c ? c() : monotonic_ns(); }

}  // namespace hyperloop
