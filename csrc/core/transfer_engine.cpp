#include "hyperrag/transfer_engine.h"

#include <stdexcept>
#include <string>

#include "hyperrag/device.h"

namespace hyperrag {

namespace {
bool overlaps(const CopyOp& op) {
  const auto d = reinterpret_cast<std::uintptr_t>(op.dst);
  const auto s = reinterpret_cast<std::uintptr_t>(op.src);
  return d < s + op.nbytes && s < d + op.nbytes;
}
}  // namespace

namespace {
void check_threads(int threads) {
  if (threads < 1 || threads > 256) {
    throw std::invalid_argument("threads must be in [1, 256], got " + std::to_string(threads));
  }
}
}  // namespace

TransferEngine::TransferEngine(int threads, Backend backend) : threads_(threads) {
  check_threads(threads);
  if (backend == Backend::kAuto) backend = cuda_device_count() > 0 ? Backend::kCuda : Backend::kCpu;
  if (backend == Backend::kCuda) {
    if (!cuda_compiled()) throw std::runtime_error("backend 'cuda': this build has no CUDA backend (nvcc was not found)");
    if (cuda_device_count() == 0) throw std::runtime_error("backend 'cuda': no CUDA device is available");
  }
  backend_ = backend;
  impl_ = backend == Backend::kCuda ? detail::make_cuda_backend(threads, cuda_runtime()) : detail::make_cpu_backend(threads);
}

TransferEngine::TransferEngine(int threads, std::shared_ptr<DeviceRuntime> runtime)
    : threads_(threads), backend_(Backend::kCuda) {
  check_threads(threads);
  if (!runtime) throw std::invalid_argument("TransferEngine: runtime is null");
  impl_ = detail::make_cuda_backend(threads, std::move(runtime));
}

TransferEngine::~TransferEngine() {
  wait_all();
  impl_.reset();  // joins workers / destroys streams while members are still alive
}

std::uint64_t TransferEngine::submit(std::vector<CopyOp> ops, std::optional<std::uintptr_t> after_stream) {
  if (after_stream && backend_ != Backend::kCuda) {
    throw std::invalid_argument("stream: only the cuda backend orders copies after a CUDA stream (this engine is cpu)");
  }
  std::size_t total = 0;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const CopyOp& op = ops[i];
    if (op.nbytes == 0) continue;
    if (op.dst == nullptr || op.src == nullptr) {
      throw std::invalid_argument("copy " + std::to_string(i) + ": null pointer with nbytes=" + std::to_string(op.nbytes));
    }
    if (overlaps(op)) throw std::invalid_argument("copy " + std::to_string(i) + ": source and destination overlap");
    total += op.nbytes;
  }
  const std::uint64_t copies = ops.size();
  std::uint64_t ticket;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ticket = next_ticket_++;
    pending_.emplace(ticket, Entry{nullptr, total, copies});
    if (in_flight_++ == 0) busy_since_ = Clock::now();
  }
  std::shared_ptr<detail::PendingBatch> batch;
  try {
    batch = impl_->start(std::move(ops), total, after_stream,
                         [this, ticket](const std::string& error) { complete(ticket, error); });
  } catch (...) {
    // The backend could not start the batch and left nothing running: forget the ticket.
    std::lock_guard<std::mutex> lock(mu_);
    pending_.erase(ticket);
    if (--in_flight_ == 0) stats_.busy_seconds += std::chrono::duration<double>(Clock::now() - busy_since_).count();
    cv_.notify_all();
    throw;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(ticket);
  if (it != pending_.end()) it->second.batch = std::move(batch);  // else it already completed
  cv_.notify_all();  // a waiter may be waiting for the batch to be stored
  return ticket;
}

void TransferEngine::complete(std::uint64_t ticket, const std::string& error) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(ticket);
  if (error.empty()) {
    stats_.bytes += it->second.bytes;
    stats_.copies += it->second.copies;
    stats_.batches += 1;
  } else {
    stats_.failed += 1;
    failed_.emplace(ticket, error);
  }
  pending_.erase(it);
  if (--in_flight_ == 0) {
    stats_.busy_seconds += std::chrono::duration<double>(Clock::now() - busy_since_).count();
  }
  cv_.notify_all();
}

void TransferEngine::check_ticket(std::uint64_t ticket) const {
  if (ticket == 0 || ticket >= next_ticket_) {
    throw std::invalid_argument("ticket " + std::to_string(ticket) + " was not issued by this engine (issued: 1.." +
                                std::to_string(next_ticket_ - 1) + ")");
  }
}

bool TransferEngine::poll(std::uint64_t ticket) {
  std::shared_ptr<detail::PendingBatch> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    check_ticket(ticket);
    auto it = pending_.find(ticket);
    if (it == pending_.end()) return true;
    batch = it->second.batch;  // null while submit() is still starting it
  }
  if (batch) batch->progress();
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.count(ticket) == 0;
}

void TransferEngine::finish(std::unique_lock<std::mutex>& lock, std::uint64_t ticket) {
  for (;;) {
    auto it = pending_.find(ticket);
    if (it == pending_.end()) return;
    std::shared_ptr<detail::PendingBatch> batch = it->second.batch;
    if (!batch) {
      cv_.wait(lock);  // submit() is still starting it and notifies once it is stored
      continue;
    }
    lock.unlock();
    batch->assist();
    lock.lock();
    // assist() returned: done() ran or is running on another thread.
    cv_.wait(lock, [&] { return pending_.count(ticket) == 0; });
  }
}

void TransferEngine::wait(std::uint64_t ticket) {
  std::unique_lock<std::mutex> lock(mu_);
  check_ticket(ticket);
  finish(lock, ticket);
  auto failed = failed_.find(ticket);
  if (failed != failed_.end()) {
    throw std::runtime_error("transfer ticket " + std::to_string(ticket) + " failed: " + failed->second);
  }
}

void TransferEngine::wait_all() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!pending_.empty()) finish(lock, pending_.begin()->first);
}
TransferStats TransferEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  TransferStats s = stats_;
  s.pending = pending_.size();
  if (in_flight_ > 0) s.busy_seconds += std::chrono::duration<double>(Clock::now() - busy_since_).count();
  return s;
}

}  // namespace hyperrag
