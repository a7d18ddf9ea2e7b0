// The CUDA transfer backend's logic against a fake device runtime: runs on any
// machine, so the error and lifetime rules are tested without a GPU.
#include <gtest/gtest.h>

#include <thread>

#include "byte_pattern.h"
#include "fake_device_runtime.h"
#include "hyperrag/transfer_engine.h"

using hyperrag::CopyOp;
using hyperrag::TransferEngine;
using hyperrag::testing::FakeDeviceRuntime;
using hyperrag::testing::pattern;

namespace {

using Bytes = std::vector<std::uint8_t>;

// n sources of distinct bytes and n zeroed destinations of `size` bytes.
struct Buffers {
  Buffers(std::size_t n, std::size_t size) {
    for (std::size_t i = 0; i < n; ++i) {
      src.push_back(pattern(size, static_cast<unsigned>(i + 1)));
      dst.emplace_back(size, 0);
    }
  }
  std::vector<CopyOp> ops() {
    std::vector<CopyOp> out;
    for (std::size_t i = 0; i < src.size(); ++i) out.push_back({dst[i].data(), src[i].data(), src[i].size()});
    return out;
  }
  std::vector<Bytes> src, dst;
};

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

std::string submit_error(TransferEngine& eng, std::vector<CopyOp> ops) {
  try {
    eng.submit(std::move(ops));
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "submit did not throw";
  return {};
}

std::string wait_error(TransferEngine& eng, std::uint64_t ticket) {
  try {
    eng.wait(ticket);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "wait did not throw";
  return {};
}

}  // namespace

// Nothing runs by itself (no callback, no query running work): poll stays false,
// and wait() alone completes the batch by synchronizing on its event.
TEST(CudaTransferFake, WaitCompletesWithoutAnyCallback) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->run_on_query = false;
  TransferEngine eng(2, rt);
  EXPECT_STREQ(eng.backend_name(), "cuda");
  Buffers b(3, 5000);
  const auto ticket = eng.submit(b.ops());
  EXPECT_EQ(rt->queued_copies(), 3u);
  EXPECT_FALSE(eng.poll(ticket));
  EXPECT_EQ(eng.stats().pending, 1u);
  eng.wait(ticket);
  EXPECT_EQ(b.dst, b.src);
  EXPECT_TRUE(eng.poll(ticket));
  const auto s = eng.stats();
  EXPECT_EQ(s.bytes, 15000u);
  EXPECT_EQ(s.batches, 1u);
  EXPECT_EQ(s.pending, 0u);
}

TEST(CudaTransferFake, PollCompletesOnceTheEventIsDone) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  TransferEngine eng(1, rt);
  Buffers b(2, 100);
  const auto ticket = eng.submit(b.ops());
  EXPECT_TRUE(eng.poll(ticket));  // the fake runs queued work when the event is queried
  EXPECT_EQ(b.dst, b.src);
  EXPECT_EQ(eng.stats().batches, 1u);
}

// A refused copy after two were queued: submit() throws only after those two
// finished, so the caller may free every buffer when it catches the error.
TEST(CudaTransferFake, FailedCopyAfterQueuedOnesSynchronizesBeforeThrowing) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->run_on_query = false;
  rt->fail_memcpy_async_call = 2;
  TransferEngine eng(1, rt);
  Buffers b(4, 4096);
  const std::string error = submit_error(eng, b.ops());
  expect_contains(error, "cudaMemcpyAsync of copy 2 (4096 bytes) failed");
  expect_contains(error, "cudaErrorInvalidValue");
  EXPECT_EQ(rt->queued_copies(), 0u);
  EXPECT_EQ(b.dst[0], b.src[0]);
  EXPECT_EQ(b.dst[1], b.src[1]);
  EXPECT_EQ(eng.stats().pending, 0u);
  // The engine keeps working after the error.
  Buffers again(1, 64);
  eng.wait(eng.submit(again.ops()));
  EXPECT_EQ(again.dst, again.src);
}

TEST(CudaTransferFake, FailedEventRecordSynchronizesBeforeThrowing) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->run_on_query = false;
  rt->fail_event_record_call = 0;
  TransferEngine eng(1, rt);
  Buffers b(2, 1000);
  expect_contains(submit_error(eng, b.ops()), "cudaEventRecord failed: cudaErrorInvalidValue");
  EXPECT_EQ(rt->queued_copies(), 0u);
  EXPECT_EQ(b.dst, b.src);
  EXPECT_EQ(eng.stats().pending, 0u);
}

