#!/usr/bin/env python3
"""Builds Revmesh's container images as docker-archive tarballs, with no
registry and no container engine, for nodes that load images with
`ctr -n k8s.io images import` (the node tests).

Each image is one layer: the binaries (debug info stripped), the shared
libraries `ldd` names with the symlinks that lead to them on this machine,
the dynamic loader, a minimal /etc (passwd, group, nsswitch.conf) and /tmp.
The sidecar image also carries iptables (the nft variant, as on the host)
with its xtables modules, because `sidecar init` runs iptables-restore.
The pause image holds one static C program (tests/harness/pause.c).

Output is deterministic: fixed modification times and owners, sorted
entries, so the same binaries always give the same image digests.

    images.py --out DIR --target-dir "$CARGO_TARGET_DIR/debug" --tag dev \\
              [--sidecar-versions 1-24-5,1-25-2] [--only sidecar,mesh-app] [--verify]

Every sidecar tag reports its own version: the image's Env sets
REVMESH_PROXY_VERSION to the tag. `--sidecar-versions 1-24-5` adds the tag
1.24.5 (dots, like the control-plane chart's default tag for revision
1-24-5) to the sidecar and control-plane images.

Prints one line per image reference: `<ref> <archive>`; DIR/images.json
lists the same with each image's config digest.
"""

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPOSITORY = "revmesh.local"
MTIME = 0
CREATED = "1970-01-01T00:00:00Z"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PAUSE_TAG = "3.2"

# Users of the images: apps run as 1000, the proxy as 1337 (its traffic is
# never captured), the control plane, webhook and gateway as 65532 (as the
# Dockerfile and charts say), pause as 65535; the init container is root.
USERS = [
    ("root", 0, "/root"),
    ("revmesh", 1000, "/tmp"),
    ("revmesh-proxy", 1337, "/tmp"),
    ("nonroot", 65532, "/tmp"),
    ("pause", 65535, "/"),
]
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"

# The iptables commands `sidecar init` and operators use; all are the one
# multi-call binary, which picks its job from the name it is called by.
IPTABLES_NAMES = ["iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"]


class ImageError(Exception):
    pass


def rust_image(binary, user, cmd=None):
    return {"binaries": [binary], "user": user, "entrypoint": [f"/usr/local/bin/{binary}"], "cmd": cmd}


IMAGES = {
    "control-plane": rust_image("control-plane", "65532:65532"),
    "webhook": rust_image("webhook", "65532:65532"),
    "sidecar": dict(rust_image("sidecar", "1337:1337"), iptables=True),
    "graphql-gateway": rust_image("graphql-gateway", "65532:65532"),
    "mesh-app": rust_image("mesh-app", "1000:1000", cmd=["serve"]),
    "pause": {"binaries": [], "user": "65535:65535", "entrypoint": ["/pause"], "cmd": None},
}


