// CPU backend of the TransferEngine: a batch is one byte stream (its copies laid
// end to end) cut into equal slices; worker threads and a waiting caller claim
// slices with an atomic counter, so one huge copy and many small ones both spread
// over every thread without a task per copy.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <thread>

#include "hyperrag/transfer_engine.h"

namespace hyperrag::detail {

namespace {

constexpr std::size_t kMinSlice = 256 << 10;   // below this a handoff costs more than it saves
constexpr std::size_t kSliceAlign = 4096;
constexpr std::size_t kSlicesPerThread = 2;    // a little slack for uneven thread speed

void copy_range(const std::vector<CopyOp>& ops, const std::vector<std::size_t>& ends, std::size_t begin,
                std::size_t end) {
  // First op whose end lies past `begin`.
  std::size_t i = static_cast<std::size_t>(std::upper_bound(ends.begin(), ends.end(), begin) - ends.begin());
  std::size_t pos = begin;
  while (pos < end) {
    const std::size_t op_begin = ends[i] - ops[i].nbytes;
    const std::size_t from = pos - op_begin;
    const std::size_t n = std::min(end, ends[i]) - pos;
    std::memcpy(static_cast<char*>(ops[i].dst) + from, static_cast<const char*>(ops[i].src) + from, n);
    pos += n;
    ++i;
  }
}

class CpuBatch : public PendingBatch {
 public:
  CpuBatch(std::vector<CopyOp> ops, std::size_t total, std::size_t slices, DoneFn done)
      : ops_(std::move(ops)), done_(std::move(done)), total_(total), slices_(slices) {
    ends_.reserve(ops_.size());
    std::size_t end = 0;
    for (const CopyOp& op : ops_) ends_.push_back(end += op.nbytes);
    slice_bytes_ = std::max<std::size_t>(1, (total + slices - 1) / slices);
    slice_bytes_ = (slice_bytes_ + kSliceAlign - 1) / kSliceAlign * kSliceAlign;
    slices_ = (total + slice_bytes_ - 1) / slice_bytes_;
  }

  // Claims and copies one slice; false when every slice is already claimed.
  bool run_one() {
    const std::size_t s = next_.fetch_add(1, std::memory_order_relaxed);
    if (s >= slices_) return false;
    const std::size_t begin = s * slice_bytes_;
    copy_range(ops_, ends_, begin, std::min(total_, begin + slice_bytes_));
    // acq_rel: the thread finishing the last slice sees every other slice's copies.
    if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == slices_) done_({});
    return true;
  }

  void assist() override {
    while (run_one()) {
    }
  }

  // Copies the whole batch on the calling thread.
  void run_all() {
    copy_range(ops_, ends_, 0, total_);
    done_({});
  }

 private:
  std::vector<CopyOp> ops_;
  std::vector<std::size_t> ends_;  // ends_[i]: byte offset just past op i in the stream
  DoneFn done_;
  std::size_t total_;
  std::size_t slices_;
  std::size_t slice_bytes_;
  std::atomic<std::size_t> next_{0};
  std::atomic<std::size_t> finished_{0};
};

class CpuBackend : public TransferBackend {
 public:
  explicit CpuBackend(int threads) : threads_(static_cast<std::size_t>(threads)) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }

  ~CpuBackend() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  std::shared_ptr<PendingBatch> start(std::vector<CopyOp> ops, std::size_t total, std::optional<std::uintptr_t>,
                                      DoneFn done) override {
    const std::size_t slices =
        std::max<std::size_t>(1, std::min(total / kMinSlice, threads_ * kSlicesPerThread));
    auto batch = std::make_shared<CpuBatch>(std::move(ops), total, slices, std::move(done));
    if (total <= TransferEngine::kInlineBytes) {
      batch->run_all();
      return batch;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(batch);
    }
    cv_.notify_all();
    return batch;
  }

 private:
  void work() {
    for (;;) {
      std::shared_ptr<CpuBatch> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and nothing left
        batch = queue_.front();
      }
      if (!batch->run_one()) {
        // Every slice is claimed: retire the batch from the queue (once).
        std::lock_guard<std::mutex> lock(mu_);
        if (!queue_.empty() && queue_.front() == batch) queue_.pop_front();
      }
    }
  }

  std::size_t threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<CpuBatch>> queue_;
  bool stop_ = false;
};

}  // namespace

std::unique_ptr<TransferBackend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace hyperrag::detail