// A copy faulting on the device: the ticket completes as failed and wait()
// raises the device's error, every time it is asked.
TEST(CudaTransferFake, AsynchronousErrorSurfacesOnTheTicket) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->fault_copy = 1;
  TransferEngine eng(1, rt);
  Buffers b(3, 256);
  const auto ticket = eng.submit(b.ops());
  const std::string error = wait_error(eng, ticket);
  expect_contains(error, "transfer ticket 1 failed");
  expect_contains(error, "cudaErrorIllegalAddress");
  EXPECT_TRUE(eng.poll(ticket));
  expect_contains(wait_error(eng, ticket), "cudaErrorIllegalAddress");
  const auto s = eng.stats();
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.batches, 0u);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_EQ(s.pending, 0u);
}

TEST(CudaTransferFake, AsynchronousErrorSeenByPoll) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->fault_copy = 0;
  TransferEngine eng(1, rt);
  Buffers b(1, 256);
  const auto ticket = eng.submit(b.ops());
  EXPECT_TRUE(eng.poll(ticket));  // finished, as failed
  expect_contains(wait_error(eng, ticket), "cudaErrorIllegalAddress (seen by cudaEventQuery)");
}

// The destructor drives batches nobody waited for, then releases every stream
// and event it created.
TEST(CudaTransferFake, DestructorFinishesBatchesAndReleasesHandles) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->run_on_query = false;
  Buffers b(6, 3000);
  {
    TransferEngine eng(3, rt);
    auto ops = b.ops();
    for (const CopyOp& op : ops) eng.submit({op});
    EXPECT_EQ(rt->queued_copies(), 6u);
    EXPECT_EQ(rt->live_streams(), 3u);
  }
  EXPECT_EQ(b.dst, b.src);
  EXPECT_EQ(rt->live_streams(), 0u);
  EXPECT_EQ(rt->live_events(), 0u);
}

// Work queued on the caller's stream (a producer writing the source) must land
// before the engine copies that source; without after_stream it does not.
TEST(CudaTransferFake, AfterStreamOrdersCopiesAfterTheCallersWork) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->run_on_query = false;
  hyperrag::StreamHandle caller = nullptr;
  ASSERT_EQ(rt->stream_create(&caller), hyperrag::kDeviceOk);
  TransferEngine eng(1, rt);
  const Bytes produced = pattern(2048, 7);
  for (const bool ordered : {true, false}) {
    Bytes staging(produced.size(), 0), out(produced.size(), 0);
    ASSERT_EQ(rt->memcpy_async(staging.data(), produced.data(), produced.size(), caller), hyperrag::kDeviceOk);
    std::optional<std::uintptr_t> after;
    if (ordered) after = reinterpret_cast<std::uintptr_t>(caller);
    eng.wait(eng.submit({{out.data(), staging.data(), staging.size()}}, after));
    EXPECT_EQ(out == produced, ordered) << "ordered=" << ordered;
    rt->stream_synchronize(caller);
  }
  // The legacy default stream is handle 0.
  Bytes staging(produced.size(), 0), out(produced.size(), 0);
  ASSERT_EQ(rt->memcpy_async(staging.data(), produced.data(), produced.size(), nullptr), hyperrag::kDeviceOk);
  eng.wait(eng.submit({{out.data(), staging.data(), staging.size()}}, std::uintptr_t{0}));
  EXPECT_EQ(out, produced);
  rt->stream_destroy(caller);
}

TEST(CudaTransferFake, ConcurrentPollAndWaitCompleteOnce) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  TransferEngine eng(2, rt);
  for (int round = 0; round < 50; ++round) {
    Buffers b(2, 512);
    const auto ticket = eng.submit(b.ops());
    std::thread poller([&] {
      while (!eng.poll(ticket)) std::this_thread::yield();
    });
    eng.wait(ticket);
    poller.join();
    EXPECT_EQ(b.dst, b.src);
  }
  const auto s = eng.stats();
  EXPECT_EQ(s.batches, 50u);
  EXPECT_EQ(s.pending, 0u);
}

TEST(CudaTransferFake, StreamOnTheCpuBackendIsRejected) {
  TransferEngine eng(1, TransferEngine::Backend::kCpu);
  Buffers b(1, 16);
  EXPECT_THROW(eng.submit(b.ops(), std::uintptr_t{0}), std::invalid_argument);
  EXPECT_THROW(TransferEngine(1, std::shared_ptr<hyperrag::DeviceRuntime>()), std::invalid_argument);
}
