//! A real single-node cluster beside the API server: containerd 1.6 (Debian)
//! with its CRI plugin, runc behind a small wrapper, the CNI bridge plugins,
//! dnsmasq serving `cluster.local` from Services, and kubelet, kube-proxy and
//! kube-scheduler 1.20 built from the same Debian source tree.
//!
//! Everything the rig changes on the host is recorded and put back on drop,
//! even when the test fails: the bridge and its subnet, iptables (both
//! families), and the sysctls kubelet and kube-proxy write. Every process the
//! rig starts runs with one group id, and an iptables chain rejects and counts
//! any packet such a process sends beyond loopback and the rig's subnet (pods
//! are held to the same in FORWARD): [`Node::egress_violations`] reads those
//! counters, so a test can show that nothing left the machine.
//!
//! Needs root, like the sidecar's network-namespace tests.

use crate::{free_port, kube_bin_dir, wait_for, Cluster, ClusterOptions, Fatal, Process};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bridge the rig creates (and deletes); pods hang off it.
pub const BRIDGE: &str = "rvmnode0";
/// The node's address on the bridge: API server, kubelet, DNS, pods' gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The pod subnet, the only non-loopback network rig processes may reach.
pub const SUBNET: &str = "10.213.0.0/24";
/// The Service range the harness's API server allocates ClusterIPs from.
pub const SERVICE_RANGE: &str = "10.96.0.0/24";
/// Group id of every rig process: the egress guard matches packets by it.
pub const RIG_GID: u32 = 47213;
/// The name the kubelet registers.
pub const NODE_NAME: &str = "revmesh-node";
/// The pause image the CRI plugin uses for pod sandboxes (built locally by
/// `tests/harness/images.py`, never pulled).
pub const PAUSE_IMAGE: &str = "revmesh.local/pause:3.2";

const EGRESS_CHAIN: &str = "REVMESH-NODE-EGRESS";
const FORWARD_CHAIN: &str = "REVMESH-NODE-FORWARD";

/// Sysctls kubelet, kube-proxy or the rig write; each is put back on drop.
const SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
];

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_input(program: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn need_tool(tool: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        bail!("{tool} is not installed: apt-get install {package} (or run .ci/run, which installs the node's tools)");
    }
    Ok(())
}

