// Pools of fixed-size blocks: BlockPool carves them from one host allocation,
// DevicePool from device memory segments allocated as blocks are needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "hyperrag/device_runtime.h"

namespace hyperrag {

using BlockId = std::int64_t;

// allocate() asked for more blocks than are free.
class PoolExhausted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Which block ids exist and which are allocated; the pools' shared bookkeeping.
// Not thread-safe: the owning pool serializes calls.
class BlockLedger {
 public:
  // Adds ids [size(), size() + n) as free blocks.
  void add(std::size_t n);
  std::size_t size() const { return in_use_.size(); }
  std::size_t free_count() const { return free_list_.size(); }
  // n free blocks, lowest ids first after add(); throws PoolExhausted (naming
  // `capacity`, the most blocks the pool can ever hold) when fewer are free.
  std::vector<BlockId> take(std::size_t n, std::size_t capacity);
  // Throws std::invalid_argument (nothing released) for an id out of range, not
  // allocated (double free) or repeated.
  void release(const std::vector<BlockId>& ids);
  bool allocated(BlockId id) const;
  // Throws std::invalid_argument, prefixed by `op`, unless the block is allocated.
  void check_allocated(BlockId id, const std::string& op) const;

 private:
  void check_range(BlockId id) const;
  std::vector<BlockId> free_list_;    // stack; back() is the next block handed out
  std::vector<std::uint8_t> in_use_;  // 1 when allocated, per block
};

// BlockPool: num_blocks blocks of block_bytes each, in one contiguous arena
// (block i starts at base() + i * block_bytes). The arena is pinned (page-locked,
// cudaHostAlloc) when requested or, in kAuto mode, when a CUDA device exists at
// runtime; otherwise it is plain 4 KiB-aligned memory.
//
// Thread-safety: allocate/free/counters/is_allocated are serialized by an internal
// mutex, and each call is all-or-nothing (on error nothing changed). write/read
// validate ids under the mutex and copy outside it, so copies to different blocks
// run in parallel. The contents of a block are not synchronized: the caller must
// not free or rewrite a block while another thread is reading or writing it.
// Block memory stays mapped for the lifetime of the pool, so a stale pointer to a
// freed block reads garbage but never faults.
class BlockPool {
 public:
  enum class Pinning { kAuto, kPinned, kPageable };

  // Throws std::invalid_argument for zero sizes or a size that overflows,
  // std::runtime_error for kPinned without a CUDA device, std::bad_alloc when the
  // arena cannot be allocated.
  BlockPool(std::size_t block_bytes, std::size_t num_blocks, Pinning pinning = Pinning::kAuto);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // n free blocks, lowest ids first after a fresh start. n == 0 returns {}.
  // Throws PoolExhausted when fewer than n blocks are free.
  std::vector<BlockId> allocate(std::size_t n);
  // Returns the blocks to the pool. Throws std::invalid_argument for an id out of
  // range, a block that is not allocated (double free) or an id repeated in `ids`.
  void free(const std::vector<BlockId>& ids);

  // Start of an allocated block; throws std::invalid_argument otherwise.
  std::uint8_t* data(BlockId id);
  bool is_allocated(BlockId id) const;

  // Copies nbytes between a flat buffer and the blocks `ids` in order: block k holds
  // bytes [k * block_bytes, (k + 1) * block_bytes). The buffer must need exactly
  // ids.size() blocks (ceil(nbytes / block_bytes) == ids.size()), so a buffer too
  // small or too large for the blocks is rejected with std::invalid_argument.
  void write(const std::vector<BlockId>& ids, const void* src, std::size_t nbytes);
  void read(const std::vector<BlockId>& ids, void* dst, std::size_t nbytes) const;

  // Blocks needed to hold nbytes.
  std::size_t blocks_for(std::size_t nbytes) const { return (nbytes + block_bytes_ - 1) / block_bytes_; }

  std::size_t block_bytes() const { return block_bytes_; }
  std::size_t num_blocks() const { return num_blocks_; }
  std::size_t used_blocks() const;
  std::size_t free_blocks() const;
  bool pinned() const { return pinned_; }
  std::uint8_t* base() { return base_; }

 private:
  // Checks ids and the buffer size under the mutex; returns nothing, throws on error.
  void check_transfer(const std::vector<BlockId>& ids, std::size_t nbytes, const char* op) const;

  std::size_t block_bytes_;
  std::size_t num_blocks_;
  bool pinned_ = false;
  std::uint8_t* base_ = nullptr;

  mutable std::mutex mu_;
  BlockLedger ledger_;
};

// DevicePool: blocks of block_bytes in device memory, allocated through a
// DeviceRuntime (cudaMalloc) in segments of segment_blocks as allocate() needs
// them, never more than budget_blocks in all; nothing is allocated up front.
// Segments live until the pool is destroyed. Block ids are stable: block i lives
// in segment i / segment_blocks. Thread-safety as BlockPool's; write/read copy
// synchronously through the runtime (any direction, cudaMemcpyDefault).
class DevicePool {
 public:
  // Throws std::invalid_argument for a null runtime, zero sizes or a size that
  // overflows. The pool keeps the runtime alive.
  DevicePool(std::shared_ptr<DeviceRuntime> runtime, std::size_t block_bytes, std::size_t budget_blocks,
             std::size_t segment_blocks);
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // Grows by whole segments when fewer than n blocks are free. Throws
  // PoolExhausted when n blocks would exceed the budget, or when the device
  // refuses a segment (the message names the runtime's error); nothing changes then.
  std::vector<BlockId> allocate(std::size_t n);
  void free(const std::vector<BlockId>& ids);  // as BlockPool::free
  void* data(BlockId id);                      // device address of an allocated block
  bool is_allocated(BlockId id) const;
  // As BlockPool::write/read; std::runtime_error naming the runtime's error if a copy fails.
  void write(const std::vector<BlockId>& ids, const void* src, std::size_t nbytes);
  void read(const std::vector<BlockId>& ids, void* dst, std::size_t nbytes) const;

  std::size_t blocks_for(std::size_t nbytes) const { return (nbytes + block_bytes_ - 1) / block_bytes_; }
  std::size_t block_bytes() const { return block_bytes_; }
  std::size_t budget_blocks() const { return budget_blocks_; }
  std::size_t segment_blocks() const { return segment_blocks_; }
  std::size_t num_blocks() const;  // blocks in the segments allocated so far
  std::size_t segments() const;
  std::size_t used_blocks() const;
  std::size_t free_blocks() const;  // budget_blocks - used_blocks

 private:
  std::uint8_t* address(BlockId id) const;  // caller holds mu_
  void copy(const std::vector<BlockId>& ids, std::uint8_t* host, std::size_t nbytes, bool to_device) const;

  std::shared_ptr<DeviceRuntime> rt_;
  std::size_t block_bytes_;
  std::size_t budget_blocks_;
  std::size_t segment_blocks_;

  mutable std::mutex mu_;
  BlockLedger ledger_;
  std::vector<std::uint8_t*> segments_;
};

}  // namespace hyperrag
