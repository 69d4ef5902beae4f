// Specs for hyperloop/status.h (Status, Result, HL_RETURN_IF_ERROR,
// HL_ASSIGN_OR_RETURN), status_code_name / Status::to_string (rnic/rnic.cc),
// and the mlx5 syndrome -> WcStatus mapping (rnic::wc_status_from_syndrome).
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "hyperloop/mlx5/prm.h"
#include "hyperloop/rnic.h"
#include "hyperloop/status.h"

namespace {

using hyperloop::Result;
using hyperloop::Status;
using hyperloop::StatusCode;
using hyperloop::rnic::WcStatus;
namespace mlx5 = hyperloop::mlx5;

constexpr StatusCode kAllCodes[] = {
    StatusCode::kOk,           StatusCode::kInvalidArgument,   StatusCode::kOutOfRange,
    StatusCode::kNotFound,     StatusCode::kAlreadyExists,     StatusCode::kPermissionDenied,
    StatusCode::kFailedPrecondition, StatusCode::kResourceExhausted, StatusCode::kUnavailable,
    StatusCode::kDeadlineExceeded,   StatusCode::kAborted,           StatusCode::kDataLoss,
    StatusCode::kNotSupported,       StatusCode::kInternal,
};

// ---- Status ---------------------------------------------------------------------

TEST(Status, DefaultConstructedIsOk) {
  const Status s;
  EXPECT_TRUE(s.is_ok());
  EXPECT_TRUE(static_cast<bool>(s));
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.message(), "");
}

TEST(Status, OkFactoryIsOk) {
  const Status s = Status::ok();
  EXPECT_TRUE(s.is_ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.to_string(), "OK");
}

TEST(Status, ErrorCarriesCodeAndMessage) {
  const Status s(StatusCode::kResourceExhausted, "send ring full");
  EXPECT_FALSE(s.is_ok());
  EXPECT_FALSE(static_cast<bool>(s));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "send ring full");
}

// Copies keep code and message; the original is unaffected by moving from a copy.
TEST(Status, CopyAndMovePreserveCodeAndMessage) {
  const Status a(StatusCode::kNotFound, "no qp 7");
  Status b = a;
  const Status c = std::move(b);
  EXPECT_EQ(c.code(), StatusCode::kNotFound);
  EXPECT_EQ(c.message(), "no qp 7");
  EXPECT_EQ(a.message(), "no qp 7");
}

// Each helper builds its own code and keeps the message.
TEST(Status, HelpersMapToTheirCodes) {
  const std::pair<Status, StatusCode> cases[] = {
      {hyperloop::invalid_argument("m"), StatusCode::kInvalidArgument},
      {hyperloop::out_of_range("m"), StatusCode::kOutOfRange},
      {hyperloop::not_found("m"), StatusCode::kNotFound},
      {hyperloop::permission_denied("m"), StatusCode::kPermissionDenied},
      {hyperloop::failed_precondition("m"), StatusCode::kFailedPrecondition},
      {hyperloop::resource_exhausted("m"), StatusCode::kResourceExhausted},
      {hyperloop::unavailable("m"), StatusCode::kUnavailable},
      {hyperloop::not_supported("m"), StatusCode::kNotSupported},
      {hyperloop::internal_error("m"), StatusCode::kInternal},
  };
  for (const auto& [s, code] : cases) {
    EXPECT_EQ(s.code(), code) << hyperloop::status_code_name(code);
    EXPECT_FALSE(s.is_ok());
    EXPECT_EQ(s.message(), "m");
  }
}

// ---- names and to_string ------------------------------------------------------------

TEST(StatusCodeName, EveryCodeHasItsName) {
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kOk), "OK");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kInvalidArgument), "InvalidArgument");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kOutOfRange), "OutOfRange");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kNotFound), "NotFound");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kAlreadyExists), "AlreadyExists");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kPermissionDenied), "PermissionDenied");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kFailedPrecondition), "FailedPrecondition");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kResourceExhausted), "ResourceExhausted");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kUnavailable), "Unavailable");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kDeadlineExceeded), "DeadlineExceeded");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kAborted), "Aborted");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kDataLoss), "DataLoss");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kNotSupported), "NotSupported");
  EXPECT_EQ(hyperloop::status_code_name(StatusCode::kInternal), "Internal");
}