/// The host state the rig changes, recorded at start and restored on drop:
/// the bridge, iptables of both families, sysctls. Restoring is best effort
/// and reports what it could not undo on stderr.
struct HostState {
    sysctls: Vec<(PathBuf, String)>,
    iptables: Vec<(&'static str, String)>,
    /// Host-wide folders kubelet, containerd and CNI write per pod (network
    /// namespaces are removed only when kubelet garbage-collects a sandbox,
    /// long after the pod is gone): entries that were not there are removed.
    folders: Vec<(&'static str, std::collections::BTreeSet<std::ffi::OsString>)>,
}

const POD_FOLDERS: &[&str] = &["/var/run/netns", "/var/log/pods", "/var/log/containers", "/var/lib/cni/results"];

fn folder_entries(folder: &str) -> std::collections::BTreeSet<std::ffi::OsString> {
    std::fs::read_dir(folder).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default()
}

impl HostState {
    fn record() -> Result<HostState> {
        let mut sysctls = Vec::new();
        for name in SYSCTLS {
            let path = Path::new("/proc/sys").join(name);
            if let Ok(value) = std::fs::read_to_string(&path) {
                sysctls.push((path, value.trim().to_string()));
            }
        }
        let mut iptables = Vec::new();
        for family in ["iptables", "ip6tables"] {
            iptables.push((family, run(&format!("{family}-save"), &[])?));
        }
        let folders = POD_FOLDERS.iter().map(|f| (*f, folder_entries(f))).collect();
        Ok(HostState { sysctls, iptables, folders })
    }

    fn restore(&self) {
        for (family, saved) in &self.iptables {
            // Tables that did not exist at the start (kube-proxy creates
            // `nat` on a bare host) are flushed: the saved dump does not name them.
            let saved_tables: Vec<&str> = saved.lines().filter_map(|l| l.strip_prefix('*')).collect();
            for table in ["filter", "nat", "mangle", "raw"] {
                if !saved_tables.contains(&table) {
                    let _ = run(family, &["-t", table, "-F"]);
                    let _ = run(family, &["-t", table, "-X"]);
                }
            }
            if let Err(e) = run_input(&format!("{family}-restore"), &[], saved) {
                eprintln!("node rig: could not restore {family}: {e:#}");
            }
        }
        let _ = run("ip", &["link", "del", BRIDGE]);
        for (folder, before) in &self.folders {
            for entry in folder_entries(folder).difference(before) {
                let path = Path::new(folder).join(entry);
                let removed = if *folder == "/var/run/netns" {
                    run("ip", &["netns", "delete", &entry.to_string_lossy()]).map(|_| ())
                } else if path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(Into::into)
                } else {
                    std::fs::remove_file(&path).map_err(Into::into)
                };
                if let Err(e) = removed {
                    eprintln!("node rig: could not remove {}: {e:#}", path.display());
                }
            }
        }
        for (path, value) in &self.sysctls {
            if std::fs::read_to_string(path).map(|v| v.trim() != value).unwrap_or(false) {
                if let Err(e) = std::fs::write(path, value) {
                    eprintln!("node rig: could not restore {}: {e}", path.display());
                }
            }
        }
    }
}

fn write_sysctl(name: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(name);
    std::fs::write(&path, value).with_context(|| format!("setting {}", path.display()))
}

/// The bridge, forwarding, and the egress guard.
fn set_up_network() -> Result<()> {
    // A run that was killed may have left its bridge behind.
    let _ = run("ip", &["link", "del", BRIDGE]);
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    write_sysctl("net/ipv4/ip_forward", "1")?;
    // Pod-to-Service traffic between two pods on the bridge must cross
    // iptables so kube-proxy's DNAT applies.
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;

    // The guard lives in `mangle`, which kubelet, kube-proxy and the CNI
    // plugins leave alone: their ACCEPT rules in `filter` come first there
    // and would let a packet past a guard placed after them.
    let gid = RIG_GID.to_string();
    for (family, allowed) in [("iptables", &["127.0.0.0/8", SUBNET, SERVICE_RANGE][..]), ("ip6tables", &["::1/128"][..])] {
        let _ = run(family, &["-t", "mangle", "-D", "OUTPUT", "-m", "owner", "--gid-owner", &gid, "-j", EGRESS_CHAIN]);
        let _ = run(family, &["-t", "mangle", "-F", EGRESS_CHAIN]);
        let _ = run(family, &["-t", "mangle", "-X", EGRESS_CHAIN]);
        run(family, &["-t", "mangle", "-N", EGRESS_CHAIN])?;
        for net in allowed {
            run(family, &["-t", "mangle", "-A", EGRESS_CHAIN, "-d", net, "-j", "RETURN"])?;
        }
        run(family, &["-t", "mangle", "-A", EGRESS_CHAIN, "-j", "DROP"])?;
        run(family, &["-t", "mangle", "-I", "OUTPUT", "1", "-m", "owner", "--gid-owner", &gid, "-j", EGRESS_CHAIN])?;
    }
    let _ = run("iptables", &["-t", "mangle", "-D", "FORWARD", "-j", FORWARD_CHAIN]);
    let _ = run("iptables", &["-t", "mangle", "-F", FORWARD_CHAIN]);
    let _ = run("iptables", &["-t", "mangle", "-X", FORWARD_CHAIN]);
    run("iptables", &["-t", "mangle", "-N", FORWARD_CHAIN])?;
    run("iptables", &["-t", "mangle", "-A", FORWARD_CHAIN, "-s", SUBNET, "-d", SUBNET, "-j", "RETURN"])?;
    // A Service address still here was not translated: the Service has no
    // ready endpoint (a pod's proxy calling a control plane that is down).
    // It must not leave by the default route, but nobody tried to reach the
    // outside either: dropped, not counted as a violation.
    run("iptables", &["-t", "mangle", "-A", FORWARD_CHAIN, "-s", SUBNET, "-d", SERVICE_RANGE, "-j", "DROP"])?;
    run("iptables", &["-t", "mangle", "-A", FORWARD_CHAIN, "-s", SUBNET, "-j", "DROP"])?;
    run("iptables", &["-t", "mangle", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN])?;
    Ok(())
}

/// Packets a guard chain dropped for going anywhere (`iptables -t mangle
/// -L -v -x`: the DROP rules whose destination is any address).
fn dropped_packets(family: &str, chain: &str) -> Result<u64> {
    let listing = run(family, &["-t", "mangle", "-L", chain, "-n", "-v", "-x"])?;
    Ok(listing
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(2) == Some(&"DROP") && matches!(fields.last(), Some(&"0.0.0.0/0") | Some(&"::/0"))
        })
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

/// Files the rig writes for containerd, runc and CNI.
fn write_runtime_config(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = dir.join("containerd");
    let cni_conf = dir.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf)?;
    std::fs::create_dir_all(root.join("root"))?;
    std::fs::create_dir_all(root.join("state"))?;
    let socket = root.join("containerd.sock");

