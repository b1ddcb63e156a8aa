#!/usr/bin/env bash
# Make Fashion-MNIST available offline: install the Debian package when we are
# root and apt-get exists; otherwise the loader falls back to other sources.
set -uo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "note: could not install dataset-fashion-mnist; the loader will try other sources" >&2
fi
exit 0
