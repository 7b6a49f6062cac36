#!/usr/bin/env bash
# Set up a fresh machine for lightning-edge: Debian's Fashion-MNIST, a virtual environment at .venv,
# the one torch/torchvision pair that installs here, then the package with its dev and cluster extras.
# Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing Debian's dataset-fashion-mnist"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
    else
        echo "== Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' or set data.root" >&2
    fi
fi

# The NEON kernels are tested cross-compiled under qemu-user (tests/test_native_kernels.py skips without them).
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$(uname -m)" = x86_64 ]; then
        echo "== installing Debian's g++-aarch64-linux-gnu and qemu-user (NEON kernel tests)"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++-aarch64-linux-gnu qemu-user
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi

# The pair that installs from this machine's disk and imports together (TOOLCHAIN.md).
case "$(uname -m)" in
    aarch64|arm64) TORCH_PAIR="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH_PAIR="torch==2.14.1 torchvision==0.29.1" ;;
esac
STAMP=.venv/.lightning-edge-installed
# Reinstall (which rebuilds the runtime's C++ extension) when the package metadata or the kernels change.
WANT="$TORCH_PAIR $(cat pyproject.toml setup.py lightning_edge/runtime/csrc/* | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "== installing $TORCH_PAIR (about 2 minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q $TORCH_PAIR
    echo "== installing lightning-edge[dev,cluster]"
    .venv/bin/python -m pip install -q -e ".[dev,cluster]"
    echo "$WANT" > "$STAMP"
fi
echo "== ready: .venv/bin/python train.py recipe=moonshine_resnet"
