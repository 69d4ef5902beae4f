// verbs_test: what rnic/verbs itself promises (hyperloop/verbs_rnic.h), on a
// real verbs device named by HYPERLOOP_VERBS_DEVICE (rxe0 in the Soft-RoCE
// VM: tests/vm). The device-independent specification is conformance_test;
// this file covers what only a verbs backend has: open by name, honest
// capabilities, kNotSupported for what verbs cannot express, address
// validation, and the group primitives and a txn store over the device.
//
// VerbsNoDevice.* needs no device (ctest runs them on every build). The
// VerbsDevice.* tests fail, never skip, when HYPERLOOP_VERBS_DEVICE is unset:
// run them where a device exists (tests/vm/suites.sh does, on rxe0).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"
#include "hyperloop/txn.h"
#include "soft_test_util.h"

namespace hyperloop {
namespace {

namespace rn = rnic;
using soft_test::IsOk;

TEST(VerbsNoDevice, UnknownNameIsNotFoundAndNamesTheDevicesFound) {
  auto d = rn::open_device("nosuchdev9");
  ASSERT_FALSE(d.is_ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find("nosuchdev9"), std::string::npos) << d.status().to_string();
  EXPECT_NE(d.status().message().find("soft"), std::string::npos) << d.status().to_string();
  const auto names = rn::list_devices();
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names[0], "soft");
  for (size_t i = 1; i < names.size(); ++i)
    EXPECT_NE(d.status().message().find(names[i]), std::string::npos) << names[i] << " missing from the message";
}

// Set to 1 where the device is rxe with the cross-channel module of
// driver-patches/linux-6.1-rxe-cross-channel loaded (tests/vm/suites.sh's
// patched stage); anywhere else the device must not claim cross-channel.
bool expect_cross_channel() {
  const char* e = std::getenv("HYPERLOOP_EXPECT_CROSS_CHANNEL");
  return e && std::string(e) == "1";
}

std::string device_name() {
  const char* e = std::getenv("HYPERLOOP_VERBS_DEVICE");
  return e ? e : "";
}

class VerbsDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = device_name();
    ASSERT_FALSE(name_.empty()) << "set HYPERLOOP_VERBS_DEVICE to a verbs device (e.g. rxe0 in tests/vm)";
    auto d = rn::open_device(name_);
    ASSERT_TRUE(IsOk(d));
    dev_ = std::move(d).value();
    ASSERT_EQ(dev_->caps().backend, "verbs");
  }
  std::unique_ptr<rn::Device> open() { return soft_test::must(rn::open_device(name_), "open_device"); }
  std::string name_;
  std::unique_ptr<rn::Device> dev_;
};

TEST_F(VerbsDevice, CapabilitiesAreWhatStandardVerbsCanDo) {
  const auto& c = dev_->caps();
  EXPECT_EQ(c.name, name_);
  EXPECT_EQ(c.cross_channel, expect_cross_channel());
  EXPECT_EQ(c.managed_queues, expect_cross_channel());
  EXPECT_FALSE(c.raw_send_ring);
  EXPECT_FALSE(c.raw_recv_ring);
  EXPECT_FALSE(c.raw_cq_ring);
  EXPECT_EQ(c.cq_ignore_overrun, expect_cross_channel());
  EXPECT_EQ(c.patchable_send_wqes, expect_cross_channel());
  EXPECT_FALSE(c.nop);
  EXPECT_FALSE(c.error_cqe_opcode);
  EXPECT_TRUE(c.completion_channel);
  EXPECT_GE(c.max_sge, 1u);
  EXPECT_GE(c.max_send_wqebbs, 256u);
  EXPECT_GE(c.max_cqe, 1024u);
  EXPECT_GT(c.max_mr_size, 1u << 20);
  EXPECT_GT(c.max_msg_size, 4096u);
  EXPECT_GE(c.max_rd_atomic, 1u);
}

