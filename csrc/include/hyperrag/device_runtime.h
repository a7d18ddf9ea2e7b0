// The CUDA runtime calls the transfer engine and the device pool make, behind an
// interface: the real one (csrc/cuda/device_cuda.cu) forwards to cudart,
// and tests substitute a fake that copies with memcpy and injects failures, so the
// engine's error and lifetime rules are tested on machines without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hyperrag {

// Status codes follow cudaError_t: 0 is success, kNotReady means "still running"
// (cudaErrorNotReady), anything else is an error that error_string() names.
using DeviceStatus = int;
inline constexpr DeviceStatus kDeviceOk = 0;
inline constexpr DeviceStatus kDeviceNotReady = 600;

using StreamHandle = void*;  // cudaStream_t; nullptr is the legacy default stream
using EventHandle = void*;   // cudaEvent_t

class DeviceRuntime {
 public:
  virtual ~DeviceRuntime() = default;

  virtual int device_count() noexcept = 0;  // 0 when there is no driver or device
  virtual std::string error_string(DeviceStatus status) = 0;

  virtual DeviceStatus malloc_device(void** ptr, std::size_t nbytes) = 0;
  virtual DeviceStatus free_device(void* ptr) = 0;
  // Synchronous copy in any direction (cudaMemcpyDefault).
  virtual DeviceStatus memcpy(void* dst, const void* src, std::size_t nbytes) = 0;

  virtual DeviceStatus stream_create(StreamHandle* stream) = 0;  // non-blocking w.r.t. the legacy stream
  virtual DeviceStatus stream_destroy(StreamHandle stream) = 0;
  virtual DeviceStatus stream_synchronize(StreamHandle stream) = 0;
  // Work queued on `stream` after this call starts once `event` has completed.
  virtual DeviceStatus stream_wait_event(StreamHandle stream, EventHandle event) = 0;
  virtual DeviceStatus memcpy_async(void* dst, const void* src, std::size_t nbytes, StreamHandle stream) = 0;

  virtual DeviceStatus event_create(EventHandle* event) = 0;
  virtual DeviceStatus event_destroy(EventHandle event) = 0;
  virtual DeviceStatus event_record(EventHandle event, StreamHandle stream) = 0;
  // kDeviceOk once the work before the record completed, kDeviceNotReady before,
  // or the asynchronous error that work hit.
  virtual DeviceStatus event_query(EventHandle event) = 0;
  virtual DeviceStatus event_synchronize(EventHandle event) = 0;

  // "<what>: <error name>", for exception messages.
  std::string describe(const char* what, DeviceStatus status) {
    return std::string(what) + " failed: " + error_string(status);
  }
};

// The CUDA runtime of this build, or nullptr when it was built without CUDA.
// A non-null runtime may still report device_count() == 0.
std::shared_ptr<DeviceRuntime> cuda_runtime();

}  // namespace hyperrag
