#include "hyperrag/block_pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <unordered_set>

#include "hyperrag/device.h"

namespace hyperrag {

namespace {
constexpr std::size_t kAlignment = 4096;  // page alignment: friendly to DMA and memcpy

void check_sizes(std::size_t block_bytes, std::size_t num_blocks, const char* count_name) {
  if (block_bytes == 0) throw std::invalid_argument("block_bytes must be > 0");
  if (num_blocks == 0) throw std::invalid_argument(std::string(count_name) + " must be > 0");
  if (block_bytes > std::numeric_limits<std::size_t>::max() / num_blocks ||
      num_blocks > static_cast<std::size_t>(std::numeric_limits<BlockId>::max())) {
    throw std::invalid_argument("block_bytes * " + std::string(count_name) + " overflows (" +
                                std::to_string(block_bytes) + " x " + std::to_string(num_blocks) + ")");
  }
}

void check_buffer(std::size_t blocks_needed, std::size_t nblocks, std::size_t nbytes, std::size_t block_bytes,
                  const char* op) {
  if (blocks_needed != nblocks) {
    throw std::invalid_argument(std::string(op) + ": a buffer of " + std::to_string(nbytes) + " bytes needs " +
                                std::to_string(blocks_needed) + " blocks of " + std::to_string(block_bytes) +
                                " bytes, but " + std::to_string(nblocks) + " block ids were given");
  }
}
}  // namespace

void BlockLedger::add(std::size_t n) {
  const std::size_t first = in_use_.size();
  // At the bottom of the stack, highest first: blocks freed earlier go out first,
  // then the new ones in ascending order.
  std::vector<BlockId> added(n);
  for (std::size_t k = 0; k < n; ++k) added[k] = static_cast<BlockId>(first + n - 1 - k);
  free_list_.insert(free_list_.begin(), added.begin(), added.end());
  in_use_.resize(first + n, 0);
}

std::vector<BlockId> BlockLedger::take(std::size_t n, std::size_t capacity) {
  if (n > free_list_.size()) {
    throw PoolExhausted("cannot allocate " + std::to_string(n) + " blocks: only " + std::to_string(free_list_.size()) +
                        " of " + std::to_string(capacity) + " are free");
  }
  std::vector<BlockId> ids(free_list_.end() - static_cast<std::ptrdiff_t>(n), free_list_.end());
  free_list_.resize(free_list_.size() - n);
  // The stack's tail is in descending order; hand ids out ascending.
  std::reverse(ids.begin(), ids.end());
  for (BlockId id : ids) in_use_[static_cast<std::size_t>(id)] = 1;
  return ids;
}

void BlockLedger::check_range(BlockId id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= in_use_.size()) {
    throw std::invalid_argument("block id " + std::to_string(id) + " out of range [0, " +
                                std::to_string(in_use_.size()) + ")");
  }
}

void BlockLedger::release(const std::vector<BlockId>& ids) {
  // Validate everything first so a bad id leaves the ledger unchanged.
  std::unordered_set<BlockId> seen;
  seen.reserve(ids.size());
  for (BlockId id : ids) {
    check_range(id);
    if (!in_use_[static_cast<std::size_t>(id)]) {
      throw std::invalid_argument("block " + std::to_string(id) + " is not allocated (double free?)");
    }
    if (!seen.insert(id).second) {
      throw std::invalid_argument("block " + std::to_string(id) + " appears twice in ids");
    }
  }
  for (BlockId id : ids) {
    in_use_[static_cast<std::size_t>(id)] = 0;
    free_list_.push_back(id);
  }
}

bool BlockLedger::allocated(BlockId id) const {
  return id >= 0 && static_cast<std::size_t>(id) < in_use_.size() && in_use_[static_cast<std::size_t>(id)];
}

void BlockLedger::check_allocated(BlockId id, const std::string& op) const {
  check_range(id);
  if (!in_use_[static_cast<std::size_t>(id)]) {
    throw std::invalid_argument(op + "block " + std::to_string(id) + " is not allocated");
  }
}

BlockPool::BlockPool(std::size_t block_bytes, std::size_t num_blocks, Pinning pinning)
    : block_bytes_(block_bytes), num_blocks_(num_blocks) {
  check_sizes(block_bytes, num_blocks, "num_blocks");
  const std::size_t total = block_bytes * num_blocks;
  if (pinning == Pinning::kPinned && cuda_device_count() == 0) {
    throw std::runtime_error("pinned=True needs a CUDA device; none is available");
  }
  pinned_ = pinning == Pinning::kPinned || (pinning == Pinning::kAuto && cuda_device_count() > 0);
  if (pinned_) {
    base_ = static_cast<std::uint8_t*>(pinned_alloc(total));
  } else {
    const std::size_t rounded = (total + kAlignment - 1) / kAlignment * kAlignment;
    base_ = static_cast<std::uint8_t*>(std::aligned_alloc(kAlignment, rounded));
    if (base_ == nullptr) throw std::bad_alloc();
  }
  ledger_.add(num_blocks);
}

BlockPool::~BlockPool() {
  if (pinned_) {
    pinned_free(base_);
  } else {
    std::free(base_);
  }
}

std::vector<BlockId> BlockPool::allocate(std::size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.take(n, num_blocks_);
}

void BlockPool::free(const std::vector<BlockId>& ids) {
  std::lock_guard<std::mutex> lock(mu_);
  ledger_.release(ids);
}

bool BlockPool::is_allocated(BlockId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.allocated(id);
}

std::uint8_t* BlockPool::data(BlockId id) {
  std::lock_guard<std::mutex> lock(mu_);
  ledger_.check_allocated(id, "");
  return base_ + static_cast<std::size_t>(id) * block_bytes_;
}