    // runc would fail every sandbox ("can't get final child's PID from
    // pipe") on a host whose capability bounding set lacks CAP_SYS_RESOURCE:
    // the wrapper takes that capability and any negative oomScoreAdj out of
    // the OCI config before runc reads it.
    let wrapper = dir.join("runc-wrapper");
    let runc = which("runc").context("runc is not installed: apt-get install runc")?;
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/usr/bin/env python3
import json, os, sys
RUNC = {runc:?}

def clean(process):
    if process.get("oomScoreAdj", 0) < 0:
        del process["oomScoreAdj"]
    caps = process.get("capabilities") or {{}}
    for key, values in caps.items():
        caps[key] = [c for c in values if c != "CAP_SYS_RESOURCE"]

def edit(path, in_process):
    with open(path) as f:
        spec = json.load(f)
    clean(spec if in_process else spec.setdefault("process", {{}}))
    with open(path, "w") as f:
        json.dump(spec, f)

args = sys.argv[1:]
for i, a in enumerate(args):
    if a in ("--bundle", "-b") and i + 1 < len(args):
        edit(os.path.join(args[i + 1], "config.json"), False)
    elif a.startswith("--bundle="):
        edit(os.path.join(a.split("=", 1)[1], "config.json"), False)
    elif a in ("--process", "-p") and i + 1 < len(args):
        edit(args[i + 1], True)
    elif a.startswith("--process="):
        edit(a.split("=", 1)[1], True)
os.execv(RUNC, [RUNC] + args)
"#,
            runc = runc.display().to_string()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;

    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
oom_score = 0
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{root}/ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{wrapper}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
            root = root.display(),
            socket = socket.display(),
            wrapper = wrapper.display(),
            cni_bin = cni_bin_dir()?.display(),
            cni_conf = cni_conf.display(),
        ),
    )?;

    // Pods on the rig's bridge, addresses from its subnet; the firewall
    // plugin admits their traffic where the FORWARD policy is DROP.
    let ipam_dir = dir.join("cni/ipam");
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "revmesh-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET, "rangeStart": "10.213.0.10", "rangeEnd": "10.213.0.250", "gateway": NODE_IP.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.display().to_string(),
                }
            },
            {"type": "firewall", "backend": "iptables"},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(cni_conf.join("10-revmesh-node.conflist"), serde_json::to_string_pretty(&conflist)?)?;
    Ok((config, socket))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|p| p.is_file()))
}