TEST_F(VerbsDevice, WhatVerbsCannotExpressIsNotSupported) {
  auto pd = soft_test::must(dev_->alloc_pd(), "alloc_pd");
  auto cq = soft_test::must(dev_->create_cq({.cqe_count = 64}), "create_cq");
  const bool cc = expect_cross_channel();
  auto oi = dev_->create_cq({.cqe_count = 64, .ignore_overrun = true});
  EXPECT_EQ(oi.status().code(), cc ? StatusCode::kOk : StatusCode::kNotSupported);
  rn::QpAttr a;
  a.send_cq = cq.get();
  a.recv_cq = cq.get();
  for (int k = 0; k < 3; ++k) {
    rn::QpAttr b = a;
    (k == 0 ? b.cross_channel : k == 1 ? b.managed_send : b.managed_recv) = true;
    EXPECT_EQ(pd->create_qp(b).status().code(), cc ? StatusCode::kOk : StatusCode::kNotSupported) << k;
  }
  auto qp = soft_test::must(pd->create_qp(a), "create_qp");
  EXPECT_EQ(qp->raw_send_ring().status().code(), StatusCode::kNotSupported);
  EXPECT_EQ(qp->raw_recv_ring().status().code(), StatusCode::kNotSupported);
  EXPECT_EQ(qp->ring_send_doorbell(1).code(), StatusCode::kNotSupported);
  EXPECT_EQ(qp->ring_recv_doorbell(1).code(), StatusCode::kNotSupported);
  EXPECT_EQ(cq->raw_ring().status().code(), StatusCode::kNotSupported);
  HL_ASSERT_OK(rn::connect_pair(*qp, *soft_test::must(pd->create_qp(a), "create_qp")));
  for (auto op : {rn::WrOpcode::kNop, rn::WrOpcode::kWait, rn::WrOpcode::kSendEnable, rn::WrOpcode::kRecvEnable}) {
    rn::SendWr wr;
    wr.opcode = op;
    wr.wait_cq = cq.get();
    wr.enable_qp = qp.get();
    // (with the patched rxe too: this QP was not created with cross_channel)
    EXPECT_EQ(qp->post_send(wr).code(), StatusCode::kNotSupported) << int(op);
  }
}

TEST_F(VerbsDevice, ForeignObjectsAndBadAttributesAreRefused) {
  auto other = open();
  auto pd = soft_test::must(dev_->alloc_pd(), "alloc_pd");
  auto cq = soft_test::must(dev_->create_cq({.cqe_count = 64}), "create_cq");
  auto foreign_cq = soft_test::must(other->create_cq({.cqe_count = 64}), "create_cq");
  rn::QpAttr a;
  a.send_cq = foreign_cq.get();
  a.recv_cq = cq.get();
  EXPECT_EQ(pd->create_qp(a).status().code(), StatusCode::kInvalidArgument);
  a.send_cq = cq.get();
  a.send_wqebbs = 100;
  EXPECT_EQ(pd->create_qp(a).status().code(), StatusCode::kInvalidArgument);
  a.send_wqebbs = 64;
  a.retry_count = 8;
  EXPECT_EQ(pd->create_qp(a).status().code(), StatusCode::kInvalidArgument);
  a.retry_count = 7;
  EXPECT_EQ(dev_->create_cq({.cqe_count = 1000}).status().code(), StatusCode::kInvalidArgument);
  auto ch = soft_test::must(other->create_completion_channel(), "channel");
  EXPECT_EQ(dev_->create_cq({.cqe_count = 64, .channel = ch.get()}).status().code(), StatusCode::kInvalidArgument);
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(pd->register_memory(buf.data(), 0, rn::kAccessLocalWrite).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pd->register_memory(buf.data(), buf.size(), rn::kAccessRemoteWrite).status().code(),
            StatusCode::kInvalidArgument);
}

