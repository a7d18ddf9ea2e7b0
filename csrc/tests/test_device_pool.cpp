// DevicePool over the fake device runtime: segments come only when blocks are
// needed, never beyond the budget, and device failures leave the pool unchanged.
#include <gtest/gtest.h>

#include "byte_pattern.h"
#include "fake_device_runtime.h"
#include "hyperrag/block_pool.h"
#include "hyperrag/device.h"
#include "hyperrag/transfer_engine.h"

using hyperrag::BlockId;
using hyperrag::DevicePool;
using hyperrag::PoolExhausted;
using hyperrag::testing::FakeDeviceRuntime;
using hyperrag::testing::pattern;

namespace {
std::string allocate_error(DevicePool& pool, std::size_t n) {
  try {
    pool.allocate(n);
  } catch (const PoolExhausted& e) {
    return e.what();
  }
  ADD_FAILURE() << "allocate(" << n << ") did not throw";
  return {};
}
}  // namespace

TEST(DevicePool, RejectsBadConfig) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  EXPECT_THROW(DevicePool(nullptr, 64, 4, 2), std::invalid_argument);
  EXPECT_THROW(DevicePool(rt, 0, 4, 2), std::invalid_argument);
  EXPECT_THROW(DevicePool(rt, 64, 0, 2), std::invalid_argument);
  EXPECT_THROW(DevicePool(rt, 64, 4, 0), std::invalid_argument);
}

TEST(DevicePool, GrowsBySegmentsOnDemandUpToTheBudget) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  DevicePool pool(rt, 1024, 10, 4);
  EXPECT_EQ(rt->allocated_bytes(), 0u);  // nothing up front
  EXPECT_EQ(pool.free_blocks(), 10u);
  auto a = pool.allocate(3);
  EXPECT_EQ(a, (std::vector<BlockId>{0, 1, 2}));
  EXPECT_EQ(pool.segments(), 1u);
  EXPECT_EQ(rt->allocated_bytes(), 4u * 1024);
  auto b = pool.allocate(2);  // one block left in segment 0: a second segment
  EXPECT_EQ(pool.segments(), 2u);
  auto c = pool.allocate(5);  // the last segment is short: 4 + 4 + 2 = the budget
  EXPECT_EQ(pool.segments(), 3u);
  EXPECT_EQ(pool.num_blocks(), 10u);
  EXPECT_EQ(rt->allocated_bytes(), 10u * 1024);
  EXPECT_EQ(pool.used_blocks(), 10u);
  EXPECT_EQ(pool.free_blocks(), 0u);
  const std::string error = allocate_error(pool, 1);
  EXPECT_NE(error.find("budget of 10"), std::string::npos) << error;
  // Freed blocks are reused without asking the device again.
  pool.free(b);
  const std::size_t mallocs = rt->malloc_calls();
  auto d = pool.allocate(2);
  EXPECT_EQ(rt->malloc_calls(), mallocs);
  EXPECT_EQ(pool.used_blocks(), 10u);
}

TEST(DevicePool, ARequestBeyondTheBudgetAllocatesNothing) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  DevicePool pool(rt, 256, 6, 2);
  pool.allocate(1);
  allocate_error(pool, 6);
  EXPECT_EQ(pool.segments(), 1u);
  EXPECT_EQ(pool.used_blocks(), 1u);
}

TEST(DevicePool, DeviceOutOfMemoryNamesTheErrorAndKeepsThePoolUsable) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  rt->memory_limit = 2 * 512;
  DevicePool pool(rt, 512, 8, 2);
  auto a = pool.allocate(2);
  const std::string error = allocate_error(pool, 1);
  EXPECT_NE(error.find("cudaMalloc of a 1024-byte segment failed: cudaErrorMemoryAllocation"), std::string::npos)
      << error;
  EXPECT_EQ(pool.used_blocks(), 2u);
  pool.free(a);
  EXPECT_EQ(pool.allocate(2).size(), 2u);
  EXPECT_EQ(pool.segments(), 1u);
}

TEST(DevicePool, WriteReadAcrossSegmentsAndFreeOnDestruction) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  {
    DevicePool pool(rt, 1000, 9, 2);
    auto ids = pool.allocate(5);  // spans three segments
    EXPECT_EQ(ids, (std::vector<BlockId>{0, 1, 2, 3, 4}));
    const auto src = pattern(4500, 11);
    pool.write(ids, src.data(), src.size());
    std::vector<std::uint8_t> out(src.size());
    pool.read(ids, out.data(), out.size());
    EXPECT_EQ(out, src);
    EXPECT_THROW(pool.write(ids, src.data(), 3000), std::invalid_argument);  // needs 3 blocks, 5 given
    EXPECT_THROW(pool.read({7}, out.data(), 1000), std::invalid_argument);   // not allocated
    EXPECT_THROW(pool.data(5), std::invalid_argument);
    EXPECT_EQ(rt->allocated_bytes(), 6u * 1000);
  }
  EXPECT_EQ(rt->allocated_bytes(), 0u);
}

// The engine copies host <-> device blocks; bytes survive the round trip.
TEST(DevicePool, TransferEngineMovesBlocksBothWays) {
  auto rt = std::make_shared<FakeDeviceRuntime>();
  DevicePool pool(rt, 4096, 16, 4);
  hyperrag::TransferEngine eng(2, rt);
  const auto src = pattern(3 * 4096, 5);
  auto ids = pool.allocate(3);
  std::vector<hyperrag::CopyOp> h2d, d2h;
  std::vector<std::uint8_t> back(src.size());
  for (std::size_t k = 0; k < ids.size(); ++k) {
    h2d.push_back({pool.data(ids[k]), src.data() + k * 4096, 4096});
    d2h.push_back({back.data() + k * 4096, pool.data(ids[k]), 4096});
  }
  eng.wait(eng.submit(h2d));
  eng.wait(eng.submit(d2h));
  EXPECT_EQ(back, src);
}

// Without a device the real runtime (if compiled) reports none, so the cache
// layer keeps the gpu tier in host memory.
TEST(DevicePool, RealRuntimeReportsTheDeviceCount) {
  auto rt = hyperrag::cuda_runtime();
  EXPECT_EQ(rt != nullptr, hyperrag::cuda_compiled());
  if (rt) EXPECT_EQ(rt->device_count(), hyperrag::cuda_device_count());
}