fn cni_bin_dir() -> Result<PathBuf> {
    ["/usr/lib/cni", "/opt/cni/bin"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").is_file() && d.join("host-local").is_file())
        .context("the CNI plugins are not installed: apt-get install containernetworking-plugins")
}

/// Keeps dnsmasq's hosts directory in step with the cluster's Services:
/// `<name>.<namespace>.svc.cluster.local` → ClusterIP.
fn feed_dns(kubeconfig: PathBuf, hosts_dir: PathBuf, stop: Arc<AtomicBool>) {
    let mut last = String::new();
    while !stop.load(Ordering::Relaxed) {
        let out = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["get", "services", "--all-namespaces", "-o", "json"])
            .output();
        if let Ok(out) = out.as_ref().map(|o| &o.stdout) {
            if let Ok(list) = serde_json::from_slice::<Value>(out) {
                let text = hosts_file(&list);
                if text != last {
                    let tmp = hosts_dir.with_extension("tmp");
                    if std::fs::write(&tmp, &text).is_ok() && std::fs::rename(&tmp, hosts_dir.join("services")).is_ok() {
                        last = text;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A hosts file for a Service list (pure, for the feeder above).
pub fn hosts_file(services: &Value) -> String {
    let mut text = String::new();
    for svc in services["items"].as_array().into_iter().flatten() {
        let (Some(name), Some(ns), Some(ip)) = (svc["metadata"]["name"].as_str(), svc["metadata"]["namespace"].as_str(), svc["spec"]["clusterIP"].as_str()) else {
            continue;
        };
        if ip.parse::<std::net::IpAddr>().is_err() {
            continue; // headless ("None")
        }
        text.push_str(&format!("{ip} {name}.{ns}.svc.cluster.local\n"));
    }
    text
}

/// The cgroup v1 `cpu` hierarchy, where CPU weights (`cpu.shares`) live.
const CPU_CGROUP_ROOT: &str = "/sys/fs/cgroup/cpu";
/// The group containerd's CRI plugin puts every container under when kubelet
/// runs with `--cgroups-per-qos=false`.
const PODS_CGROUP: &str = "k8s.io";
/// The rig's host side: the test process and every process it starts.
const HOST_CGROUP: &str = "revmesh-node-host";

/// CPU weights laid out as on a real node. There, kubelet gives the pods'
/// parent group (`kubepods`) a weight of 1024 per allocatable core, and the
/// system daemons share one group (`system.slice`) of 1024. On this rig,
/// without it, the API server, etcd, kubelet and containerd each ran at 1024
/// per thread in the root group beside a single `k8s.io` group of 1024 for
/// all pods together: whenever the host side was busy (replacing pods),
/// the pods got a small slice of the 2 cores, and probes and requests that
/// take milliseconds waited seconds.
struct CpuWeights {
    host_group: PathBuf,
    pods_shares_before: Option<String>,
    created_pods_group: bool,
}

impl CpuWeights {
    /// Moves this process (and so everything it starts later) into the host
    /// group and weighs the pods' group by the node's cores. Nothing is done
    /// where the cgroup v1 `cpu` controller is not mounted (cgroup v2 hosts):
    /// the rig then runs with the host's weights, and says so.
    fn apply() -> Result<Option<CpuWeights>> {
        let root = Path::new(CPU_CGROUP_ROOT);
        if !root.join("cpu.shares").is_file() {
            eprintln!("node rig: no cgroup v1 cpu controller at {CPU_CGROUP_ROOT}; pods keep the host's CPU weights");
            return Ok(None);
        }
        let pods = root.join(PODS_CGROUP);
        let created_pods_group = !pods.is_dir();
        let pods_shares_before = if created_pods_group { None } else { std::fs::read_to_string(pods.join("cpu.shares")).ok().map(|s| s.trim().to_string()) };
        let weights = CpuWeights { host_group: root.join(HOST_CGROUP), pods_shares_before, created_pods_group };
        // Half a layout is worse than none: what was changed is put back.
        if let Err(e) = weights.weigh(&pods) {
            weights.restore();
            return Err(e);
        }
        Ok(Some(weights))
    }

    fn weigh(&self, pods: &Path) -> Result<()> {
        if self.created_pods_group {
            std::fs::create_dir(pods).with_context(|| format!("creating {}", pods.display()))?;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::fs::write(pods.join("cpu.shares"), (cores * 1024).to_string()).with_context(|| format!("weighing {}", pods.display()))?;
        if !self.host_group.is_dir() {
            std::fs::create_dir(&self.host_group).with_context(|| format!("creating {}", self.host_group.display()))?;
        }
        std::fs::write(self.host_group.join("cpu.shares"), "1024").with_context(|| format!("weighing {}", self.host_group.display()))?;
        std::fs::write(self.host_group.join("cgroup.procs"), std::process::id().to_string()).with_context(|| format!("moving the test process into {}", self.host_group.display()))
    }

    /// Moves this process back, removes the host group and puts the pods'
    /// weight back (or its group, if the rig made it). Runs after every rig
    /// process has stopped.
    fn restore(&self) {
        let root = Path::new(CPU_CGROUP_ROOT);
        if let Err(e) = std::fs::write(root.join("cgroup.procs"), std::process::id().to_string()) {
            eprintln!("node rig: could not move the test process back to the root cpu cgroup: {e}");
        }
        // Anything still in the group (a process that outlived the rig) goes
        // back to the root group too, so the group can be removed.
        for pid in std::fs::read_to_string(self.host_group.join("cgroup.procs")).unwrap_or_default().split_whitespace() {
            let _ = std::fs::write(root.join("cgroup.procs"), pid);
        }
        if let Err(e) = std::fs::remove_dir(&self.host_group) {
            eprintln!("node rig: could not remove {}: {e}", self.host_group.display());
        }
        let pods = root.join(PODS_CGROUP);
        if self.created_pods_group {
            // Leftover per-container groups keep it; containerd made those.
            let _ = std::fs::remove_dir(&pods);
        } else if let Some(shares) = &self.pods_shares_before {
            if let Err(e) = std::fs::write(pods.join("cpu.shares"), shares) {
                eprintln!("node rig: could not restore {}/cpu.shares: {e}", pods.display());
            }
        }
    }
}

/// A running node. Drop deletes the pods, stops every process and restores the host.
pub struct Node {
    pub cluster: Option<Cluster>,
    processes: Vec<Process>,
    dns_stop: Arc<AtomicBool>,
    dns_feeder: Option<std::thread::JoinHandle<()>>,
    host: Option<HostState>,
    cpu_weights: Option<CpuWeights>,
    pub containerd_socket: PathBuf,
    pub dir: tempfile::TempDir,
    /// Namespaces whose containers' logs a failure prints even when their
    /// pods are Ready (the mesh's own, and a test's load generator, say).
    pub logged_namespaces: Vec<String>,
    /// Held while the node runs: one rig per host (the bridge, the subnet and
    /// the iptables snapshot are host-wide). Dropped last.
    _host_lock: std::fs::File,
}

impl Node {
    /// Starts the API server on the bridge address and a node beside it, and
    /// waits until the node is Ready and DNS answers.
    pub fn start() -> Result<Node> {
        if effective_uid() != 0 {
            bail!("the node rig needs root (it creates a bridge, iptables rules and containers); run the tests as root, as .ci/run does");
        }
        for (tool, package) in [("containerd", "containerd"), ("runc", "runc"), ("ctr", "containerd"), ("dnsmasq", "dnsmasq-base"), ("conntrack", "conntrack"), ("iptables", "iptables")] {
            need_tool(tool, package)?;
        }
        cni_bin_dir()?;
        let bin = kube_bin_dir();
        for b in ["kubelet", "kube-proxy", "kube-scheduler"] {
            if !bin.join(b).is_file() {
                bail!("{} is missing: bash tests/harness/install-kube.sh builds the node binaries", bin.join(b).display());
            }
        }

        let lock_path = std::env::temp_dir().join("revmesh-node-rig.lock");
        let host_lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        // Another test's rig on this host: wait for it to tear down.
        host_lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
        let dir = tempfile::Builder::new().prefix("rvmnode").tempdir()?;
        let host = HostState::record()?;
        let cpu_weights = CpuWeights::apply()?;
        let mut node = Node {
            cluster: None,
            processes: Vec::new(),
            dns_stop: Arc::new(AtomicBool::new(false)),
            dns_feeder: None,
            host: Some(host),
            cpu_weights,
            containerd_socket: PathBuf::new(),
            dir,
            logged_namespaces: vec!["revmesh-system".into()],
            _host_lock: host_lock,
        };
        node.start_components().map(|()| node)
    }

    fn start_components(&mut self) -> Result<()> {
        set_up_network()?;
        let gid = Some(RIG_GID);
        let d = self.dir.path().to_path_buf();
        let logs = d.join("logs");
        std::fs::create_dir_all(&logs)?;

        let cluster = Cluster::start_with(ClusterOptions { address: NODE_IP, gid })?;
        let kubeconfig = cluster.kubeconfig.clone();
        self.cluster = Some(cluster);

        // DNS for cluster.local, fed from Services; nothing else is answered.
        let hosts_dir = d.join("dns-hosts");
        std::fs::create_dir_all(&hosts_dir)?;
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            &format!("--hostsdir={}", hosts_dir.display()),
            "--bind-interfaces",
            &format!("--listen-address={NODE_IP}"),
            "--except-interface=lo",
            "--local=/cluster.local/",
            "--domain-needed",
            "--user=root",
            &format!("--pid-file={}", d.join("dnsmasq.pid").display()),
        ]);
        self.processes.push(Process::spawn_as("dnsmasq", cmd, &logs, gid)?);
        let stop = self.dns_stop.clone();
        let feeder_kubeconfig = kubeconfig.clone();
        self.dns_feeder = Some(std::thread::spawn(move || feed_dns(feeder_kubeconfig, hosts_dir, stop)));

        // containerd with its own root, state and socket.
        let (config, socket) = write_runtime_config(&d)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config).arg("--log-level=info");
        self.processes.push(Process::spawn_as("containerd", cmd, &logs, gid)?);
        self.containerd_socket = socket.clone();
        wait_for("containerd's socket", Duration::from_secs(30), || {
            self.processes.last_mut().context("containerd")?.check_alive()?;
            Ok(run("ctr", &["-a", &socket.display().to_string(), "version"]).ok().map(|_| ()))
        })?;

        let bin = kube_bin_dir();
        let kubelet_dir = d.join("kubelet");
        std::fs::create_dir_all(&kubelet_dir)?;
        // Pods get only the cluster's DNS: no search domains of the host.
        let resolv = d.join("resolv.conf");
        std::fs::write(&resolv, "")?;
        let mut cmd = Command::new(bin.join("kubelet"));
        // kubelet 1.20's ECR credential provider asks the cloud metadata
        // address at every start unless told not to.
        cmd.env("AWS_EC2_METADATA_DISABLED", "true");
        cmd.args([
            &format!("--kubeconfig={}", kubeconfig.display()),
            "--container-runtime=remote",
            &format!("--container-runtime-endpoint=unix://{}", socket.display()),
            "--runtime-request-timeout=2m",
            "--cgroup-driver=cgroupfs",
            "--cgroups-per-qos=false",
            "--enforce-node-allocatable=",
            "--fail-swap-on=false",
            &format!("--root-dir={}", kubelet_dir.join("root").display()),
            &format!("--cert-dir={}", kubelet_dir.join("pki").display()),
            &format!("--volume-plugin-dir={}", kubelet_dir.join("volume-plugins").display()),
            &format!("--node-ip={NODE_IP}"),
            &format!("--address={NODE_IP}"),
            &format!("--port={}", free_port()?),
            "--healthz-bind-address=127.0.0.1",
            &format!("--healthz-port={}", free_port()?),
            "--read-only-port=0",
            "--anonymous-auth=true",
            "--authorization-mode=AlwaysAllow",
            &format!("--cluster-dns={NODE_IP}"),
            "--cluster-domain=cluster.local",
            &format!("--resolv-conf={}", resolv.display()),
            &format!("--hostname-override={NODE_NAME}"),
            "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%,nodefs.inodesFree<1%",
            "--image-gc-high-threshold=100",
            "--image-gc-low-threshold=99",
            // A negative score needs CAP_SYS_RESOURCE, which this host lacks.
            "--oom-score-adj=0",
            "--serialize-image-pulls=false",
            "--max-pods=250",
            "--node-status-update-frequency=4s",
            "--sync-frequency=10s",
            "--v=1",
        ]);
        self.processes.push(Process::spawn_as("kubelet", cmd, &logs, gid)?);

        let mut cmd = Command::new(bin.join("kube-proxy"));
        cmd.args([
            &format!("--kubeconfig={}", kubeconfig.display()),
            "--proxy-mode=iptables",
            &format!("--cluster-cidr={SUBNET}"),
            &format!("--hostname-override={NODE_NAME}"),
            &format!("--bind-address={NODE_IP}"),
            &format!("--healthz-bind-address=127.0.0.1:{}", free_port()?),
            &format!("--metrics-bind-address=127.0.0.1:{}", free_port()?),
            "--oom-score-adj=0",
            // Leave the host's conntrack table size and timeouts alone.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--iptables-sync-period=5s",
            "--iptables-min-sync-period=200ms",
            "--v=1",
        ]);
        self.processes.push(Process::spawn_as("kube-proxy", cmd, &logs, gid)?);

        let mut cmd = Command::new(bin.join("kube-scheduler"));
        cmd.args([&format!("--kubeconfig={}", kubeconfig.display()), "--leader-elect=false", "--port=0", "--secure-port=0", "--v=1"]);
        self.processes.push(Process::spawn_as("kube-scheduler", cmd, &logs, gid)?);

        wait_for("the node to be Ready", Duration::from_secs(120), || {
            self.check_alive()?;
            let node = self.cluster()?.get_json(&["get", "node", NODE_NAME])?;
            let ready = node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
            Ok(ready.then_some(()))
        })?;
        Ok(())
    }

    pub fn cluster(&self) -> Result<&Cluster> {
        self.cluster.as_ref().context("the node's cluster is not running")
    }

    pub fn cluster_mut(&mut self) -> Result<&mut Cluster> {
        self.cluster.as_mut().context("the node's cluster is not running")
    }

    /// Fails if any rig process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.processes {
            p.check_alive()?;
        }
        if let Some(c) = self.cluster.as_mut() {
            c.check_alive()?;
        }
        Ok(())
    }

    /// Imports an image archive (docker-archive or OCI tar) into the CRI
    /// plugin's namespace, where kubelet finds it; nothing is pulled.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        self.ctr(&["images", "import", &archive.display().to_string()]).map(|_| ()).with_context(|| format!("importing {}", archive.display()))
    }

    /// Image references the runtime holds.
    pub fn images(&self) -> Result<Vec<String>> {
        Ok(self.ctr(&["images", "ls", "-q"])?.lines().map(str::to_string).collect())
    }

    /// `ctr` against this rig's containerd, in the CRI plugin's namespace.
    fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.containerd_socket.display().to_string();
        let mut all = vec!["-a", socket.as_str(), "-n", "k8s.io"];
        all.extend_from_slice(args);
        run("ctr", &all)
    }

    /// Packets that rig processes (OUTPUT, by group id) or pods (FORWARD)
    /// tried to send beyond loopback, the rig's subnet and the Service range.
    /// Zero is the rule; anything else names the chain that counted it.
    pub fn egress_violations(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for (family, chain) in [("iptables", EGRESS_CHAIN), ("ip6tables", EGRESS_CHAIN), ("iptables", FORWARD_CHAIN)] {
            let n = dropped_packets(family, chain)?;
            if n > 0 {
                found.push(format!("{family} mangle {chain}: {n} packets dropped"));
            }
        }
        // Flows the kernel tracked that left the rig's networks, whoever sent them.
        if let Ok(flows) = run("conntrack", &["-L", "-s", SUBNET]) {
            for line in flows.lines() {
                if let Some(dst) = line.split_whitespace().find_map(|f| f.strip_prefix("dst=")) {
                    if let Ok(ip) = dst.parse::<Ipv4Addr>() {
                        let inside = ip.is_loopback() || ip.octets()[..3] == [10, 213, 0] || ip.octets()[..3] == [10, 96, 0];
                        if !inside {
                            found.push(format!("conntrack: {line}"));
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// Logs of every component, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut parts: Vec<String> = self.processes.iter().map(|p| format!("--- {} ---\n{}", p.name, p.log_summary(25))).collect();
        // Failed readiness probes take pods out of their Services' endpoints:
        // the first thing to know when requests found no endpoint.
        let probes = self.failed_probes();
        parts.push(format!("--- kubelet: failed probes ({} in all, last 40) ---\n{}", probes.len(), probes[probes.len().saturating_sub(40)..].join("\n")));
        if let Some(c) = &self.cluster {
            parts.push(c.diagnostics());
            if let Ok(events) = c.kubectl(&["get", "events", "--all-namespaces", "--sort-by=.lastTimestamp"]) {
                let lines: Vec<&str> = events.lines().collect();
                parts.push(format!("--- events (last 40) ---\n{}", lines[lines.len().saturating_sub(40)..].join("\n")));
            }
            if let Ok(pods) = c.kubectl(&["get", "pods", "--all-namespaces", "-o", "wide"]) {
                parts.push(format!("--- pods ---\n{pods}"));
            }
            // Logs of the containers of pods that are not Ready (why they are
            // not), and of every pod in the logged namespaces.
            if let Ok(list) = c.get_json(&["get", "pods", "--all-namespaces"]) {
                for pod in list["items"].as_array().into_iter().flatten() {
                    let ready = pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
                    let (Some(ns), Some(name)) = (pod["metadata"]["namespace"].as_str(), pod["metadata"]["name"].as_str()) else { continue };
                    let always = self.logged_namespaces.iter().any(|n| n == ns);
                    if ready && !always {
                        continue;
                    }
                    let state = if ready { "ready" } else { "not ready" };
                    for container in pod["spec"]["containers"].as_array().into_iter().chain(pod["spec"]["initContainers"].as_array()).flatten() {
                        let Some(cname) = container["name"].as_str() else { continue };
                        let logs = c.kubectl(&["-n", ns, "logs", name, "-c", cname, "--tail=40"]).unwrap_or_else(|e| format!("(no logs: {e:#})"));
                        parts.push(format!("--- {ns}/{name} {cname} ({state}) ---\n{logs}"));
                    }
                }
            }
        }
        parts.join("\n")
    }

    /// Starts a node and runs `scenario` on it; on failure every component's
    /// log is printed before the error is returned.
    pub fn run<T>(scenario: impl FnOnce(&mut Node) -> Result<T>) -> Result<T> {
        let mut node = Node::start()?;
        let result = scenario(&mut node);
        if let Err(e) = &result {
            eprintln!("{}", node.diagnostics());
            eprintln!("the scenario failed: {e:#}");
            // CI shows only the end of a failure's output: the returned
            // error is printed last, so it carries the node's vital signs.
            let brief = node.brief();
            // A developer can look around the failed node before it is torn down.
            if let Some(seconds) = std::env::var("REVMESH_NODE_HOLD_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()) {
                let release = node.dir.path().join("release");
                eprintln!(
                    "holding the node for {seconds} s: KUBECONFIG={}; `touch {}` tears it down now",
                    node.cluster().map(|c| c.kubeconfig.display().to_string()).unwrap_or_default(),
                    release.display()
                );
                let until = std::time::Instant::now() + Duration::from_secs(seconds);
                while std::time::Instant::now() < until && !release.exists() {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            // The error's own words go last: CI keeps the end of the output.
            return result.map_err(|e| anyhow::anyhow!("{brief}\n\nthe scenario failed: {e:#}"));
        }
        result
    }

    /// kubelet's log lines of failed probes.
    fn failed_probes(&self) -> Vec<String> {
        let Some(kubelet) = self.processes.iter().find(|p| p.name == "kubelet") else { return Vec::new() };
        let text = std::fs::read_to_string(&kubelet.log).unwrap_or_default();
        text.lines().filter(|l| l.contains("prober.go") && l.contains("failed")).map(str::to_string).collect()
    }

    /// A few lines on the node's health for a failure's last words: failed
    /// probes (they take pods out of their Services) and pods not Ready.
    pub fn brief(&self) -> String {
        let mut lines = Vec::new();
        let probes = self.failed_probes();
        lines.push(format!("kubelet: {} failed probes{}", probes.len(), if probes.is_empty() { "" } else { "; the last ones:" }));
        lines.extend(probes[probes.len().saturating_sub(8)..].iter().map(|l| format!("  {l}")));
        if let Ok(list) = self.cluster().and_then(|c| c.get_json(&["get", "pods", "--all-namespaces"])) {
            let not_ready: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| !p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                .map(|p| format!("{}/{} ({})", p["metadata"]["namespace"].as_str().unwrap_or("?"), p["metadata"]["name"].as_str().unwrap_or("?"), p["status"]["phase"].as_str().unwrap_or("?")))
                .collect();
            lines.push(format!("pods not Ready now: {}", if not_ready.is_empty() { "none".to_string() } else { not_ready.join(", ") }));
        }
        lines.join("\n")
    }

    /// Waits until every pod matching `selector` in `namespace` is Ready,
    /// failing early (with the reason) on a pod that cannot start.
    pub fn wait_ready(&mut self, namespace: &str, selector: &str, count: usize, timeout: Duration) -> Result<Vec<Value>> {
        wait_for(&format!("{count} ready pods {selector} in {namespace}"), timeout, || {
            self.check_alive()?;
            let list = self.cluster()?.get_json(&["-n", namespace, "get", "pods", "-l", selector])?;
            let pods: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
            for pod in &pods {
                for status in pod["status"]["containerStatuses"].as_array().into_iter().chain(pod["status"]["initContainerStatuses"].as_array()).flatten() {
                    let waiting = &status["state"]["waiting"];
                    let reason = waiting["reason"].as_str().unwrap_or("");
                    if ["ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName", "CreateContainerError"].contains(&reason) {
                        return Err(Fatal(format!("pod {} container {}: {reason}: {}", pod["metadata"]["name"], status["name"], waiting["message"])).into());
                    }
                }
            }
            let live: Vec<&Value> = pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
            let ready = live
                .iter()
                .filter(|p| p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                .count();
            if ready == count && live.len() == count {
                Ok(Some(pods.clone()))
            } else {
                // Why a pod waits, where the scheduler said so.
                let unschedulable: Vec<String> = live
                    .iter()
                    .flat_map(|p| p["status"]["conditions"].as_array().into_iter().flatten())
                    .filter(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                    .filter_map(|c| c["message"].as_str().map(str::to_string))
                    .collect();
                Err(anyhow::anyhow!("{ready} of {} ready{}", live.len(), unschedulable.first().map(|m| format!("; not scheduled: {m}")).unwrap_or_default()))
            }
        })
    }

    fn stop(&mut self) {
        // Pods first, while kubelet and containerd can still tear them down.
        if let Some(c) = &self.cluster {
            // Their controllers first, or the pods deleted are made again.
            let _ = c.kubectl(&["delete", "deployments,replicasets,daemonsets,statefulsets,jobs", "--all-namespaces", "--all", "--wait=false"]);
            let _ = c.kubectl(&["delete", "pods", "--all-namespaces", "--all", "--grace-period=1", "--wait=false"]);
            let _ = wait_for("pods to be gone", Duration::from_secs(60), || {
                let list = c.get_json(&["get", "pods", "--all-namespaces"])?;
                Ok(list["items"].as_array().is_some_and(|a| a.is_empty()).then_some(()))
            });
        }
        self.dns_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.dns_feeder.take() {
            let _ = h.join();
        }
        // Reverse start order: scheduler, kube-proxy (then its rules go),
        // kubelet; containers that outlived their pods are killed while
        // containerd still answers (its shims would outlive it); then
        // containerd and dnsmasq.
        while let Some(p) = self.processes.pop() {
            if p.name == "containerd" {
                self.kill_tasks();
            }
            if p.name == "kube-proxy" {
                drop(p);
                let _ = Command::new(kube_bin_dir().join("kube-proxy")).arg("--cleanup").output();
                continue;
            }
            drop(p);
        }
        self.cluster = None;
        self.kill_leftover_shims();
        if let Some(host) = self.host.take() {
            host.restore();
        }
        if let Some(weights) = self.cpu_weights.take() {
            weights.restore();
        }
        self.unmount_under_dir();
    }

    fn kill_tasks(&self) {
        let Ok(tasks) = self.ctr(&["tasks", "ls", "-q"]) else { return };
        for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "-f", id]);
        }
    }

    /// Shims of this rig's containerd still running after it stopped.
    fn kill_leftover_shims(&self) {
        let socket = self.containerd_socket.display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for e in entries.flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if pid.parse::<u32>().is_err() {
                continue;
            }
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
    }

    fn unmount_under_dir(&self) {
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn effective_uid() -> u32 {
    // The harness avoids a libc dependency: /proc tells the effective uid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)?.parse().ok()))
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_names_services_by_their_cluster_dns_name_and_skips_headless_ones() {
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "web", "namespace": "shop"}, "spec": {"clusterIP": "10.96.0.12"}},
            {"metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None"}},
            {"metadata": {"name": "broken", "namespace": "x"}, "spec": {}},
        ]});
        assert_eq!(hosts_file(&list), "10.96.0.12 web.shop.svc.cluster.local\n");
    }
}