// Every byte of a peer's address is checked before the QP uses it.
TEST_F(VerbsDevice, MalformedAddressesAreRefusedAndLeaveTheQpInInit) {
  auto pd = soft_test::must(dev_->alloc_pd(), "alloc_pd");
  auto cq = soft_test::must(dev_->create_cq({.cqe_count = 64}), "create_cq");
  rn::QpAttr a;
  a.send_cq = cq.get();
  a.recv_cq = cq.get();
  auto qp = soft_test::must(pd->create_qp(a), "create_qp");
  auto peer = soft_test::must(pd->create_qp(a), "create_qp");
  HL_ASSERT_OK(qp->init(rn::kAccessAllRemote));
  const rn::QpAddress good = peer->address();
  // 32 bytes, or 38 with the MAC of the GID's netdev on RoCE (verbs_util.h).
  ASSERT_TRUE(good.size == 32u || good.size == 38u) << good.size;
  std::vector<rn::QpAddress> bad;
  for (uint32_t size : {0u, 31u, 33u, 37u, 39u, 64u}) {
    rn::QpAddress x = good;
    x.size = size;
    bad.push_back(x);
  }
  {
    rn::QpAddress x = good;  // magic
    x.bytes[0] = std::byte{'X'};
    bad.push_back(x);
  }
  {
    rn::QpAddress x = good;  // QPN beyond 24 bits
    x.bytes[4] = std::byte{1};
    bad.push_back(x);
  }
  {
    rn::QpAddress x = good;  // PSN beyond 24 bits
    x.bytes[8] = std::byte{0x80};
    bad.push_back(x);
  }
  for (uint8_t mtu : {0, 6, 255}) {
    rn::QpAddress x = good;
    x.bytes[14] = std::byte{mtu};
    bad.push_back(x);
  }
  for (uint8_t ll : {0, 3, 255}) {
    rn::QpAddress x = good;
    x.bytes[15] = std::byte{ll};
    bad.push_back(x);
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(qp->connect(bad[i]).code(), StatusCode::kInvalidArgument) << "case " << i;
    EXPECT_EQ(qp->state(), rn::QpState::kInit) << "case " << i;
  }
  HL_EXPECT_OK(qp->connect(good));
  EXPECT_EQ(qp->state(), rn::QpState::kRtr);
}

// Two contexts on one device, loopback: a WRITE lands, a completion event
// wakes a sleeper, and the CQ's poll reports it.
TEST_F(VerbsDevice, AnArmedCqWakesItsChannelOnACompletion) {
  auto other = open();
  auto pd = soft_test::must(dev_->alloc_pd(), "alloc_pd");
  auto pd2 = soft_test::must(other->alloc_pd(), "alloc_pd");
  auto ch = soft_test::must(dev_->create_completion_channel(), "channel");
  auto cq = soft_test::must(dev_->create_cq({.cqe_count = 64, .channel = ch.get()}), "create_cq");
  auto cq2 = soft_test::must(other->create_cq({.cqe_count = 64}), "create_cq");
  rn::QpAttr a{.send_cq = cq.get(), .recv_cq = cq.get()};
  rn::QpAttr b{.send_cq = cq2.get(), .recv_cq = cq2.get()};
  auto qa = soft_test::must(pd->create_qp(a), "create_qp");
  auto qb = soft_test::must(pd2->create_qp(b), "create_qp");
  HL_ASSERT_OK(rn::connect_pair(*qa, *qb));
  std::vector<std::byte> src(256), dst(256);
  soft_test::fill_pattern(src.data(), src.size(), 7);
  auto smr = soft_test::must(pd->register_memory(src.data(), src.size(), rn::kAccessLocalWrite), "mr");
  auto dmr = soft_test::must(pd2->register_memory(dst.data(), dst.size(), rn::kAccessAll), "mr");
  EXPECT_EQ(ch->wait(0).status().code(), StatusCode::kDeadlineExceeded);
  HL_ASSERT_OK(cq->arm());
  const rn::Sge sg = smr->sge(0, 256);
  HL_ASSERT_OK(soft_test::post_write(*qa, sg, dmr->remote_addr(), dmr->rkey(), rn::kSendSignaled, 77));
  auto woke = ch->wait(30'000'000'000);
  ASSERT_TRUE(IsOk(woke));
  EXPECT_EQ(*woke, cq.get());
  rn::WorkCompletion wc;
  auto n = cq->poll({&wc, 1});
  ASSERT_TRUE(IsOk(n));
  ASSERT_EQ(*n, 1u);
  EXPECT_EQ(wc.wr_id, 77u);
  EXPECT_EQ(wc.status, rn::WcStatus::kSuccess);
  EXPECT_EQ(wc.opcode, rn::WcOpcode::kRdmaWrite);
  EXPECT_EQ(wc.qpn, qa->qpn());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), 256), 0);
  // A destroyed channel leaves its CQ pollable; arming it is refused.
  ch.reset();
  EXPECT_EQ(cq->arm().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(IsOk(cq->poll({&wc, 1})));
}

