#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from Debian's `kubernetes`
# source package (bookworm ships 1.20.x) and caches them outside the clone, so
# a later run (CI or a developer) reuses them. etcd comes from `etcd-server`.
#
# Output: $REVMESH_KUBE_BIN (default $HOME/.cache/revmesh/kube-1.20/bin) holding
# kube-apiserver, kube-controller-manager; etcd on PATH.
set -euo pipefail

cache_root="${REVMESH_CACHE:-$HOME/.cache/revmesh}"
bin_dir="${REVMESH_KUBE_BIN:-$cache_root/kube-1.20/bin}"

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)

if [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/kube-controller-manager" && ${#need_apt[@]} -eq 0 ]]; then
  echo "install-kube: cached binaries in $bin_dir"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# deb-src twin of the machine's own apt source, so no registry host is named here.
src_list=/etc/apt/sources.list.d/debian-src.sources
if [[ ! -f "$src_list" ]]; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$src_list"
fi
apt-get update -qq
apt-get install -y -qq golang-go etcd-server rsync dpkg-dev >/dev/null

if [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/kube-controller-manager" ]]; then
  exit 0
fi

work="$cache_root/kube-src"
mkdir -p "$work" "$bin_dir"
cd "$work"
if ! ls -d kubernetes-1.20*/ >/dev/null 2>&1; then
  apt-get source -qq kubernetes >/dev/null
fi
src="$(ls -d "$work"/kubernetes-1.20*/ | head -1)"
cd "$src"
mkdir -p .go/src/k8s.io
[[ -e .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes
export GOPATH="$src/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on
echo "install-kube: building kube-apiserver and kube-controller-manager (10-20 min on 2 cores)"
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log"; exit 1; }
out="$(find "$src/_output" -type f -name kube-apiserver -path '*bin*' | head -1)"
cp "$(dirname "$out")/kube-apiserver" "$(dirname "$out")/kube-controller-manager" "$bin_dir/"
echo "install-kube: built into $bin_dir"
