// Bindings for BlockPool and TransferEngine. Every argument is validated before
// any work; copies and waits run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "convert.h"
#include "hyperrag/block_pool.h"
#include "hyperrag/device.h"
#include "hyperrag/device_runtime.h"
#include "hyperrag/transfer_engine.h"

namespace py = pybind11;
using hyperrag::BlockId;
using hyperrag::BlockPool;
using hyperrag::DevicePool;
using hyperrag::TransferEngine;
using hyperrag::bindings::to_int64;
using hyperrag::bindings::to_int64s;
using hyperrag::bindings::to_string;
using hyperrag::bindings::to_uint64;

namespace {

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

// A contiguous memory region borrowed from a Python object: anything with the
// buffer protocol (numpy, bytes, bytearray, memoryview) or a torch tensor
// (data_ptr). Holds the object (and its buffer export) until destroyed; destroy
// it with the GIL held.
class Region {
 public:
  Region(py::handle obj, bool writable, bool allow_device, const char* field) : obj_(py::reinterpret_borrow<py::object>(obj)) {
    if (PyObject_CheckBuffer(obj.ptr())) {
      if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_RECORDS_RO) != 0) throw py::error_already_set();
      has_view_ = true;
      if (!PyBuffer_IsContiguous(&view_, 'A')) {
        throw py::value_error(std::string(field) + " must be contiguous (got a strided " + type_name(obj) + ")");
      }
      if (writable && view_.readonly) throw py::value_error(std::string(field) + " is read-only");
      ptr_ = view_.buf;
      nbytes_ = static_cast<std::size_t>(view_.len);
    } else if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "is_contiguous") && py::hasattr(obj, "element_size")) {
      if (!obj.attr("is_contiguous")().cast<bool>()) {
        throw py::value_error(std::string(field) + " must be a contiguous tensor (call .contiguous())");
      }
      device_ = py::str(obj.attr("device").attr("type"));
      if (device_ != "cpu" && !allow_device) {
        throw py::value_error(std::string(field) + " is a tensor on device '" + device_ +
                              "'; only CPU tensors are accepted here (use TransferEngine with backend='cuda')");
      }
      ptr_ = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<std::uintptr_t>());
      nbytes_ = obj.attr("numel")().cast<std::size_t>() * obj.attr("element_size")().cast<std::size_t>();
    } else {
      throw py::type_error(std::string(field) +
                           " must be a numpy array, a bytes-like object or a torch tensor, got " + type_name(obj));
    }
  }
  ~Region() {
    if (has_view_) PyBuffer_Release(&view_);
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  void* ptr() const { return ptr_; }
  std::size_t nbytes() const { return nbytes_; }
  const std::string& device() const { return device_; }

 private:
  py::object obj_;
  Py_buffer view_{};
  bool has_view_ = false;
  void* ptr_ = nullptr;
  std::size_t nbytes_ = 0;
  std::string device_ = "cpu";
};

