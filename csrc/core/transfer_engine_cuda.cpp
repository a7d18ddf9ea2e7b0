// CUDA backend of the TransferEngine, written against DeviceRuntime (no CUDA
// headers), so its error and lifetime rules are tested with a fake runtime on
// machines without a GPU. Each batch goes to one of N streams round robin as async
// copies followed by an event. Completion is observed on that event: poll()
// queries it and wait() synchronizes on it. No host callback is involved, because
// a stream that hits an error may never run one and a waiter would hang.
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>

#include "hyperrag/transfer_engine.h"

namespace hyperrag::detail {

namespace {

// Events are created on demand and recycled; destroyed with the last batch or
// backend holding the pool.
class EventPool {
 public:
  explicit EventPool(std::shared_ptr<DeviceRuntime> rt) : rt_(std::move(rt)) {}
  ~EventPool() {
    for (EventHandle e : free_) rt_->event_destroy(e);
  }
  EventHandle acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        EventHandle e = free_.back();
        free_.pop_back();
        return e;
      }
    }
    EventHandle e = nullptr;
    const DeviceStatus st = rt_->event_create(&e);
    if (st != kDeviceOk) throw std::runtime_error(rt_->describe("cudaEventCreate", st));
    return e;
  }
  void release(EventHandle e) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(e);
  }

 private:
  std::shared_ptr<DeviceRuntime> rt_;
  std::mutex mu_;
  std::vector<EventHandle> free_;
};

// An event borrowed from the pool for as long as this object lives.
class PooledEvent {
 public:
  explicit PooledEvent(std::shared_ptr<EventPool> pool) : pool_(std::move(pool)), event_(pool_->acquire()) {}
  ~PooledEvent() { pool_->release(event_); }
  PooledEvent(const PooledEvent&) = delete;
  PooledEvent& operator=(const PooledEvent&) = delete;
  EventHandle get() const { return event_; }

 private:
  std::shared_ptr<EventPool> pool_;
  EventHandle event_;
};

class CudaBatch : public PendingBatch {
 public:
  CudaBatch(std::shared_ptr<DeviceRuntime> rt, std::shared_ptr<EventPool> events, DoneFn done)
      : rt_(std::move(rt)), event_(std::move(events)), done_(std::move(done)) {}

  void assist() override { finish(rt_->event_synchronize(event_.get()), "cudaEventSynchronize"); }
  void progress() override {
    const DeviceStatus st = rt_->event_query(event_.get());
    if (st != kDeviceNotReady) finish(st, "cudaEventQuery");
  }
  EventHandle event() const { return event_.get(); }

 private:
  // First caller reports the batch's end; a concurrent poll and wait both get here.
  void finish(DeviceStatus st, const char* observer) {
    if (finished_.exchange(true)) return;
    done_(st == kDeviceOk ? std::string()
                          : "copies failed on the device: " + rt_->error_string(st) + " (seen by " + observer + ")");
  }

  std::shared_ptr<DeviceRuntime> rt_;
  PooledEvent event_;
  DoneFn done_;
  std::atomic<bool> finished_{false};
};

class CudaBackend : public TransferBackend {
 public:
  CudaBackend(int streams, std::shared_ptr<DeviceRuntime> rt)
      : rt_(std::move(rt)), events_(std::make_shared<EventPool>(rt_)) {
    for (int i = 0; i < streams; ++i) {
      StreamHandle s = nullptr;
      const DeviceStatus st = rt_->stream_create(&s);
      if (st != kDeviceOk) {
        destroy_streams();
        throw std::runtime_error(rt_->describe("cudaStreamCreate", st));
      }
      streams_.push_back(s);
    }
  }

  ~CudaBackend() override { destroy_streams(); }

  std::shared_ptr<PendingBatch> start(std::vector<CopyOp> ops, std::size_t, std::optional<std::uintptr_t> after_stream,
                                      DoneFn done) override {
    auto batch = std::make_shared<CudaBatch>(rt_, events_, std::move(done));
    StreamHandle stream = streams_[next_.fetch_add(1, std::memory_order_relaxed) % streams_.size()];
    if (after_stream) {
      // The wait captures the fence as recorded now, so the fence can be recycled at once.
      PooledEvent fence(events_);
      const auto caller = reinterpret_cast<StreamHandle>(*after_stream);
      check(rt_->event_record(fence.get(), caller), "cudaEventRecord on the caller's stream");
      check(rt_->stream_wait_event(stream, fence.get()), "cudaStreamWaitEvent");
    }
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const CopyOp& op = ops[i];
      if (op.nbytes == 0) continue;
      check(rt_->memcpy_async(op.dst, op.src, op.nbytes, stream),
            ("cudaMemcpyAsync of copy " + std::to_string(i) + " (" + std::to_string(op.nbytes) + " bytes)").c_str(),
            stream);
    }
    check(rt_->event_record(batch->event(), stream), "cudaEventRecord", stream);
    return batch;
  }

 private:
  // Throws for a failed call made before any copy was queued.
  void check(DeviceStatus st, const char* what) {
    if (st != kDeviceOk) throw std::runtime_error(rt_->describe(what, st));
  }
  // Throws for a failed call once copies may be queued on `stream`: first waits for
  // them, because the caller frees its buffers as soon as the exception reaches it.
  void check(DeviceStatus st, const char* what, StreamHandle stream) {
    if (st == kDeviceOk) return;
    std::string message = rt_->describe(what, st);
    const DeviceStatus sync = rt_->stream_synchronize(stream);
    if (sync != kDeviceOk) message += "; then " + rt_->describe("cudaStreamSynchronize", sync);
    throw std::runtime_error(message);
  }

  void destroy_streams() {
    for (StreamHandle s : streams_) {
      rt_->stream_synchronize(s);
      rt_->stream_destroy(s);
    }
    streams_.clear();
  }

  std::shared_ptr<DeviceRuntime> rt_;
  std::shared_ptr<EventPool> events_;
  std::vector<StreamHandle> streams_;
  std::atomic<std::size_t> next_{0};
};

}  // namespace

std::unique_ptr<TransferBackend> make_cuda_backend(int streams, std::shared_ptr<DeviceRuntime> runtime) {
  return std::make_unique<CudaBackend>(streams, std::move(runtime));
}

}  // namespace hyperrag::detail
