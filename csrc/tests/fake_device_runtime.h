// A DeviceRuntime for tests on machines without a GPU: "device" memory is host
// memory, and each stream is a queue of operations that runs only when something
// synchronizes on it (or queries an event of it, if run_on_query). So a test sees
// what was queued and not yet run, and can inject the failures a real device
// reports: a refused async copy, a failed event record, an asynchronous error.
#pragma once

#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>

#include "hyperrag/device_runtime.h"

namespace hyperrag::testing {

inline constexpr DeviceStatus kFakeOutOfMemory = 2;      // cudaErrorMemoryAllocation
inline constexpr DeviceStatus kFakeInvalidValue = 1;     // cudaErrorInvalidValue
inline constexpr DeviceStatus kFakeIllegalAddress = 700; // cudaErrorIllegalAddress

class FakeDeviceRuntime : public DeviceRuntime {
 public:
  // Fault injection; call indices count from 0 over the runtime's life.
  long fail_memcpy_async_call = -1;  // this memcpy_async call returns kFakeInvalidValue
  long fail_event_record_call = -1;  // this event_record call returns kFakeInvalidValue
  long fault_copy = -1;              // this executed copy does not land and poisons its stream
  bool run_on_query = true;          // false: event_query never runs queued work
  std::size_t memory_limit = ~std::size_t{0};  // malloc_device beyond it: kFakeOutOfMemory

  ~FakeDeviceRuntime() override {
    for (void* p : allocations_) std::free(p);
  }

  int device_count() noexcept override { return 1; }
  std::string error_string(DeviceStatus s) override {
    switch (s) {
      case kFakeInvalidValue: return "cudaErrorInvalidValue";
      case kFakeOutOfMemory: return "cudaErrorMemoryAllocation";
      case kFakeIllegalAddress: return "cudaErrorIllegalAddress";
      default: return "fake error " + std::to_string(s);
    }
  }

  DeviceStatus malloc_device(void** ptr, std::size_t nbytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (allocated_ + nbytes > memory_limit) return kFakeOutOfMemory;
    *ptr = std::malloc(nbytes);
    allocations_.insert(*ptr);
    sizes_[*ptr] = nbytes;
    allocated_ += nbytes;
    ++malloc_calls_;
    return kDeviceOk;
  }
  DeviceStatus free_device(void* ptr) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (allocations_.erase(ptr) == 0) return kFakeInvalidValue;
    allocated_ -= sizes_[ptr];
    sizes_.erase(ptr);
    std::free(ptr);
    return kDeviceOk;
  }
  DeviceStatus memcpy(void* dst, const void* src, std::size_t nbytes) override {
    std::memcpy(dst, src, nbytes);
    return kDeviceOk;
  }

  DeviceStatus stream_create(StreamHandle* stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    *stream = reinterpret_cast<StreamHandle>(next_handle_++);
    streams_[*stream];
    return kDeviceOk;
  }
  DeviceStatus stream_destroy(StreamHandle stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    return streams_.erase(stream) ? kDeviceOk : kFakeInvalidValue;
  }
  DeviceStatus stream_synchronize(StreamHandle stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    drain(stream);
    return streams_[stream].error;
  }
  DeviceStatus stream_wait_event(StreamHandle stream, EventHandle event) override {
    std::lock_guard<std::mutex> lock(mu_);
    streams_[stream].ops.push_back(Op{Op::kWait, nullptr, nullptr, 0, event});
    return kDeviceOk;
  }
  DeviceStatus memcpy_async(void* dst, const void* src, std::size_t nbytes, StreamHandle stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (memcpy_async_calls_++ == fail_memcpy_async_call) return kFakeInvalidValue;
    streams_[stream].ops.push_back(Op{Op::kCopy, dst, src, nbytes, nullptr});
    return kDeviceOk;
  }

  DeviceStatus event_create(EventHandle* event) override {
    std::lock_guard<std::mutex> lock(mu_);
    *event = reinterpret_cast<EventHandle>(next_handle_++);
    events_[*event];
    return kDeviceOk;
  }
  DeviceStatus event_destroy(EventHandle event) override {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.erase(event) ? kDeviceOk : kFakeInvalidValue;
  }
  DeviceStatus event_record(EventHandle event, StreamHandle stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (event_record_calls_++ == fail_event_record_call) return kFakeInvalidValue;
    Event& e = events_.at(event);
    e = Event{stream, false, kDeviceOk};
    streams_[stream].ops.push_back(Op{Op::kRecord, nullptr, nullptr, 0, event});
    return kDeviceOk;
  }
  DeviceStatus event_query(EventHandle event) override {
    std::lock_guard<std::mutex> lock(mu_);
    Event& e = events_.at(event);
    if (!e.done && run_on_query) drain(e.stream);
    return e.done ? e.status : kDeviceNotReady;
  }
  DeviceStatus event_synchronize(EventHandle event) override {
    std::lock_guard<std::mutex> lock(mu_);
    Event& e = events_.at(event);
    if (!e.done) drain(e.stream);
    return e.status;
  }

  // Queued copies that have not run yet, over all streams.
  std::size_t queued_copies() {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t n = 0;
    for (auto& [handle, s] : streams_) {
      for (const Op& op : s.ops) n += op.kind == Op::kCopy;
    }
    return n;
  }
  std::size_t live_streams() {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t n = 0;
    for (auto& [handle, s] : streams_) n += handle != nullptr;  // the default stream is not created
    return n;
  }
  std::size_t live_events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.size();
  }
  std::size_t allocated_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return allocated_;
  }
  std::size_t malloc_calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return malloc_calls_;
  }

 private:
  struct Op {
    enum Kind { kCopy, kRecord, kWait } kind;
    void* dst;
    const void* src;
    std::size_t nbytes;
    EventHandle event;
  };
  struct Stream {
    std::deque<Op> ops;
    DeviceStatus error = kDeviceOk;  // sticky, like a CUDA context after a fault
  };
  struct Event {
    StreamHandle stream = nullptr;
    bool done = true;  // a never-recorded event counts as complete, as in CUDA
    DeviceStatus status = kDeviceOk;
  };

  // Runs everything queued on `handle`, in order; caller holds mu_.
  void drain(StreamHandle handle) {
    Stream& s = streams_[handle];
    while (!s.ops.empty()) {
      const Op op = s.ops.front();
      s.ops.pop_front();
      if (op.kind == Op::kCopy) {
        if (copies_run_++ == fault_copy) s.error = kFakeIllegalAddress;
        if (s.error == kDeviceOk) std::memcpy(op.dst, op.src, op.nbytes);
      } else if (op.kind == Op::kRecord) {
        auto it = events_.find(op.event);
        if (it != events_.end()) it->second = Event{handle, true, s.error};
      } else {
        auto it = events_.find(op.event);
        if (it != events_.end() && !it->second.done) drain(it->second.stream);
      }
    }
  }

  std::mutex mu_;
  std::map<StreamHandle, Stream> streams_;
  std::map<EventHandle, Event> events_;
  std::set<void*> allocations_;
  std::map<void*, std::size_t> sizes_;
  std::size_t allocated_ = 0;
  std::size_t malloc_calls_ = 0;
  std::uintptr_t next_handle_ = 0x1000;
  long memcpy_async_calls_ = 0;
  long event_record_calls_ = 0;
  long copies_run_ = 0;
};

}  // namespace hyperrag::testing