// No two codes share a name (log lines stay unambiguous).
TEST(StatusCodeName, NamesAreDistinct) {
  std::set<std::string_view> names;
  for (StatusCode c : kAllCodes) names.insert(hyperloop::status_code_name(c));
  EXPECT_EQ(names.size(), std::size(kAllCodes));
}

// A value outside the enum (e.g. from corrupted memory) still gets a name.
TEST(StatusCodeName, OutOfRangeValueIsUnknown) {
  EXPECT_EQ(hyperloop::status_code_name(static_cast<StatusCode>(200)), "Unknown");
}

TEST(StatusToString, ErrorIsCodeNameColonMessage) {
  EXPECT_EQ(hyperloop::not_found("no RNIC named 'x'").to_string(), "NotFound: no RNIC named 'x'");
  EXPECT_EQ(Status(StatusCode::kDeadlineExceeded, "").to_string(), "DeadlineExceeded: ");
}

// OK prints "OK" even if built with a message.
TEST(StatusToString, OkIsJustOk) {
  EXPECT_EQ(Status().to_string(), "OK");
  EXPECT_EQ(Status(StatusCode::kOk, "ignored").to_string(), "OK");
}

// ---- Result ---------------------------------------------------------------------------

TEST(Result, HoldsValue) {
  Result<int> r(42);
  ASSERT_TRUE(r.is_ok());
  EXPECT_TRUE(static_cast<bool>(r));
  EXPECT_EQ(r.value(), 42);
  EXPECT_EQ(*r, 42);
  EXPECT_TRUE(r.status().is_ok());
}

TEST(Result, HoldsError) {
  Result<int> r(hyperloop::out_of_range("offset 9000 beyond 4096"));
  EXPECT_FALSE(r.is_ok());
  EXPECT_FALSE(static_cast<bool>(r));
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(r.status().message(), "offset 9000 beyond 4096");
}

TEST(Result, ArrowAndStarReachTheValue) {
  Result<std::string> r(std::string("abc"));
  EXPECT_EQ(r->size(), 3u);
  *r += "d";
  EXPECT_EQ(r.value(), "abcd");
  const Result<std::string>& cr = r;
  EXPECT_EQ(cr->front(), 'a');
  EXPECT_EQ(*cr, "abcd");
}

// Move-only values can be held and moved out.
TEST(Result, MoveOnlyValueMovesOut) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(7));
  ASSERT_TRUE(r.is_ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);
}

// Building a Result from an OK status is a programming error: debug builds
// assert; release builds turn it into an Internal error rather than a Result
// that claims success without a value.
TEST(ResultDeathTest, FromOkStatusIsAProgrammingError) {
#ifdef NDEBUG
  Result<int> r(Status::ok());
  EXPECT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
#else
  EXPECT_DEATH({ Result<int> r(Status::ok()); (void)r; }, "OK status");
#endif
}

// ---- HL_RETURN_IF_ERROR -------------------------------------------------------------------

Status step(bool ok, int* calls) {
  ++*calls;
  return ok ? Status::ok() : hyperloop::failed_precondition("step " + std::to_string(*calls));
}

Status two_steps(bool first_ok, bool second_ok, int* calls, bool* reached_end) {
  HL_RETURN_IF_ERROR(step(first_ok, calls));
  HL_RETURN_IF_ERROR(step(second_ok, calls));
  *reached_end = true;
  return Status::ok();
}

TEST(ReturnIfError, PassesThroughWhenOk) {
  int calls = 0;
  bool end = false;
  const Status s = two_steps(true, true, &calls, &end);
  EXPECT_TRUE(s.is_ok());
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(end);
}