class Rootfs:
    """A file tree to be written as one deterministic layer tar."""

    def __init__(self):
        # image path (no leading slash) -> ("dir", mode) | ("file", host path, mode) | ("bytes", data, mode) | ("link", target)
        self.entries = {}

    def _put(self, path, entry):
        path = path.strip("/")
        old = self.entries.get(path)
        if old is not None and old != entry and not (old[0] == "dir" and entry[0] == "dir"):
            raise ImageError(f"/{path} is added twice, as {old[0]} and as {entry[0]}")
        self.entries[path] = entry

    def dir(self, path, mode=0o755):
        self._put(path, ("dir", mode))

    def data(self, path, text, mode=0o644):
        self._put(path, ("bytes", text.encode() if isinstance(text, str) else text, mode))

    def file(self, path, host_path, mode=None):
        st = os.stat(host_path)
        self._put(path, ("file", host_path, mode if mode is not None else st.st_mode & 0o755))

    def link(self, path, target):
        self._put(path, ("link", target))

    def host_path(self, path, depth=0):
        """Copies a host file to the same path, recreating every symlink on
        the way (merged /usr, /lib64, library version links), so the loader
        and libraries resolve in the image as they do here."""
        if depth > 40:
            raise ImageError(f"too many symlinks resolving {path}")
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts)):
            current = "/" + "/".join(parts[: i + 1])
            if os.path.islink(current):
                target = os.readlink(current)
                self.link(current, target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
                return self.host_path("/".join([resolved] + parts[i + 1 :]), depth + 1)
            if i < len(parts) - 1:
                self.dir(current)
            elif os.path.isfile(current):
                self.file(current, current)
            else:
                raise ImageError(f"{current} is not a file")

    def write_layer(self, out):
        """Writes the tree as a tar to the binary file `out`; returns its sha256."""
        # Parents of everything exist as directories.
        for path in list(self.entries):
            parent = os.path.dirname(path)
            while parent:
                if parent not in self.entries:
                    self.entries[parent] = ("dir", 0o755)
                elif self.entries[parent][0] == "link":
                    raise ImageError(f"/{path} lies under the symlink /{parent}; add it by its resolved path")
                parent = os.path.dirname(parent)
        digest = hashlib.sha256()

        class Hashing(io.RawIOBase):
            def writable(self):
                return True

            def write(self, b):
                digest.update(b)
                return out.write(b)

        with tarfile.open(fileobj=Hashing(), mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for path in sorted(self.entries):
                entry = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime = MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                kind = entry[0]
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    info.mode = entry[1]
                    tar.addfile(info)
                elif kind == "link":
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry[1]
                    info.mode = 0o777
                    tar.addfile(info)
                elif kind == "bytes":
                    info.size = len(entry[1])
                    info.mode = entry[2]
                    tar.addfile(info, io.BytesIO(entry[1]))
                else:
                    info.size = os.path.getsize(entry[1])
                    info.mode = entry[2]
                    with open(entry[1], "rb") as f:
                        tar.addfile(info, f)
        return digest.hexdigest()


def shared_libraries(binary):
    """The libraries and loader `ldd` says `binary` needs (none if static)."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True)
    text = result.stdout + result.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if result.returncode != 0:
        raise ImageError(f"ldd {binary} failed: {text.strip()}")
    paths = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise ImageError(f"{binary} needs {line.split()[0]}, which is not installed here")
        m = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            paths.append(m.group(1))
    return paths


class Stripper:
    """Copies of binaries without debug info (debug builds are mostly that)."""

    def __init__(self, workdir, enabled):
        self.workdir = workdir
        self.enabled = enabled and shutil.which("objcopy") is not None
        self.done = {}

    def __call__(self, path):
        if not self.enabled:
            return path
        if path not in self.done:
            out = os.path.join(self.workdir, f"stripped-{len(self.done)}-{os.path.basename(path)}")
            subprocess.run(["objcopy", "--strip-debug", path, out], check=True)
            self.done[path] = out
        return self.done[path]


def base_rootfs():
    fs = Rootfs()
    fs.data("etc/passwd", "".join(f"{name}:x:{uid}:{uid}:{name}:{home}:/sbin/nologin\n" for name, uid, home in USERS))
    fs.data("etc/group", "".join(f"{name}:x:{uid}:\n" for name, uid, _ in USERS))
    fs.data("etc/nsswitch.conf", NSSWITCH)
    fs.dir("tmp", 0o1777)
    fs.dir("root", 0o700)
    # Mount points the runtime fills.
    for mount_point in ["dev", "proc", "sys"]:
        fs.dir(mount_point)
    return fs


def add_with_libraries(fs, host_binary, image_path, strip):
    fs.file(image_path, strip(host_binary), 0o755)
    for lib in shared_libraries(host_binary):
        fs.host_path(lib)


def add_iptables(fs, variant):
    """The iptables multi-call binary, its command names and xtables modules."""
    multi = f"/usr/sbin/xtables-{variant}-multi"
    if not os.path.isfile(multi):
        raise ImageError(f"{multi} is missing: apt-get install iptables")
    fs.host_path(multi)
    for lib in shared_libraries(multi):
        fs.host_path(lib)
    for name in IPTABLES_NAMES:
        fs.link(f"usr/sbin/{name}", f"xtables-{variant}-multi")
    # Matches and targets (owner, REDIRECT, ...) are loaded at run time.
    modules = None
    for line in subprocess.run(["dpkg", "-L", "iptables"], capture_output=True, text=True, check=True).stdout.splitlines():
        if re.search(r"/xtables/lib[^/]+\.so$", line):
            modules = os.path.dirname(line)
            fs.host_path(line)
            for lib in shared_libraries(line):
                fs.host_path(lib)
    if modules is None:
        raise ImageError("dpkg -L iptables lists no xtables modules; reinstall iptables")


def build_pause(workdir, source):
    out = os.path.join(workdir, "pause")
    # -ffile-prefix-map keeps this machine's paths out of the binary.
    subprocess.run(["gcc", "-static", "-Os", "-Wall", f"-ffile-prefix-map={os.path.dirname(source)}=.", "-o", out, source], check=True)
    subprocess.run(["strip", out], check=True)
    return out


def image_config(name, spec, tag, env, diff_id, labels):
    config = {
        "User": spec["user"],
        "Env": [f"PATH={PATH}"] + env,
        "Entrypoint": spec["entrypoint"],
        "WorkingDir": "/",
        "Labels": dict({"org.opencontainers.image.title": f"revmesh {name}", "org.opencontainers.image.version": tag}, **labels),
    }
    if spec["cmd"]:
        config["Cmd"] = spec["cmd"]
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": CREATED, "created_by": "tests/harness/images.py"}],
    }


def add_blob(tar, name, data=None, path=None):
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    info.mode = 0o644
    if path is not None:
        info.size = os.path.getsize(path)
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_archive(path, layer_path, diff_id, variants):
    """A docker-archive (manifest.json, config JSONs, layer.tar) holding
    one layer and one image per (tags, config) variant."""
    manifest = []
    configs = []
    for tags, config in variants:
        data = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        configs.append((digest, data))
        manifest.append({"Config": f"{digest}.json", "RepoTags": tags, "Layers": [f"{diff_id}/layer.tar"]})
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        dir_info = tarfile.TarInfo(diff_id)
        dir_info.type = tarfile.DIRTYPE
        dir_info.mode = 0o755
        dir_info.mtime = MTIME
        tar.addfile(dir_info)
        add_blob(tar, f"{diff_id}/layer.tar", path=layer_path)
        for digest, data in configs:
            add_blob(tar, f"{digest}.json", data=data)
        add_blob(tar, "manifest.json", data=json.dumps(manifest, indent=1).encode())
    return [(tags, digest) for (tags, _), (digest, _) in zip(variants, configs)]


def dotted(version):
    if not re.fullmatch(r"[0-9a-z]+(-[0-9a-z]+)*", version):
        raise ImageError(f"--sidecar-versions entry {version!r} is not a version name like 1-24-5")
    return version.replace("-", ".")


def build(args):
    here = os.path.dirname(os.path.abspath(__file__))
    wanted = list(IMAGES) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    for name in wanted:
        if name not in IMAGES:
            raise ImageError(f"--only names {name!r}; images are {', '.join(IMAGES)}")
    versions = [dotted(v.strip()) for v in args.sidecar_versions.split(",") if v.strip()] if args.sidecar_versions else []
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", args.tag):
        raise ImageError(f"--tag {args.tag!r} is not a valid image tag")
    os.makedirs(args.out, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="revmesh-images-") as work:
        strip = Stripper(work, not args.no_strip)
        for name in wanted:
            started = time.monotonic()
            spec = IMAGES[name]
            fs = base_rootfs()
            for binary in spec["binaries"]:
                host = os.path.join(args.target_dir, binary)
                if not os.path.isfile(host):
                    raise ImageError(f"{host} does not exist: build it first (cargo build -p {binary})")
                add_with_libraries(fs, host, f"usr/local/bin/{binary}", strip)
            if spec.get("iptables"):
                add_iptables(fs, args.iptables)
            if name == "pause":
                fs.file("pause", build_pause(work, os.path.join(here, "pause.c")), 0o755)
            layer_path = os.path.join(work, f"{name}.layer.tar")
            with open(layer_path, "wb") as out:
                diff_id = fs.write_layer(out)

            ref = lambda tag: f"{REPOSITORY}/{name}:{tag}"  # noqa: E731
            if name == "sidecar":
                # One image per tag: each reports its tag as its version.
                variants = [([ref(t)], image_config(name, spec, t, [f"REVMESH_PROXY_VERSION={t}"], diff_id, {"io.revmesh.proxy-version": t})) for t in [args.tag] + versions]
            elif name == "control-plane":
                tags = [args.tag] + [v for v in versions if v != args.tag]
                variants = [([ref(t) for t in tags], image_config(name, spec, args.tag, [], diff_id, {}))]
            elif name == "pause":
                variants = [([ref(PAUSE_TAG)], image_config(name, spec, PAUSE_TAG, [], diff_id, {}))]
            else:
                variants = [([ref(args.tag)], image_config(name, spec, args.tag, [], diff_id, {}))]
            archive = os.path.join(args.out, f"{name}.tar")
            for tags, digest in write_archive(archive, layer_path, diff_id, variants):
                for t in tags:
                    results.append({"ref": t, "archive": archive, "config": f"sha256:{digest}", "image": name})
            size = os.path.getsize(archive)
            print(f"{name}: {size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s", file=sys.stderr)
            if args.verify:
                verify(name, spec, layer_path, work, args.iptables)
    with open(os.path.join(args.out, "images.json"), "w") as f:
        json.dump(results, f, indent=1)
    for r in results:
        print(f"{r['ref']} {r['archive']}")
    return results


def run_checked(what, command, env=None, expect=None):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    output = result.stdout + result.stderr
    if result.returncode != 0 or (expect and not all(e in output for e in expect)):
        raise ImageError(f"{what}: `{' '.join(command)}` exited {result.returncode}, expected {expect or 'success'}:\n{output}")
    return output


def verify(name, spec, layer_path, work, iptables_variant):
    """Runs the image's programs from its own root (libraries complete, the
    user exists, iptables loads its modules). Needs root for chroot."""
    root = os.path.join(work, f"{name}.rootfs")
    os.makedirs(root)
    subprocess.run(["tar", "-xf", layer_path, "-C", root], check=True)
    env = {"PATH": PATH}
    user = ["--userspec", spec["user"]]
    if name == "pause":
        run_checked("pause", ["chroot", *user, root, "/pause", "-v"], env, ["revmesh pause"])
    else:
        run_checked(f"{name} --help", ["chroot", *user, root, spec["entrypoint"][0], "--help"], env, ["Usage"])
    if spec.get("iptables"):
        for command in ["iptables-restore", "ip6tables-restore", "iptables"]:
            run_checked(f"{name}: {command}", ["chroot", root, command, "--version"], env, ["nf_tables" if iptables_variant == "nft" else "legacy"])
        # The init container's job, in network and mount namespaces of its
        # own, on a read-only root as the injected init container has it
        # (the runtime provides /dev; here a private bind mount does).
        script = (
            f"mount --bind {root} {root} && mount -o remount,bind,ro {root} && mount --rbind /dev {root}/dev"
            f" && chroot {root} /usr/local/bin/sidecar init && chroot {root} iptables-save -t nat"
        )
        run_checked(f"{name}: sidecar init", ["unshare", "--mount", "--net", "sh", "-c", script], env, ["REVMESH_OUTPUT", "REVMESH_INBOUND", "--uid-owner 1337"])
    shutil.rmtree(root)
    print(f"{name}: verified in a chroot", file=sys.stderr)


def verify_containerd(results, containerd, ctr):
    """Imports every archive into a containerd of our own (own root, state
    and socket; CRI off) and checks that every reference is listed."""
    with tempfile.TemporaryDirectory(prefix="revmesh-containerd-") as tmp:
        sock = os.path.join(tmp, "containerd.sock")
        config = os.path.join(tmp, "config.toml")
        with open(config, "w") as f:
            f.write(
                "version = 2\n"
                f'root = "{tmp}/root"\nstate = "{tmp}/state"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{sock}"\n'
                f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
                '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
                # Everything under the temporary root, nothing under /opt.
                f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{tmp}/opt"\n'
            )
        log = open(os.path.join(tmp, "containerd.log"), "w")
        daemon = subprocess.Popen([containerd, "--config", config], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 20
            while subprocess.run([ctr, "-a", sock, "version"], capture_output=True).returncode != 0:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise ImageError(f"containerd did not start; its log:\n{open(log.name).read()}")
                time.sleep(0.2)
            for archive in sorted({r["archive"] for r in results}):
                started = time.monotonic()
                run_checked(f"import {archive}", [ctr, "-a", sock, "-n", "k8s.io", "images", "import", archive])
                print(f"imported {os.path.basename(archive)} in {time.monotonic() - started:.1f} s", file=sys.stderr)
            listed = run_checked("ctr images ls", [ctr, "-a", sock, "-n", "k8s.io", "images", "ls", "-q"]).split()
            missing = [r["ref"] for r in results if r["ref"] not in listed]
            if missing:
                raise ImageError(f"containerd lists {listed}, not {missing}")
            print(f"containerd imported all {len(results)} references", file=sys.stderr)
            run_containers(results, ctr, sock)
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            log.close()


class Container:
    """A container of the private containerd, run by `ctr run` (runc)."""

    def __init__(self, ctr, sock, ref, cid, command, options=()):
        self.ctr, self.sock, self.cid = ctr, sock, cid
        self.output = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([ctr, "-a", sock, "-n", "k8s.io", "run", "--rm", *options, ref, cid, *command], stdout=self.output, stderr=subprocess.STDOUT)

    def text(self):
        self.output.seek(0)
        return self.output.read()

    def wait_for(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ImageError(f"container {self.cid} never printed {text!r}; its output:\n{self.text()}")
            time.sleep(0.1)

    def exec(self, command):
        return run_checked(f"exec in {self.cid}", [self.ctr, "-a", self.sock, "-n", "k8s.io", "task", "exec", "--exec-id", "check", self.cid, *command])

    def stop(self):
        """SIGTERM, as the kubelet sends it; returns the exit code."""
        subprocess.run([self.ctr, "-a", self.sock, "-n", "k8s.io", "task", "kill", "-s", "SIGTERM", self.cid], capture_output=True)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            subprocess.run([self.ctr, "-a", self.sock, "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", self.cid], capture_output=True)
            self.process.wait()
            raise ImageError(f"container {self.cid} ignored SIGTERM for 20 s; its output:\n{self.text()}")


def run_containers(results, ctr, sock):
    """Starts each image under the real runtime: every sidecar tag reports
    its own version, mesh-app serves and answers its own `get`, and pause
    exits on SIGTERM."""
    for i, r in enumerate(results):
        name, tag = r["image"], r["ref"].rsplit(":", 1)[1]
        # runc keeps state by container id under one root for every containerd
        # on the host: ids of our own, so a node's runtime is never touched.
        cid = f"revmesh-images-check-{os.getpid()}-{i}"
        if name == "sidecar":
            # As injected: uid 1337 (the image's user) on a read-only root.
            c = Container(ctr, sock, r["ref"], cid, ["/usr/local/bin/sidecar", "run", "--revision", "check", "--control-plane", "127.0.0.1:9", "--xds-plaintext", "--capture", "false"], ["--read-only"])
            c.wait_for(f"version={tag} ")
            c.stop()
        elif name == "mesh-app":
            c = Container(ctr, sock, r["ref"], cid, ["/usr/local/bin/mesh-app", "serve", "--port", "8080", "--name", "check"], ["--read-only"])
            c.wait_for("serving")
            answer = c.exec(["/usr/local/bin/mesh-app", "get", "http://127.0.0.1:8080/anything/check"])
            if '"path":"/anything/check"' not in answer:
                raise ImageError(f"mesh-app in {r['ref']} answered {answer!r}")
            if c.stop() != 0:
                raise ImageError(f"mesh-app in {r['ref']} did not exit 0 on SIGTERM:\n{c.text()}")
        elif name == "pause":
            c = Container(ctr, sock, r["ref"], cid, [])
            time.sleep(0.5)
            if c.stop() != 0 or "exiting" not in c.text():
                raise ImageError(f"pause did not exit cleanly on SIGTERM:\n{c.text()}")
        else:
            c = Container(ctr, sock, r["ref"], cid, [f"/usr/local/bin/{name}", "--help"])
            c.process.wait(timeout=20)
            if c.process.returncode != 0 or "Usage" not in c.text():
                raise ImageError(f"{r['ref']}: {name} --help failed:\n{c.text()}")
        print(f"ran {r['ref']} under containerd", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the archives")
    parser.add_argument("--target-dir", required=True, help="where cargo put the binaries, e.g. $CARGO_TARGET_DIR/debug")
    parser.add_argument("--tag", required=True, help="tag of every image (pause is always 3.2)")
    parser.add_argument("--sidecar-versions", default="", help="extra sidecar tags, each reporting its own version: 1-24-5,1-25-2 (tagged 1.24.5, 1.25.2)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(IMAGES)}")
    parser.add_argument("--iptables", choices=["nft", "legacy"], default="nft", help="iptables variant in the sidecar image (default nft, as on these hosts)")
    parser.add_argument("--no-strip", action="store_true", help="keep debug info in the binaries")
    parser.add_argument("--verify", action="store_true", help="run each image's programs in a chroot of its layer (root)")
    parser.add_argument("--verify-containerd", action="store_true", help="import the archives into a private containerd and list them (root)")
    args = parser.parse_args()
    try:
        results = build(args)
        if args.verify_containerd:
            containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
            if not containerd or not ctr:
                raise ImageError("containerd and ctr are needed: apt-get install containerd")
            verify_containerd(results, containerd, ctr)
    except (ImageError, subprocess.CalledProcessError, OSError) as e:
        print(f"images.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