std::size_t positive(py::handle obj, const std::string& field) {
  const std::int64_t v = to_int64(obj, field);
  if (v <= 0) throw py::value_error(field + " must be a positive integer, got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

std::size_t non_negative(py::handle obj, const std::string& field) {
  const std::int64_t v = to_int64(obj, field);
  if (v < 0) throw py::value_error(field + " must be >= 0, got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

BlockPool::Pinning pinning_from(const py::object& pinned) {
  if (pinned.is_none()) return BlockPool::Pinning::kAuto;
  if (!py::isinstance<py::bool_>(pinned)) {
    throw py::type_error("pinned must be None (auto), True or False, got " + type_name(pinned));
  }
  return pinned.cast<bool>() ? BlockPool::Pinning::kPinned : BlockPool::Pinning::kPageable;
}

TransferEngine::Backend backend_from(const std::string& name) {
  if (name == "auto") return TransferEngine::Backend::kAuto;
  if (name == "cpu") return TransferEngine::Backend::kCpu;
  if (name == "cuda") return TransferEngine::Backend::kCuda;
  throw py::value_error("backend must be one of 'auto', 'cpu', 'cuda', got '" + name + "'");
}

// The Python face of a TransferEngine: also keeps the Python objects whose memory
// a pending ticket copies alive until the ticket is seen complete.
class PyTransferEngine {
 public:
  PyTransferEngine(py::handle threads_arg, py::handle backend) {
    const auto kind = backend_from(to_string(backend, "backend"));
    const std::int64_t threads = to_int64(threads_arg, "threads");
    if (threads < 1 || threads > 256) {
      throw py::value_error("threads must be in [1, 256], got " + std::to_string(threads));
    }
    py::gil_scoped_release release;
    engine_ = std::make_unique<TransferEngine>(static_cast<int>(threads), kind);
  }

  ~PyTransferEngine() {
    {
      py::gil_scoped_release release;
      engine_.reset();  // waits for pending copies before their memory is let go
    }
    keep_.clear();
  }

  std::uint64_t submit(const py::sequence& copies, const py::object& stream) {
    std::optional<std::uintptr_t> after_stream;
    if (!stream.is_none()) {
      const std::int64_t handle = to_int64(stream, "stream");
      if (handle < 0) throw py::value_error("stream must be a CUDA stream handle >= 0 (0: the default stream), got " + std::to_string(handle));
      after_stream = static_cast<std::uintptr_t>(handle);
    }
    const bool device_ok = std::string(engine_->backend_name()) == "cuda";
    std::vector<hyperrag::CopyOp> ops;
    std::vector<std::unique_ptr<Region>> regions;
    ops.reserve(copies.size());
    for (std::size_t i = 0; i < copies.size(); ++i) {
      const std::string where = "copies[" + std::to_string(i) + "]";
      py::object item = copies[i];
      if (!py::isinstance<py::sequence>(item) || py::len(item) != 3) {
        throw py::value_error(where + " must be a (dst, src, nbytes) tuple");
      }
      py::sequence triple = item.cast<py::sequence>();
      const std::size_t n = non_negative(triple[2], where + ".nbytes");
      void* dst = endpoint(triple[0], n, true, device_ok, where + ".dst", regions);
      void* src = endpoint(triple[1], n, false, device_ok, where + ".src", regions);
      ops.push_back({dst, src, n});
    }
    sweep();
    std::uint64_t ticket;
    {
      py::gil_scoped_release release;
      ticket = engine_->submit(std::move(ops), after_stream);
    }
    if (!regions.empty()) keep_[ticket] = std::move(regions);
    return ticket;
  }

  bool poll(py::handle ticket_arg) {
    const std::uint64_t ticket = to_uint64(ticket_arg, "ticket");
    const bool done = engine_->poll(ticket);
    if (done) keep_.erase(ticket);
    return done;
  }

  void wait(py::handle ticket_arg) {
    const std::uint64_t ticket = to_uint64(ticket_arg, "ticket");
    std::exception_ptr failure;  // a failed batch is finished too: release its objects, then raise
    {
      py::gil_scoped_release release;
      try {
        engine_->wait(ticket);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    keep_.erase(ticket);
    if (failure) std::rethrow_exception(failure);
  }

  void wait_all() {
    {
      py::gil_scoped_release release;
      engine_->wait_all();
    }
    keep_.clear();
  }

  hyperrag::TransferStats stats() {
    sweep();
    return engine_->stats();
  }

  const char* backend() const { return engine_->backend_name(); }
  int threads() const { return engine_->threads(); }

 private:
  // An int is a raw address (trusted); anything else must hold >= n bytes.
  static void* endpoint(py::handle obj, std::size_t n, bool writable, bool device_ok, const std::string& field,
                        std::vector<std::unique_ptr<Region>>& regions) {
    if (py::isinstance<py::int_>(obj) && !py::isinstance<py::bool_>(obj)) {
      const auto addr = to_int64(obj, field);
      if (addr <= 0 && n > 0) throw py::value_error(field + " address must be a positive integer, got " + std::to_string(addr));
      return reinterpret_cast<void*>(static_cast<std::uintptr_t>(addr));
    }
    auto region = std::make_unique<Region>(obj, writable, device_ok, field.c_str());
    if (region->nbytes() < n) {
      throw py::value_error(field + " holds " + std::to_string(region->nbytes()) + " bytes, fewer than nbytes=" +
                            std::to_string(n));
    }
    void* ptr = region->ptr();
    regions.push_back(std::move(region));
    return ptr;
  }

  void sweep() {
    for (auto it = keep_.begin(); it != keep_.end();) {
      it = engine_->poll(it->first) ? keep_.erase(it) : std::next(it);
    }
  }

  std::unique_ptr<TransferEngine> engine_;
  std::unordered_map<std::uint64_t, std::vector<std::unique_ptr<Region>>> keep_;  // touched with the GIL held
};

std::vector<BlockId> checked_ids(py::handle ids, const char* field) {
  const std::vector<std::int64_t> v = to_int64s(ids, field);
  return {v.begin(), v.end()};
}

}  // namespace

void bind_storage(py::module_& m) {
  py::register_exception<hyperrag::PoolExhausted>(m, "PoolExhaustedError", PyExc_MemoryError);

  m.def("cuda_compiled", &hyperrag::cuda_compiled, "True when this build has the CUDA transfer backend.");
  m.def("cuda_device_count", &hyperrag::cuda_device_count,
        "Usable CUDA devices (0 without a driver or device). Queries the runtime on first call.");

  py::class_<BlockPool>(m, "BlockPool", R"doc(
Fixed-size blocks of real host memory in one arena (pinned when a CUDA device exists).

Thread-safe: allocation and counters are serialized; copies into different blocks
run in parallel with the GIL released. Do not free or rewrite a block while another
thread copies it. Views stay valid while the pool lives (a freed block's view shows
whatever is written there next).)doc")
      .def(py::init([](py::handle block_bytes, py::handle num_blocks, const py::object& pinned) {
             const auto bb = positive(block_bytes, "block_bytes");
             const auto nb = positive(num_blocks, "num_blocks");
             const auto pin = pinning_from(pinned);
             py::gil_scoped_release release;
             return std::make_unique<BlockPool>(bb, nb, pin);
           }),
           py::arg("block_bytes"), py::arg("num_blocks"), py::arg("pinned") = py::none())
      .def(
          "allocate",
          [](BlockPool& pool, py::handle n) { return pool.allocate(non_negative(n, "n")); }, py::arg("n"),
          "n free block ids; PoolExhaustedError (a MemoryError) if fewer are free.")
      .def(
          "free", [](BlockPool& pool, py::handle ids) { pool.free(checked_ids(ids, "ids")); },
          py::arg("ids"), "Return blocks; ValueError (nothing freed) for unknown, repeated or already free ids.")
      .def(
          "write",
          [](BlockPool& pool, py::handle ids, py::handle buffer) {
            Region src(buffer, false, false, "buffer");
            const auto blocks = checked_ids(ids, "ids");
            py::gil_scoped_release release;
            pool.write(blocks, src.ptr(), src.nbytes());
          },
          py::arg("ids"), py::arg("buffer"),
          "Copy a contiguous buffer (numpy / bytes-like / CPU torch tensor) into the blocks, in order. "
          "The buffer must need exactly len(ids) blocks.")
      .def(
          "read",
          [](BlockPool& pool, py::handle ids, py::handle out) {
            Region dst(out, true, false, "out");
            const auto blocks = checked_ids(ids, "ids");
            py::gil_scoped_release release;
            pool.read(blocks, dst.ptr(), dst.nbytes());
          },
          py::arg("ids"), py::arg("out"), "Copy the blocks, in order, into a writable contiguous buffer of the same size.")
      .def(
          "view",
          [](py::object self, py::handle id) {
            auto& pool = self.cast<BlockPool&>();
            auto* ptr = pool.data(to_int64(id, "id"));
            // base=self keeps the pool (and so the memory) alive while the view exists.
            return py::array_t<std::uint8_t>({static_cast<py::ssize_t>(pool.block_bytes())}, {1}, ptr, self);
          },
          py::arg("id"), "Zero-copy writable uint8 numpy view of one allocated block.")
      .def(
          "address", [](BlockPool& pool, py::handle id) { return reinterpret_cast<std::uintptr_t>(pool.data(to_int64(id, "id"))); },
          py::arg("id"), "Address of an allocated block (for TransferEngine.submit).")
      .def("is_allocated", [](const BlockPool& pool, py::handle id) { return pool.is_allocated(to_int64(id, "id")); },
           py::arg("id"))
      .def(
          "blocks_for", [](const BlockPool& pool, py::handle nbytes) { return pool.blocks_for(non_negative(nbytes, "nbytes")); },
          py::arg("nbytes"), "Blocks needed to hold nbytes.")
      .def_property_readonly("block_bytes", &BlockPool::block_bytes)
      .def_property_readonly("num_blocks", &BlockPool::num_blocks)
      .def_property_readonly("used_blocks", &BlockPool::used_blocks)
      .def_property_readonly("free_blocks", &BlockPool::free_blocks)
      .def_property_readonly("used_bytes", [](const BlockPool& p) { return p.used_blocks() * p.block_bytes(); })
      .def_property_readonly("pinned", &BlockPool::pinned)
      .def("__repr__", [](const BlockPool& p) {
        return "BlockPool(block_bytes=" + std::to_string(p.block_bytes()) + ", num_blocks=" +
               std::to_string(p.num_blocks()) + ", used_blocks=" + std::to_string(p.used_blocks()) +
               ", pinned=" + (p.pinned() ? "True" : "False") + ")";
      });

  py::class_<DevicePool>(m, "DevicePool", R"doc(
Fixed-size blocks of GPU memory (cudaMalloc), in segments of segment_blocks
allocated only when allocate() needs them, never more than budget_blocks in all.
Needs a CUDA device (RuntimeError otherwise: without one the gpu tier is host
memory). write/read copy between host buffers and the blocks synchronously;
address(id) is a device pointer for TransferEngine (backend 'cuda'). Thread-safe
as BlockPool.)doc")
      .def(py::init([](py::handle block_bytes, py::handle budget_blocks, py::handle segment_blocks) {
             const auto bb = positive(block_bytes, "block_bytes");
             const auto budget = positive(budget_blocks, "budget_blocks");
             const auto seg = positive(segment_blocks, "segment_blocks");
             auto rt = hyperrag::cuda_runtime();
             if (!rt || rt->device_count() == 0) {
               throw std::runtime_error(std::string("DevicePool needs a CUDA device; ") +
                                        (rt ? "none is available" : "this build has no CUDA backend") +
                                        " (without one the gpu tier is host memory)");
             }
             return std::make_unique<DevicePool>(std::move(rt), bb, budget, seg);
           }),
           py::arg("block_bytes"), py::arg("budget_blocks"), py::arg("segment_blocks"))
      .def(
          "allocate",
          [](DevicePool& pool, py::handle n) {
            const auto count = non_negative(n, "n");
            py::gil_scoped_release release;
            return pool.allocate(count);
          },
          py::arg("n"), "n free block ids, growing by segments; PoolExhaustedError past the budget or device memory.")
      .def(
          "free", [](DevicePool& pool, py::handle ids) { pool.free(checked_ids(ids, "ids")); }, py::arg("ids"))
      .def(
          "write",
          [](DevicePool& pool, py::handle ids, py::handle buffer) {
            Region src(buffer, false, false, "buffer");
            const auto blocks = checked_ids(ids, "ids");
            py::gil_scoped_release release;
            pool.write(blocks, src.ptr(), src.nbytes());
          },
          py::arg("ids"), py::arg("buffer"), "Copy a host buffer into the blocks, in order (as BlockPool.write).")
      .def(
          "read",
          [](DevicePool& pool, py::handle ids, py::handle out) {
            Region dst(out, true, false, "out");
            const auto blocks = checked_ids(ids, "ids");
            py::gil_scoped_release release;
            pool.read(blocks, dst.ptr(), dst.nbytes());
          },
          py::arg("ids"), py::arg("out"), "Copy the blocks, in order, into a writable host buffer of the same size.")
      .def(
          "address", [](DevicePool& pool, py::handle id) { return reinterpret_cast<std::uintptr_t>(pool.data(to_int64(id, "id"))); },
          py::arg("id"), "Device address of an allocated block (for TransferEngine.submit).")
      .def("is_allocated", [](const DevicePool& pool, py::handle id) { return pool.is_allocated(to_int64(id, "id")); },
           py::arg("id"))
      .def(
          "blocks_for", [](const DevicePool& pool, py::handle nbytes) { return pool.blocks_for(non_negative(nbytes, "nbytes")); },
          py::arg("nbytes"))
      .def_property_readonly("block_bytes", &DevicePool::block_bytes)
      .def_property_readonly("budget_blocks", &DevicePool::budget_blocks)
      .def_property_readonly("segment_blocks", &DevicePool::segment_blocks)
      .def_property_readonly("num_blocks", &DevicePool::num_blocks, "Blocks in the segments allocated so far.")
      .def_property_readonly("segments", &DevicePool::segments)
      .def_property_readonly("used_blocks", &DevicePool::used_blocks)
      .def_property_readonly("free_blocks", &DevicePool::free_blocks, "budget_blocks - used_blocks")
      .def_property_readonly("used_bytes", [](const DevicePool& p) { return p.used_blocks() * p.block_bytes(); })
      .def("__repr__", [](const DevicePool& p) {
        return "DevicePool(block_bytes=" + std::to_string(p.block_bytes()) + ", budget_blocks=" +
               std::to_string(p.budget_blocks()) + ", segments=" + std::to_string(p.segments()) +
               ", used_blocks=" + std::to_string(p.used_blocks()) + ")";
      });

  py::class_<hyperrag::TransferStats>(m, "TransferStats", "Totals over completed batches.")
      .def_readonly("bytes", &hyperrag::TransferStats::bytes)
      .def_readonly("copies", &hyperrag::TransferStats::copies)
      .def_readonly("batches", &hyperrag::TransferStats::batches)
      .def_readonly("failed", &hyperrag::TransferStats::failed, "Batches that ended in an error.")
      .def_readonly("pending", &hyperrag::TransferStats::pending)
      .def_readonly("busy_seconds", &hyperrag::TransferStats::busy_seconds,
                    "Wall time with at least one batch in flight.")
      .def_property_readonly("gbps", &hyperrag::TransferStats::gbps, "bytes / busy_seconds / 1e9")
      .def("__repr__", [](const hyperrag::TransferStats& s) {
        return "TransferStats(bytes=" + std::to_string(s.bytes) + ", copies=" + std::to_string(s.copies) +
               ", batches=" + std::to_string(s.batches) + ", failed=" + std::to_string(s.failed) + ", pending=" + std::to_string(s.pending) +
               ", busy_seconds=" + std::to_string(s.busy_seconds) + ", gbps=" + std::to_string(s.gbps()) + ")";
      });

  py::class_<PyTransferEngine>(m, "TransferEngine", R"doc(
Batched asynchronous copies with tickets. backend: 'auto' (cuda if a device exists,
else cpu), 'cpu' (worker threads) or 'cuda' (streams). Thread-safe.

submit(copies) takes (dst, src, nbytes) tuples; dst/src are numpy arrays, bytes-like
objects, torch tensors (kept alive until the ticket completes) or raw int addresses
(trusted: the caller keeps that memory alive). Tickets are 1, 2, ...; poll/wait on a
number never issued raises ValueError. wait() raises RuntimeError naming the device
error if the batch failed on the device; poll() only says it finished.

stream (cuda backend only): a CUDA stream handle as an int, e.g.
torch.cuda.current_stream().cuda_stream (0 is the default stream). The copies start
after the work already queued on that stream, so a tensor torch is still producing
is copied once it is ready.)doc")
      .def(py::init<py::handle, py::handle>(), py::arg("threads") = 2, py::arg("backend") = "auto")
      .def("submit", &PyTransferEngine::submit, py::arg("copies"), py::arg("stream") = py::none())
      .def("poll", &PyTransferEngine::poll, py::arg("ticket"))
      .def("wait", &PyTransferEngine::wait, py::arg("ticket"))
      .def("wait_all", &PyTransferEngine::wait_all)
      .def("stats", &PyTransferEngine::stats)
      .def_property_readonly("backend", &PyTransferEngine::backend)
      .def_property_readonly("threads", &PyTransferEngine::threads);
}