void BlockPool::check_transfer(const std::vector<BlockId>& ids, std::size_t nbytes, const char* op) const {
  check_buffer(blocks_for(nbytes), ids.size(), nbytes, block_bytes_, op);
  std::lock_guard<std::mutex> lock(mu_);
  for (BlockId id : ids) ledger_.check_allocated(id, std::string(op) + ": ");
}

void BlockPool::write(const std::vector<BlockId>& ids, const void* src, std::size_t nbytes) {
  check_transfer(ids, nbytes, "write");
  const auto* in = static_cast<const std::uint8_t*>(src);
  for (std::size_t k = 0; k < ids.size(); ++k) {
    const std::size_t off = k * block_bytes_;
    std::memcpy(base_ + static_cast<std::size_t>(ids[k]) * block_bytes_, in + off,
                std::min(block_bytes_, nbytes - off));
  }
}

void BlockPool::read(const std::vector<BlockId>& ids, void* dst, std::size_t nbytes) const {
  check_transfer(ids, nbytes, "read");
  auto* out = static_cast<std::uint8_t*>(dst);
  for (std::size_t k = 0; k < ids.size(); ++k) {
    const std::size_t off = k * block_bytes_;
    std::memcpy(out + off, base_ + static_cast<std::size_t>(ids[k]) * block_bytes_,
                std::min(block_bytes_, nbytes - off));
  }
}

std::size_t BlockPool::used_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return num_blocks_ - ledger_.free_count();
}

std::size_t BlockPool::free_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.free_count();
}

DevicePool::DevicePool(std::shared_ptr<DeviceRuntime> runtime, std::size_t block_bytes, std::size_t budget_blocks,
                       std::size_t segment_blocks)
    : rt_(std::move(runtime)), block_bytes_(block_bytes), budget_blocks_(budget_blocks),
      segment_blocks_(std::min(segment_blocks, budget_blocks)) {
  if (!rt_) throw std::invalid_argument("DevicePool: runtime is null");
  check_sizes(block_bytes, budget_blocks, "budget_blocks");
  if (segment_blocks == 0) throw std::invalid_argument("segment_blocks must be > 0");
}

DevicePool::~DevicePool() {
  for (std::uint8_t* seg : segments_) rt_->free_device(seg);
}

std::vector<BlockId> DevicePool::allocate(std::size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::size_t used = ledger_.size() - ledger_.free_count();
  if (n > budget_blocks_ - used) {
    throw PoolExhausted("device pool: cannot allocate " + std::to_string(n) + " blocks: " + std::to_string(used) +
                        " of the budget of " + std::to_string(budget_blocks_) + " are in use");
  }
  while (ledger_.free_count() < n) {
    // The last segment may be short so that the segments never exceed the budget.
    const std::size_t blocks = std::min(segment_blocks_, budget_blocks_ - ledger_.size());
    void* seg = nullptr;
    const DeviceStatus st = rt_->malloc_device(&seg, blocks * block_bytes_);
    if (st != kDeviceOk) {
      throw PoolExhausted("device pool: " + rt_->describe(("cudaMalloc of a " + std::to_string(blocks * block_bytes_) +
                                                          "-byte segment").c_str(), st));
    }
    segments_.push_back(static_cast<std::uint8_t*>(seg));
    ledger_.add(blocks);
  }
  return ledger_.take(n, budget_blocks_);
}

void DevicePool::free(const std::vector<BlockId>& ids) {
  std::lock_guard<std::mutex> lock(mu_);
  ledger_.release(ids);
}

bool DevicePool::is_allocated(BlockId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.allocated(id);
}

std::uint8_t* DevicePool::address(BlockId id) const {
  const auto i = static_cast<std::size_t>(id);
  return segments_[i / segment_blocks_] + (i % segment_blocks_) * block_bytes_;
}

void* DevicePool::data(BlockId id) {
  std::lock_guard<std::mutex> lock(mu_);
  ledger_.check_allocated(id, "");
  return address(id);
}

void DevicePool::copy(const std::vector<BlockId>& ids, std::uint8_t* host, std::size_t nbytes, bool to_device) const {
  const char* op = to_device ? "write" : "read";
  check_buffer(blocks_for(nbytes), ids.size(), nbytes, block_bytes_, op);
  std::vector<std::uint8_t*> blocks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (BlockId id : ids) {
      ledger_.check_allocated(id, std::string(op) + ": ");
      blocks.push_back(address(id));
    }
  }
  for (std::size_t k = 0; k < blocks.size(); ++k) {
    const std::size_t off = k * block_bytes_;
    const std::size_t n = std::min(block_bytes_, nbytes - off);
    const DeviceStatus st = to_device ? rt_->memcpy(blocks[k], host + off, n) : rt_->memcpy(host + off, blocks[k], n);
    if (st != kDeviceOk) {
      throw std::runtime_error("device pool " + std::string(op) + ": " + rt_->describe("cudaMemcpy", st));
    }
  }
}

void DevicePool::write(const std::vector<BlockId>& ids, const void* src, std::size_t nbytes) {
  copy(ids, static_cast<std::uint8_t*>(const_cast<void*>(src)), nbytes, true);
}

void DevicePool::read(const std::vector<BlockId>& ids, void* dst, std::size_t nbytes) const {
  copy(ids, static_cast<std::uint8_t*>(dst), nbytes, false);
}

std::size_t DevicePool::num_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.size();
}

std::size_t DevicePool::segments() const {
  std::lock_guard<std::mutex> lock(mu_);
  return segments_.size();
}

std::size_t DevicePool::used_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.size() - ledger_.free_count();
}

std::size_t DevicePool::free_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return budget_blocks_ - (ledger_.size() - ledger_.free_count());
}

}  // namespace hyperrag
