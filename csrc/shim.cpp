// The few libtorch entry points eio needs that tch does not bind, compiled by build.rs against
// the libtorch torch-sys links (same headers, same ABI):
// - clearing a gradient, PyTorch's `zero_grad(set_to_none=True)`: the optimiser then knows on
//   the host which tensors took part in a step (a defined gradient) without reading device
//   memory;
// - the multi-tensor (`_foreach_*`) SGD update PyTorch's optimisers use on CUDA
//   (torch/optim/sgd.py, `_multi_tensor_sgd`): a handful of kernel launches per step instead of
//   six per tensor;
// - CUDA graphs (at::cuda::CUDAGraph, what torch.cuda.graph wraps): a fixed-shape step captured
//   once on a side stream and replayed with one launch;
// - the CUDA caching allocator's peak of allocated bytes (torch.cuda.max_memory_allocated and
//   reset_peak_memory_stats);
// - libtorch's global numerics switches (torch.use_deterministic_algorithms,
//   torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32).
// The CUDA parts are compiled only against a libtorch with CUDA (build.rs defines EIO_CUDA);
// elsewhere these functions return an error.
// Every function catches C++ exceptions and returns the message (malloc'd) or null.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_sub.h>

#ifdef EIO_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

namespace {
char *message(const char *what) {
  size_t n = std::strlen(what) + 1;
  char *out = static_cast<char *>(std::malloc(n));
  if (out) std::memcpy(out, what, n);
  return out;
}

std::vector<at::Tensor> list(at::Tensor **ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}
}  // namespace

