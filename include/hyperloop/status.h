// hyperloop/status.h: errors as values.
//
// Every fallible call on the data path returns a Status or a Result<T>; nothing
// on the data path throws. A Status is cheap to copy when OK (one byte plus an
// empty string) and carries a code and a human-readable message otherwise.
//
// Thread-safety: Status and Result are plain values; distinct objects may be
// used from distinct threads freely.
#pragma once

#include <cassert>
#include <cstdint>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace hyperloop {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,    // malformed request: bad size, alignment, flags ...
  kOutOfRange,         // offset/length outside a region or ring
  kNotFound,           // no such device, key, queue pair ...
  kAlreadyExists,
  kPermissionDenied,   // access flags or protection domain forbid it
  kFailedPrecondition, // object in the wrong state (e.g. QP not in RTS)
  kResourceExhausted,  // ring full, no free slot, table full
  kUnavailable,        // peer dead, link cut, device crashed
  kDeadlineExceeded,   // bounded wait ran out
  kAborted,            // operation cancelled (e.g. flushed by a QP error)
  kDataLoss,           // persistent data found torn or unreadable
  kNotSupported,       // the device lacks the capability
  kInternal,           // a bug in hyperloop: please report
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "OK" or "<CodeName>: <message>".
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status failed_precondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status not_supported(std::string m) { return {StatusCode::kNotSupported, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Result<T>: either a T or a non-OK Status. Accessing value() of an error
// Result is a programming error (asserts in debug builds).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    assert(!status_.is_ok() && "Result constructed from an OK status without a value");
    if (status_.is_ok()) status_ = internal_error("Result built from OK status without value");
  }

  bool is_ok() const { return value_.has_value(); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const { return status_; }

  T& value() & { assert(is_ok()); return *value_; }
  const T& value() const& { assert(is_ok()); return *value_; }
  T&& value() && { assert(is_ok()); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace hyperloop

#define HL_CONCAT_INNER_(a, b) a##b
#define HL_CONCAT_(a, b) HL_CONCAT_INNER_(a, b)

// Returns the Status from the enclosing function if `expr` is not OK.
#define HL_RETURN_IF_ERROR(expr)                          \
  do {                                                    \
    ::hyperloop::Status hl_status_ = (expr);              \
    if (!hl_status_.is_ok()) return hl_status_;           \
  } while (0)

// HL_ASSIGN_OR_RETURN(auto x, MakeX()); binds the value or returns the error.
#define HL_ASSIGN_OR_RETURN(lhs, expr) \
  HL_ASSIGN_OR_RETURN_IMPL_(HL_CONCAT_(hl_result_, __LINE__), lhs, expr)
#define HL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.is_ok()) return tmp.status();          \
  lhs = std::move(tmp).value()
