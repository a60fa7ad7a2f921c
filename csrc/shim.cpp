// The few libtorch entry points eio needs that tch does not bind, compiled by build.rs against
// the libtorch torch-sys links (same headers, same ABI):
// - clearing a gradient, PyTorch's `zero_grad(set_to_none=True)`: the optimiser then knows on
//   the host which tensors took part in a step (a defined gradient) without reading device
//   memory;
// - the multi-tensor (`_foreach_*`) SGD update PyTorch's optimisers use on CUDA
//   (torch/optim/sgd.py, `_multi_tensor_sgd`): a handful of kernel launches per step instead of
//   six per tensor.
// Every function catches C++ exceptions and returns the message (malloc'd) or null.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_sub.h>

#include <cstdlib>
#include <cstring>
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
}