extern "C" {

char *eio_grad_reset(at::Tensor *t) {
  try {
    t->mutable_grad().reset();
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}

// For the n tensors: d = g + wd * p; buf = m * buf + d; p -= lr * (nesterov ? d + m * buf : buf),
// the same operations, in the same order, as the per-tensor path of src/optim.rs.
char *eio_foreach_sgd(at::Tensor **params, at::Tensor **grads, at::Tensor **bufs, int n, double lr,
                      double momentum, double weight_decay, int nesterov) {
  try {
    auto p = list(params, n);
    auto g = list(grads, n);
    auto b = list(bufs, n);
    std::vector<at::Tensor> d;
    if (weight_decay != 0.0) {
      d = at::_foreach_mul(p, weight_decay);
      at::_foreach_add_(d, g);
    } else {
      d = g;
    }
    at::_foreach_mul_(b, momentum);
    at::_foreach_add_(b, d);
    std::vector<at::Tensor> upd;
    if (nesterov) {
      upd = at::_foreach_mul(b, momentum);
      at::_foreach_add_(upd, d);
      at::_foreach_mul_(upd, lr);
    } else {
      upd = at::_foreach_mul(b, lr);
    }
    at::_foreach_sub_(p, upd);
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}

// Deterministic algorithms (cuDNN's and ATen's; an op without one warns once and runs as it
// is) and TF32 in cuDNN convolutions (PyTorch's default: on).
char *eio_numerics_get(int *deterministic, int *cudnn_tf32) {
  try {
    auto &c = at::globalContext();
    *deterministic = c.deterministicAlgorithms() && c.deterministicCuDNN();
    *cudnn_tf32 = c.allowTF32CuDNN();
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}

char *eio_numerics_set(int deterministic, int cudnn_tf32) {
  try {
    auto &c = at::globalContext();
    c.setDeterministicAlgorithms(deterministic != 0, /*warn_only=*/true);
    c.setDeterministicCuDNN(deterministic != 0);
    c.setAllowTF32CuDNN(cudnn_tf32 != 0);
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}

#ifdef EIO_CUDA
namespace {
// A graph and the stream that was current before its capture began (restored at its end).
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream previous;
  explicit Graph(c10::cuda::CUDAStream prev) : previous(prev) {}
};

// One capture stream per device, reused by every capture (as torch.cuda.graph's default side
// stream): per-stream state such as cuBLAS workspaces is then set up once, not in every capture.
c10::cuda::CUDAStream capture_stream(int device) {
  static std::mutex mu;
  static std::vector<std::optional<c10::cuda::CUDAStream>> streams;
  std::lock_guard<std::mutex> lock(mu);
  if (streams.size() <= static_cast<size_t>(device)) streams.resize(device + 1);
  if (!streams[device]) streams[device] = c10::cuda::getStreamFromPool(false, device);
  return *streams[device];
}
}  // namespace

// Starts capturing on the side stream of `device` (capture is not allowed on the default
// stream). Everything enqueued before, on any stream, finishes first: the step's inputs were
// written on the default stream. The graph is returned through `out` (free it with
// eio_graph_free).
char *eio_graph_begin(int device, void **out) {
  Graph *g = nullptr;
  try {
    c10::cuda::device_synchronize();
    auto prev = c10::cuda::getCurrentCUDAStream(device);
    g = new Graph(prev);
    c10::cuda::setCurrentCUDAStream(capture_stream(device));
    g->graph.capture_begin();
    *out = g;
    return nullptr;
  } catch (const std::exception &e) {
    if (g) {
      c10::cuda::setCurrentCUDAStream(g->previous);
      delete g;
    }
    return message(e.what());
  }
}

// Ends the capture (its work has not run: replay it) and makes the earlier stream current
// again, whether or not the capture succeeded.
char *eio_graph_end(void *graph) {
  auto *g = static_cast<Graph *>(graph);
  try {
    g->graph.capture_end();
    c10::cuda::setCurrentCUDAStream(g->previous);
    return nullptr;
  } catch (const std::exception &e) {
    c10::cuda::setCurrentCUDAStream(g->previous);
    return message(e.what());
  }
}

// Launches the captured work on the current stream, after what is already enqueued there.
char *eio_graph_replay(void *graph) {
  try {
    static_cast<Graph *>(graph)->graph.replay();
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}

// Frees a graph and the memory of its private pool. A dropped graph's pool is only marked
// freeable: the allocator releases such pools when the cache is emptied, or on running out of
// memory, but not while a capture is under way. Every PGD run captures a graph of its own, so
// at batch 2048 an H100 ran out of memory in the next capture with 60 GiB held in the pools of
// dropped graphs. Emptying this pool at once keeps one graph's memory at a time.
void eio_graph_free(void *graph) {
  auto *g = static_cast<Graph *>(graph);
  std::optional<at::cuda::MempoolId_t> pool;
  try {
    pool = g->graph.pool();
  } catch (const std::exception &) {
    // A graph whose capture failed: nothing of its own to empty.
  }
  delete g;
  if (!pool) return;
  try {
    c10::cuda::CUDACachingAllocator::emptyCache(*pool);
  } catch (const std::exception &) {
    // Nothing to report to: the pool stays cached until the cache is emptied.
  }
}

// The most bytes allocated at once on `device` since the last reset (or the start), through
// `out`; with `reset`, the peak restarts from what is allocated now.
char *eio_cuda_peak_allocated(int device, int reset, int64_t *out) {
  try {
    auto idx = static_cast<c10::DeviceIndex>(device);
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(idx);
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *out = stats.allocated_bytes[all].peak;
    if (reset) c10::cuda::CUDACachingAllocator::resetPeakStats(idx);
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}
#else
char *eio_graph_begin(int, void **) {
  return message("CUDA graphs need a libtorch built with CUDA");
}
char *eio_graph_end(void *) { return message("CUDA graphs need a libtorch built with CUDA"); }
char *eio_graph_replay(void *) { return message("CUDA graphs need a libtorch built with CUDA"); }
void eio_graph_free(void *) {}
char *eio_cuda_peak_allocated(int, int, int64_t *) {
  return message("CUDA memory statistics need a libtorch built with CUDA");
}
#endif
}
