#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and the node's kubelet,
# kube-proxy and kube-scheduler from Debian's `kubernetes`
# source package (bookworm ships 1.20.x) and caches them outside the clone, so
# a later run (CI or a developer) reuses them. etcd comes from `etcd-server`.
#
# Output: $REVMESH_KUBE_BIN (default $HOME/.cache/revmesh/kube-1.20/bin) holding
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy;
# etcd on PATH.
set -euo pipefail

cache_root="${REVMESH_CACHE:-$HOME/.cache/revmesh}"
bin_dir="${REVMESH_KUBE_BIN:-$cache_root/kube-1.20/bin}"

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)

# Bump when the build below changes, so cached binaries are rebuilt.
recipe="3: reflect2 1.0.2 from Debian (1.0.1 faults under Go >= 1.18); node binaries"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
cached() {
  for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
  [[ "$(cat "$bin_dir/RECIPE" 2>/dev/null)" == "$recipe" ]]
}

if cached && [[ ${#need_apt[@]} -eq 0 ]]; then
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
apt-get install -y -qq golang-go etcd-server rsync dpkg-dev golang-github-modern-go-reflect2-dev >/dev/null

if cached; then
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
# The vendored reflect2 1.0.1 reads Go runtime internals that changed in Go 1.18
# and makes the API server die with "fatal error: fault"; 1.0.2 is API-compatible.
reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
rm -rf vendor/github.com/modern-go/reflect2
mkdir -p vendor/github.com/modern-go/reflect2
cp "$reflect2_src"/*.go "$reflect2_src"/*.s vendor/github.com/modern-go/reflect2/ 2>/dev/null || cp "$reflect2_src"/*.go vendor/github.com/modern-go/reflect2/
rm -f vendor/github.com/modern-go/reflect2/*_test.go
mkdir -p .go/src/k8s.io
[[ -e .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes
export GOPATH="$src/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on
echo "install-kube: building ${binaries[*]} (15-25 min on 2 cores)"
make WHAT="$(printf 'cmd/%s ' "${binaries[@]}")" >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log"; exit 1; }
out="$(find "$src/_output" -type f -name kube-apiserver -path '*bin*' | head -1)"
for b in "${binaries[@]}"; do cp "$(dirname "$out")/$b" "$bin_dir/"; done
echo "$recipe" >"$bin_dir/RECIPE"
echo "install-kube: built into $bin_dir"
