# Sourced by the other scripts: makes the libtorch from the pinned PyPI torch wheel visible to
# cargo (tch's build script) and to the built binaries. The virtualenv lives in a cache outside
# the checkout, so fresh clones (CI) reuse it; it is created on first use.
EIO_TORCH_VERSION=2.11.0
EIO_CACHE="${EIO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eio}"
EIO_VENV="${EIO_VENV:-$EIO_CACHE/torch-$EIO_TORCH_VERSION}"
if ! "$EIO_VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$EIO_TORCH_VERSION')" 2>/dev/null; then
  echo "eio: creating $EIO_VENV with torch==$EIO_TORCH_VERSION (one time, about 1-2 minutes)" >&2
  mkdir -p "$EIO_CACHE"
  python3 -m venv "$EIO_VENV" || { echo "error: could not create a Python virtualenv at $EIO_VENV" >&2; return 1 2>/dev/null || exit 1; }
  "$EIO_VENV/bin/pip" install -q "torch==$EIO_TORCH_VERSION" \
    || { echo "error: pip install torch==$EIO_TORCH_VERSION failed" >&2; return 1 2>/dev/null || exit 1; }
fi
export VIRTUAL_ENV="$EIO_VENV"
export PATH="$EIO_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
EIO_TORCH_LIB="$("$EIO_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
export LD_LIBRARY_PATH="$EIO_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# libtorch's OpenMP threads spin while waiting; on a busy 2-core machine (a background run plus a
# build) that burns the CPU in the kernel. Sleep instead.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
