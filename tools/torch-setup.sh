#!/usr/bin/env bash
# Install libtorch for the LSTM prefetcher into .venv (idempotent).
#
# tch 0.24 pairs with PyTorch 2.11.0. PyPI's torch wheel is the CUDA build:
# libtorch_cpu.so itself needs libcudart.so.13 and libcupti.so.13, so a
# CPU-only install takes the torch wheel without its dependencies plus the
# cudart and cupti wheels (see kernel-notes/libtorch.md). With
# SHARDBLK_TORCH_CUDA=1 the full dependency set is installed instead
# (cuDNN, cuBLAS, NCCL, ...) so that libtorch_cuda.so loads on a GPU machine.
#
# Layout made for build.rs and .cargo/config.toml:
#   .venv/torch       -> site-packages/torch     (LIBTORCH: include/ and lib/)
#   .venv/nvidia-lib  -> site-packages/nvidia/cu13/lib (cudart, cupti)
set -euo pipefail
cd "$(dirname "$0")/.."
V=${SHARDBLK_TORCH_VENV:-.venv}
want=2.11.0
if [[ -x $V/bin/python && -e $V/torch/lib/libtorch_cpu.so && -e $V/nvidia-lib/libcudart.so.13 ]] &&
  [[ $(cat "$V/torch-version" 2>/dev/null) == "$want${SHARDBLK_TORCH_CUDA:+-cuda}" ]]; then
  echo "torch-setup: torch $want ready in $V"
  exit 0
fi
command -v python3 >/dev/null || { echo "torch-setup: python3 not found" >&2; exit 1; }
python3 -m venv "$V" 2>/dev/null || {
  echo "torch-setup: installing python3-venv"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$V"
}
pip=("$V/bin/pip" install -q --disable-pip-version-check)
echo "torch-setup: installing torch==$want (about 530 MB) into $V"
if [[ -n ${SHARDBLK_TORCH_CUDA:-} ]]; then
  "${pip[@]}" "torch==$want"
else
  "${pip[@]}" --no-deps "torch==$want"
  "${pip[@]}" "cuda-toolkit[cudart,cupti]==13.0.2"
fi
site=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$site/torch" "$V/torch"
ln -sfn "$site/nvidia/cu13/lib" "$V/nvidia-lib"
echo "$want${SHARDBLK_TORCH_CUDA:+-cuda}" >"$V/torch-version"
test -e "$V/torch/lib/libtorch_cpu.so" && test -e "$V/nvidia-lib/libcudart.so.13"
echo "torch-setup: torch $want ready in $V"