// The first error is returned unchanged and nothing after it runs.
TEST(ReturnIfError, ReturnsFirstErrorAndStops) {
  int calls = 0;
  bool end = false;
  const Status s = two_steps(false, true, &calls, &end);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "step 1");
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(end);
}

TEST(ReturnIfError, ReturnsLaterError) {
  int calls = 0;
  bool end = false;
  const Status s = two_steps(true, false, &calls, &end);
  EXPECT_EQ(s.message(), "step 2");
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(end);
}

// Usable in an unbraced if/else (the macro is a single statement).
Status guarded(bool run, bool ok, int* calls) {
  if (run)
    HL_RETURN_IF_ERROR(step(ok, calls));
  else
    ++*calls;
  return Status::ok();
}

TEST(ReturnIfError, IsASingleStatement) {
  int calls = 0;
  EXPECT_FALSE(guarded(true, false, &calls).is_ok());
  EXPECT_TRUE(guarded(false, false, &calls).is_ok());
  EXPECT_EQ(calls, 2);
}

// ---- HL_ASSIGN_OR_RETURN --------------------------------------------------------------------

Result<int> parse(int v) {
  if (v < 0) return hyperloop::invalid_argument("negative: " + std::to_string(v));
  return v;
}

Status sum_into(int a, int b, int* out, bool* reached_end) {
  HL_ASSIGN_OR_RETURN(int x, parse(a));
  HL_ASSIGN_OR_RETURN(const int y, parse(b));  // two uses in one scope
  *out = x + y;
  *reached_end = true;
  return Status::ok();
}

TEST(AssignOrReturn, BindsValues) {
  int out = 0;
  bool end = false;
  ASSERT_TRUE(sum_into(2, 3, &out, &end).is_ok());
  EXPECT_EQ(out, 5);
  EXPECT_TRUE(end);
}

TEST(AssignOrReturn, ReturnsErrorAndStops) {
  int out = -1;
  bool end = false;
  const Status s = sum_into(2, -4, &out, &end);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "negative: -4");
  EXPECT_EQ(out, -1);
  EXPECT_FALSE(end);
}

// In a function returning Result<U>, the error status converts to Result<U>.
Result<std::string> describe(int v) {
  HL_ASSIGN_OR_RETURN(auto x, parse(v));
  return "value " + std::to_string(x);
}

TEST(AssignOrReturn, PropagatesIntoResultOfOtherType) {
  const Result<std::string> good = describe(8);
  ASSERT_TRUE(good.is_ok());
  EXPECT_EQ(*good, "value 8");
  const Result<std::string> bad = describe(-1);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "negative: -1");
}

// Assigns to an existing variable, and moves move-only values.
Result<std::unique_ptr<int>> make_box(int v) {
  if (v == 0) return hyperloop::not_found("zero");
  return std::make_unique<int>(v);
}

Status fill(std::unique_ptr<int>& dst, int v) {
  HL_ASSIGN_OR_RETURN(dst, make_box(v));
  return Status::ok();
}

TEST(AssignOrReturn, AssignsExistingVariableAndMovesMoveOnly) {
  std::unique_ptr<int> box;
  ASSERT_TRUE(fill(box, 9).is_ok());
  ASSERT_NE(box, nullptr);
  EXPECT_EQ(*box, 9);
  EXPECT_EQ(fill(box, 0).code(), StatusCode::kNotFound);
  EXPECT_EQ(*box, 9) << "left untouched on error";
}

// ---- mlx5 syndrome -> work completion status ------------------------------------------------

