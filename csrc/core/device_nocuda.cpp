// Device queries for builds without the CUDA backend (see csrc/cuda/device_cuda.cu).
#ifndef HYPERRAG_WITH_CUDA

#include <stdexcept>

#include "hyperrag/device.h"
#include "hyperrag/device_runtime.h"

namespace hyperrag {

std::shared_ptr<DeviceRuntime> cuda_runtime() { return nullptr; }
bool cuda_compiled() noexcept { return false; }
int cuda_device_count() noexcept { return 0; }
void* pinned_alloc(std::size_t) { throw std::runtime_error("pinned memory needs the CUDA backend, which this build lacks"); }
void pinned_free(void*) noexcept {}

}  // namespace hyperrag

#endif  // HYPERRAG_WITH_CUDA
