// hyperloop/log.h: levelled, structured logs.
//
// Every component reports connections, refusals, broken chain members and
// recoveries as one record: a level, the component ("control", "wire",
// "member", "daemon", ...), an event name and key=value fields. Records go to
// one process-wide sink. By default that sink writes warnings and errors to
// stderr in logfmt (`ts=... level=warn component=wire event=frame_rejected
// peer=127.0.0.1:4711 reason="bad magic"`); a program installs its own sink
// to route them elsewhere (a test collects them, a daemon logs info too).
//
// Thread-safety: every function may be called from any thread. The sink is
// called with no hyperloop lock held that a sink could need, possibly from
// several threads at once, and must not call back into set_log_sink().
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

namespace hyperloop {

enum class LogLevel : uint8_t { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
std::string_view log_level_name(LogLevel l);

struct LogField {
  std::string_view key;
  std::string value;
  LogField(std::string_view k, std::string v) : key(k), value(std::move(v)) {}
  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const char* v) : key(k), value(v) {}
  template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
  LogField(std::string_view k, T v) : key(k), value(std::to_string(v)) {}
};

struct LogRecord {
  LogLevel level = LogLevel::kInfo;
  std::string_view component;
  std::string_view event;
  std::span<const LogField> fields;
  uint64_t unix_ns = 0;  // wall-clock time the record was made
};

using LogSink = std::function<void(const LogRecord&)>;

// Replaces the sink (an empty function: records are dropped) and the lowest
// level passed to it. Returns once no thread is inside the previous sink, so
// whatever that sink refers to may be destroyed right after.
void set_log_sink(LogSink sink, LogLevel min_level = LogLevel::kInfo);
// Restores the default: logfmt on stderr, warnings and errors.
void reset_log_sink();
// The lowest level that reaches the sink now (cheap; use it to skip building
// fields for records nobody wants).
LogLevel log_min_level();
inline bool log_enabled(LogLevel l) { return l >= log_min_level(); }

void log(LogLevel level, std::string_view component, std::string_view event,
         std::initializer_list<LogField> fields = {});

// One line of logfmt for a record (no trailing newline): values with spaces,
// quotes, '=' or control bytes are quoted and escaped, so a peer's bytes in a
// field cannot forge fields or lines.
std::string format_logfmt(const LogRecord& r);
// A sink writing format_logfmt lines to stderr (one write per record).
LogSink stderr_log_sink();

}  // namespace hyperloop
