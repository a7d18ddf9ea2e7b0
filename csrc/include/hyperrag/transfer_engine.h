// Batched asynchronous memory copies with tickets, on CPU threads or CUDA streams.
#pragma once

#include <condition_variable>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "hyperrag/device_runtime.h"

namespace hyperrag {

struct CopyOp {
  void* dst;
  const void* src;
  std::size_t nbytes;
};

struct TransferStats {
  std::uint64_t bytes = 0;    // bytes copied by completed batches
  std::uint64_t copies = 0;   // CopyOps in completed batches
  std::uint64_t batches = 0;  // completed batches
  std::uint64_t failed = 0;   // batches that ended in an error (not in bytes/copies/batches)
  std::uint64_t pending = 0;  // batches submitted and not yet complete
  double busy_seconds = 0.0;  // wall time with at least one batch in flight
  double gbps() const { return busy_seconds > 0.0 ? static_cast<double>(bytes) / busy_seconds / 1e9 : 0.0; }
};

namespace detail {
// Reports a batch's end: an empty string on success, else what failed.
using DoneFn = std::function<void(const std::string& error)>;

// A submitted batch as the backend keeps it.
class PendingBatch {
 public:
  virtual ~PendingBatch() = default;
  // Called by wait() on the waiting thread: the backend runs the batch's remaining
  // work there (CPU) or blocks until the device finished it (CUDA). When it
  // returns, done() has been called or is being called by another thread.
  virtual void assist() = 0;
  // Called by poll(): a check that never blocks and may complete the batch.
  virtual void progress() {}
};

// Executes batches. start() must make done() be called exactly once, from any
// thread (possibly before start() returns), after every copy of the batch landed
// or failed. If start() throws, no copy of the batch is still running.
class TransferBackend {
 public:
  virtual ~TransferBackend() = default;
  virtual std::shared_ptr<PendingBatch> start(std::vector<CopyOp> ops, std::size_t total_bytes,
                                              std::optional<std::uintptr_t> after_stream, DoneFn done) = 0;
};

std::unique_ptr<TransferBackend> make_cpu_backend(int threads);
// Plain C++ over DeviceRuntime (transfer_engine_cuda.cpp): tested with a fake runtime.
std::unique_ptr<TransferBackend> make_cuda_backend(int streams, std::shared_ptr<DeviceRuntime> runtime);
}  // namespace detail

// TransferEngine: submit() a batch of copies and get a ticket; poll() or wait() on
// it. Tickets are numbered 1, 2, ... per engine; a ticket that completed stays
// complete forever (poll true, wait returns at once or raises its error again), a
// number never issued is an error. Copies of one batch may run in any order and in
// parallel, so their destinations must not overlap their sources (checked) and the
// caller must keep all memory alive and untouched until the ticket completes.
//
// Backends: "cpu" runs copies on `threads` worker threads, splitting a batch into
// byte slices so large copies use every thread; a waiting thread helps with its
// own batch; batches of at most kInlineBytes are copied inside submit() because a
// thread handoff costs more than the copy. "cuda" issues cudaMemcpyAsync
// (direction inferred from the pointers) on `threads` streams round robin and
// records an event per batch; poll() queries that event and wait() synchronizes on
// it, so completion never depends on a host callback. A batch whose copies hit an
// asynchronous CUDA error completes as failed: wait() raises std::runtime_error
// naming the error. If submit() throws after some copies were queued, it first
// synchronizes their stream, so the caller may free the buffers at once.
// "auto" picks cuda when a device exists, else cpu.
//
// after_stream (cuda only): a cudaStream_t as an integer (0 is the legacy default
// stream). The batch's copies start only after the work queued on that stream
// before submit(), e.g. torch's current stream producing a tensor being copied.
//
// Thread-safety: every method may be called from any thread concurrently. The
// destructor waits for all pending batches.
class TransferEngine {
 public:
  enum class Backend { kAuto, kCpu, kCuda };
  static constexpr std::size_t kInlineBytes = 64 << 10;

  // Throws std::invalid_argument for threads < 1 or > 256, std::runtime_error for
  // kCuda without a compiled backend or a device.
  explicit TransferEngine(int threads = 2, Backend backend = Backend::kAuto);
  // The cuda backend over `runtime` (a test seam: the fake runtime of the tests).
  // Throws std::invalid_argument for a null runtime or bad threads.
  TransferEngine(int threads, std::shared_ptr<DeviceRuntime> runtime);
  ~TransferEngine();
  TransferEngine(const TransferEngine&) = delete;
  TransferEngine& operator=(const TransferEngine&) = delete;

  // Throws std::invalid_argument for a null pointer with nbytes > 0, a source
  // overlapping its destination or after_stream on the cpu backend;
  // std::runtime_error when the device refused a copy (nothing is left running).
  // An empty batch completes at once.
  std::uint64_t submit(std::vector<CopyOp> ops, std::optional<std::uintptr_t> after_stream = std::nullopt);
  bool poll(std::uint64_t ticket);
  // Blocks until the ticket completes; std::runtime_error if its batch failed.
  void wait(std::uint64_t ticket);
  // Blocks until every batch completed, failed ones included (wait() reports those).
  void wait_all();
  TransferStats stats() const;

  const char* backend_name() const { return backend_ == Backend::kCuda ? "cuda" : "cpu"; }
  int threads() const { return threads_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    std::shared_ptr<detail::PendingBatch> batch;
    std::uint64_t bytes;
    std::uint64_t copies;
  };
  void complete(std::uint64_t ticket, const std::string& error);
  void check_ticket(std::uint64_t ticket) const;  // caller holds mu_
  // Drives the ticket's batch to completion; `lock` holds mu_ on entry and exit.
  void finish(std::unique_lock<std::mutex>& lock, std::uint64_t ticket);

  int threads_;
  Backend backend_;
  std::unique_ptr<detail::TransferBackend> impl_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t next_ticket_ = 1;
  std::unordered_map<std::uint64_t, Entry> pending_;
  std::unordered_map<std::uint64_t, std::string> failed_;  // ticket -> error, kept for wait()
  TransferStats stats_;
  std::size_t in_flight_ = 0;
  Clock::time_point busy_since_;
};

}  // namespace hyperrag