// A receive queue stays usable for ever when every consumed receive is
// posted again: 5 times its depth in messages (each after an unsignaled
// WRITE), one receive free at a time.
TEST_F(VerbsDevice, AReceiveQueueRefilledAsItDrainsNeverFills) {
  auto other = open();
  auto pd = soft_test::must(dev_->alloc_pd(), "alloc_pd");
  auto pd2 = soft_test::must(other->alloc_pd(), "alloc_pd");
  auto cq = soft_test::must(dev_->create_cq({.cqe_count = 256}), "create_cq");
  auto cq2 = soft_test::must(other->create_cq({.cqe_count = 256}), "create_cq");
  rn::QpAttr a{.send_cq = cq.get(), .recv_cq = cq.get(), .send_wqebbs = 64, .recv_wqes = 64};
  rn::QpAttr b{.send_cq = cq2.get(), .recv_cq = cq2.get(), .send_wqebbs = 64, .recv_wqes = 64, .max_recv_sge = 8};
  auto qa = soft_test::must(pd->create_qp(a), "create_qp");
  auto qb = soft_test::must(pd2->create_qp(b), "create_qp");
  HL_ASSERT_OK(rn::connect_pair(*qa, *qb));
  std::vector<std::byte> src(64), dst(64 * 64);
  auto smr = soft_test::must(pd->register_memory(src.data(), src.size(), rn::kAccessLocalWrite), "mr");
  auto dmr = soft_test::must(pd2->register_memory(dst.data(), dst.size(), rn::kAccessLocalWrite|rn::kAccessRemoteWrite), "mr");
  for (uint64_t i = 0; i < 64; ++i) HL_ASSERT_OK(soft_test::post_recv(*qb, dmr->sge(i * 64, 64), i));
  auto take = [](rn::CompletionQueue& q) {
    rn::WorkCompletion wc{};
    const uint64_t end = monotonic_ns() + 30'000'000'000ull;
    while (monotonic_ns() < end) {
      auto n = q.poll({&wc, 1});
      if (!n.is_ok() || *n == 1) break;
    }
    return wc;
  };
  for (uint64_t i = 0; i < 320; ++i) {
    HL_ASSERT_OK(soft_test::post_write(*qa, smr->sge(0, 8), dmr->remote_addr(0), dmr->rkey(), 0, 0));
    HL_ASSERT_OK(soft_test::post_send_msg(*qa, smr->sge(0, 64), rn::kSendSignaled, i));
    const auto r = take(*cq2);
    ASSERT_EQ(r.status, rn::WcStatus::kSuccess) << "message " << i;
    ASSERT_EQ(r.wr_id, i % 64) << "message " << i;
    const auto s = take(*cq);  // the unsignaled WRITE before it makes none
    ASSERT_EQ(s.status, rn::WcStatus::kSuccess) << "message " << i;
    ASSERT_EQ(s.wr_id, i) << "message " << i;
    HL_ASSERT_OK(soft_test::post_recv(*qb, dmr->sge((i % 64) * 64, 64), i % 64)) << "message " << i;
  }
}