// Every syndrome the PRM (rdma-core MLX5_CQE_SYNDROME_*) defines maps to the
// matching WcStatus; those without a WcStatus of their own (MW_BIND,
// REMOTE_ABORTED) map to kGeneralError, as do unknown values.
TEST(WcStatusFromSyndrome, MapsEverySyndrome) {
  using hyperloop::rnic::wc_status_from_syndrome;
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeLocalLength), WcStatus::kLocalLengthError);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeLocalQpOp), WcStatus::kLocalQpOperationError);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeLocalProt), WcStatus::kLocalProtectionError);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeWrFlush), WcStatus::kFlushed);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeMwBind), WcStatus::kGeneralError);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeBadResp), WcStatus::kBadResponse);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeLocalAccess), WcStatus::kLocalAccessError);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeRemoteInvalReq), WcStatus::kRemoteInvalidRequest);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeRemoteAccess), WcStatus::kRemoteAccessError);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeRemoteOp), WcStatus::kRemoteOperationError);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeTransportRetryExc), WcStatus::kRetryExceeded);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeRnrRetryExc), WcStatus::kRnrRetryExceeded);
  EXPECT_EQ(wc_status_from_syndrome(mlx5::kSyndromeRemoteAborted), WcStatus::kGeneralError);
}

// The raw byte values of the fact sheet table (§1.10), independently of prm.h.
TEST(WcStatusFromSyndrome, MapsRawFactSheetValues) {
  using hyperloop::rnic::wc_status_from_syndrome;
  EXPECT_EQ(wc_status_from_syndrome(0x01), WcStatus::kLocalLengthError);
  EXPECT_EQ(wc_status_from_syndrome(0x02), WcStatus::kLocalQpOperationError);
  EXPECT_EQ(wc_status_from_syndrome(0x04), WcStatus::kLocalProtectionError);
  EXPECT_EQ(wc_status_from_syndrome(0x05), WcStatus::kFlushed);
  EXPECT_EQ(wc_status_from_syndrome(0x10), WcStatus::kBadResponse);
  EXPECT_EQ(wc_status_from_syndrome(0x11), WcStatus::kLocalAccessError);
  EXPECT_EQ(wc_status_from_syndrome(0x12), WcStatus::kRemoteInvalidRequest);
  EXPECT_EQ(wc_status_from_syndrome(0x13), WcStatus::kRemoteAccessError);
  EXPECT_EQ(wc_status_from_syndrome(0x14), WcStatus::kRemoteOperationError);
  EXPECT_EQ(wc_status_from_syndrome(0x15), WcStatus::kRetryExceeded);
  EXPECT_EQ(wc_status_from_syndrome(0x16), WcStatus::kRnrRetryExceeded);
}

// Anything that is not a known syndrome (0, gaps, 0xff) is a general error,
// never kSuccess.
TEST(WcStatusFromSyndrome, UnknownValuesAreGeneralError) {
  const std::set<int> known = {0x01, 0x02, 0x04, 0x05, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16};
  for (int v = 0; v < 256; ++v) {
    if (known.count(v)) continue;
    EXPECT_EQ(hyperloop::rnic::wc_status_from_syndrome(uint8_t(v)), WcStatus::kGeneralError) << v;
  }
}

// Each WcStatus has its own readable name.
TEST(WcStatusName, NamesAreDistinctAndKnown) {
  const WcStatus all[] = {WcStatus::kSuccess,           WcStatus::kLocalLengthError,
                          WcStatus::kLocalQpOperationError, WcStatus::kLocalProtectionError,
                          WcStatus::kFlushed,           WcStatus::kBadResponse,
                          WcStatus::kLocalAccessError,  WcStatus::kRemoteInvalidRequest,
                          WcStatus::kRemoteAccessError, WcStatus::kRemoteOperationError,
                          WcStatus::kRetryExceeded,     WcStatus::kRnrRetryExceeded,
                          WcStatus::kGeneralError};
  std::set<std::string_view> names;
  for (WcStatus s : all) {
    const std::string_view n = hyperloop::rnic::wc_status_name(s);
    EXPECT_NE(n, "?") << int(s);
    names.insert(n);
  }
  EXPECT_EQ(names.size(), std::size(all));
  EXPECT_EQ(hyperloop::rnic::wc_status_name(WcStatus::kSuccess), "success");
  EXPECT_EQ(hyperloop::rnic::wc_status_name(WcStatus::kRemoteAccessError), "remote access error");
}

}  // namespace
