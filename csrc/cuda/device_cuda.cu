// The CUDA runtime behind DeviceRuntime, and the device queries of device.h
// (cudart is linked statically: without a driver the runtime loads fine and
// cudaGetDeviceCount returns an error, which means "no GPU").
#include <cuda_runtime.h>

#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#include "hyperrag/device.h"
#include "hyperrag/device_runtime.h"

namespace hyperrag {

namespace {

static_assert(cudaErrorNotReady == kDeviceNotReady, "kDeviceNotReady must equal cudaErrorNotReady");

// Clears a non-sticky error so it is not reported again by an unrelated later call.
DeviceStatus status(cudaError_t err) {
  if (err != cudaSuccess && err != cudaErrorNotReady) cudaGetLastError();
  return static_cast<DeviceStatus>(err);
}

cudaStream_t stream_of(StreamHandle s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t event_of(EventHandle e) { return static_cast<cudaEvent_t>(e); }

class CudaRuntime final : public DeviceRuntime {
 public:
  int device_count() noexcept override {
    std::call_once(once_, [this] {
      int n = 0;
      if (status(cudaGetDeviceCount(&n)) == kDeviceOk) count_ = n;
    });
    return count_;
  }
  std::string error_string(DeviceStatus s) override {
    const auto err = static_cast<cudaError_t>(s);
    return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
  }
  DeviceStatus malloc_device(void** ptr, std::size_t nbytes) override { return status(cudaMalloc(ptr, nbytes)); }
  DeviceStatus free_device(void* ptr) override { return status(cudaFree(ptr)); }
  DeviceStatus memcpy(void* dst, const void* src, std::size_t nbytes) override {
    return status(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault));
  }
  DeviceStatus stream_create(StreamHandle* stream) override {
    cudaStream_t s{};
    const DeviceStatus r = status(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *stream = s;
    return r;
  }
  DeviceStatus stream_destroy(StreamHandle stream) override { return status(cudaStreamDestroy(stream_of(stream))); }
  DeviceStatus stream_synchronize(StreamHandle stream) override {
    return status(cudaStreamSynchronize(stream_of(stream)));
  }
  DeviceStatus stream_wait_event(StreamHandle stream, EventHandle event) override {
    return status(cudaStreamWaitEvent(stream_of(stream), event_of(event), 0));
  }
  DeviceStatus memcpy_async(void* dst, const void* src, std::size_t nbytes, StreamHandle stream) override {
    return status(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream_of(stream)));
  }
  DeviceStatus event_create(EventHandle* event) override {
    cudaEvent_t e{};
    const DeviceStatus r = status(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    *event = e;
    return r;
  }
  DeviceStatus event_destroy(EventHandle event) override { return status(cudaEventDestroy(event_of(event))); }
  DeviceStatus event_record(EventHandle event, StreamHandle stream) override {
    return status(cudaEventRecord(event_of(event), stream_of(stream)));
  }
  DeviceStatus event_query(EventHandle event) override { return status(cudaEventQuery(event_of(event))); }
  DeviceStatus event_synchronize(EventHandle event) override { return status(cudaEventSynchronize(event_of(event))); }

 private:
  std::once_flag once_;
  int count_ = 0;
};

}  // namespace

std::shared_ptr<DeviceRuntime> cuda_runtime() {
  static const auto runtime = std::make_shared<CudaRuntime>();
  return runtime;
}

bool cuda_compiled() noexcept { return true; }

int cuda_device_count() noexcept { return cuda_runtime()->device_count(); }

void* pinned_alloc(std::size_t nbytes) {
  if (cuda_device_count() == 0) throw std::runtime_error("pinned memory needs a CUDA device; none is available");
  void* ptr = nullptr;
  if (status(cudaHostAlloc(&ptr, nbytes, cudaHostAllocPortable)) != kDeviceOk) throw std::bad_alloc();
  return ptr;
}

void pinned_free(void* ptr) noexcept {
  if (ptr != nullptr) cudaFreeHost(ptr);
}

}  // namespace hyperrag