// The group primitives over the device: client and 3 replicas, each its own
// context; every replica holds what was written. In kCpuForward always; in
// kOffload where the device has cross-channel (the patched rxe), else that
// is kNotSupported.
TEST_F(VerbsDevice, AChainOfThreeForwardsByCpuAndByTheNicOnlyWithCrossChannel) {
  std::vector<std::unique_ptr<rn::Device>> devs;
  std::vector<std::unique_ptr<prim::ReplicaHost>> hosts;
  std::vector<prim::ReplicaHost*> ptrs;
  constexpr uint32_t kTenant = 5;
  constexpr size_t kRegion = 1 << 16;
  for (int i = 0; i < 3; ++i) {
    devs.push_back(open());
    hosts.push_back(soft_test::must(prim::ReplicaHost::create(*devs.back()), "ReplicaHost::create"));
    HL_ASSERT_OK(hosts.back()->register_tenant(kTenant, kRegion));
    ptrs.push_back(hosts.back().get());
  }
  prim::GroupOptions o;
  o.tenant = kTenant;
  o.region_size = kRegion;
  o.slots = 64;
  o.rearm_batch = 8;
  o.op_timeout_ns = 20'000'000'000;  // TCG emulation is slow; a real device answers in microseconds
  std::vector<prim::ForwardMode> modes = {prim::ForwardMode::kCpuForward};
  if (expect_cross_channel()) {
    modes.push_back(prim::ForwardMode::kOffload);
  } else {
    o.mode = prim::ForwardMode::kOffload;
    auto off = prim::Group::create(*dev_, ptrs, o);
    ASSERT_FALSE(off.is_ok());
    EXPECT_EQ(off.status().code(), StatusCode::kNotSupported) << off.status().to_string();
  }
  for (const prim::ForwardMode mode : modes) {
    SCOPED_TRACE(std::string(prim::forward_mode_name(mode)));
    o.mode = mode;
    auto g = soft_test::must(prim::Group::create(*dev_, ptrs, o), "Group::create");
    std::vector<std::byte> model(kRegion);
    HL_ASSERT_OK(g->read(0, 0, model));  // the region as the mode before left it
    std::vector<prim::Op> ops(200);
    for (size_t i = 0; i < ops.size(); ++i) {
      auto bytes = soft_test::pattern(100 + i % 200, uint32_t(i));
      const uint64_t off = (i * 997) % (kRegion - 512);
      HL_ASSERT_OK(g->write(ops[i], off, bytes));
      std::memcpy(model.data() + off, bytes.data(), bytes.size());
      HL_ASSERT_OK(g->wait(ops[i]));
      HL_ASSERT_OK(ops[i].status());
    }
    prim::Op cas, cp, fl;
    uint64_t word;
    std::memcpy(&word, model.data() + 4096, 8);
    HL_ASSERT_OK(g->cas(cas, 4096, word, 0x1122334455667788ull, 0x7));
    HL_ASSERT_OK(g->wait(cas));
    HL_ASSERT_OK(cas.status());
    const uint64_t swapped = 0x1122334455667788ull;
    std::memcpy(model.data() + 4096, &swapped, 8);
    HL_ASSERT_OK(g->memcpy(cp, 0, 32768, 1024));
    std::memcpy(model.data() + 32768, model.data(), 1024);
    HL_ASSERT_OK(g->wait(cp));
    HL_ASSERT_OK(cp.status());
    HL_ASSERT_OK(g->flush(fl, 0, kRegion));
    HL_ASSERT_OK(g->wait(fl));
    HL_ASSERT_OK(fl.status());
    std::vector<std::byte> got(kRegion);
    for (uint32_t r = 0; r < 3; ++r) {
      HL_ASSERT_OK(g->read(r, 0, got));
      EXPECT_TRUE(soft_test::BytesEqual(got.data(), model.data(), kRegion)) << "replica " << r;
    }
  }
}

// A transactional store over the device: commits, drains to every replica, reads.
TEST_F(VerbsDevice, AStoreCommitsOverTheDevice) {
  std::vector<std::unique_ptr<rn::Device>> devs;
  std::vector<std::unique_ptr<prim::ReplicaHost>> hosts;
  std::vector<prim::ReplicaHost*> ptrs;
  txn::StoreOptions so;
  so.tenant = 9;
  so.group.mode = prim::ForwardMode::kCpuForward;
  so.group.slots = 64;
  so.group.op_timeout_ns = 20'000'000'000;
  for (int i = 0; i < 3; ++i) {
    devs.push_back(open());
    hosts.push_back(soft_test::must(prim::ReplicaHost::create(*devs.back()), "ReplicaHost::create"));
    HL_ASSERT_OK(hosts.back()->register_tenant(so.tenant, txn::Store::region_bytes(so)));
    ptrs.push_back(hosts.back().get());
  }
  auto store = soft_test::must(txn::Store::open(*dev_, ptrs, so), "Store::open");
  for (uint64_t k = 0; k < 50; ++k) {
    auto t = store->begin();
    const uint64_t v = k * 3 + 1;
    HL_ASSERT_OK(t.write(k * 64, {reinterpret_cast<const std::byte*>(&v), 8}));
    HL_ASSERT_OK(t.commit());
  }
  HL_ASSERT_OK(store->drain());
  for (uint64_t k = 0; k < 50; ++k) {
    uint64_t v = 0;
    HL_ASSERT_OK(store->read(k * 64, {reinterpret_cast<std::byte*>(&v), 8}));
    EXPECT_EQ(v, k * 3 + 1) << "key " << k;
  }
  EXPECT_TRUE(store->healthy());
}

}  // namespace
}  // namespace hyperloop
