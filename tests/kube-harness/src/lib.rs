//! A real Kubernetes control plane for tests: etcd, kube-apiserver and
//! kube-controller-manager 1.20 (built from Debian's source package by
//! `tests/harness/install-kube.sh`), on free loopback ports, stopped on drop.
//!
//! There is no kubelet: Deployments get ReplicaSets and Pods, which stay Pending,
//! and every Pod goes through the admission chain, webhooks included.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod envoy;
pub mod node;
pub mod tls;

const INSTALL_HINT: &str = "install it with: bash tests/harness/install-kube.sh (builds kube-apiserver 1.20 from Debian's source package, installs etcd-server)";

/// A free TCP port on 127.0.0.1 (bound, read, released).
///
/// Never the same port twice in one process: the port is bound later by a
/// child process, and the kernel may hand a released port to the next
/// `bind(0)` again, so two components of one test (an Envoy's admin port and
/// another's listener, say) would be told the same port.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port this process has not handed out already")
}

/// Where the cached Kubernetes binaries live.
pub fn kube_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REVMESH_KUBE_BIN") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/revmesh/kube-1.20/bin")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

/// A binary of this workspace, from the target directory the running test lives in
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).context("test executable has no target directory")?;
    let bin = profile_dir.join(name);
    if !bin.is_file() {
        bail!("{} is not built; run the tests with `cargo test --workspace` (or `cargo build --workspace --bins` first)", bin.display());
    }
    Ok(bin)
}

/// A child process that is killed when dropped, with its log kept in a file.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, cmd: Command, log_dir: &Path) -> Result<Process> {
        Self::spawn_as(name, cmd, log_dir, None)
    }

    /// Like [`Process::spawn`], with the child's group set to `gid` (the node
    /// rig tags its processes' packets with it, see [`node`]).
    pub fn spawn_as(name: &str, mut cmd: Command, log_dir: &Path, gid: Option<u32>) -> Result<Process> {
        if let Some(gid) = gid {
            use std::os::unix::process::CommandExt;
            cmd.gid(gid);
        }
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        cmd.stdout(file.try_clone()?).stderr(file).stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Process { name: name.into(), child, log })
    }

    /// Fails with the tail of the log if the process has exited. The error is
    /// [`Fatal`]: [`wait_for`] stops waiting at once.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            return Err(Fatal(format!("{} exited ({status}); last log lines:\n{}", self.name, self.log_tail(30))).into());
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The first lines that look like a crash or an error, then the tail: a Go
    /// panic's cause is at its top, far above the last lines.
    pub fn log_summary(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let marks: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("panic:") || l.starts_with("fatal error:") || l.starts_with("Error:") || l.starts_with('E'))
            .take(lines)
            .collect();
        format!("first errors:\n{}\nlast lines:\n{}", marks.join("\n"), self.log_tail(lines))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first so servers flush; then make sure.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An error that no amount of waiting fixes (a component died).
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout`
/// with the last error seen, or at once on a [`Fatal`] error.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("condition not met");
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e.context(format!("while waiting for {what}"))),
            Err(e) => last_error = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last_error}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running control plane. Dropping it stops every process and removes its files.
pub struct Cluster {
    // Field order is drop order: controller-manager, then apiserver, then etcd.
    controller_manager: Process,
    /// `None` while a test has stopped it to simulate an outage.
    apiserver: Option<Process>,
    etcd: Process,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<String>,
    gid: Option<u32>,
    pub server: String,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Where and how the control plane listens.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The API server's bind and advertise address. Loopback (the default)
    /// serves processes on this host only; the node rig passes its bridge
    /// address so pods reach the API server through the `kubernetes` Service.
    pub address: std::net::Ipv4Addr,
    /// Group id given to every process started (see [`node`]), if any.
    pub gid: Option<u32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { address: std::net::Ipv4Addr::LOCALHOST, gid: None }
    }
}

impl Cluster {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until
    /// the API server is ready and the default service account has its token.
    pub fn start() -> Result<Cluster> {
        Self::start_with(ClusterOptions::default())
    }

    /// [`Cluster::start`] with the API server on `options.address`.
    pub fn start_with(options: ClusterOptions) -> Result<Cluster> {
        let bin = kube_bin_dir();
        let apiserver_bin = bin.join("kube-apiserver");
        let cm_bin = bin.join("kube-controller-manager");
        for b in [&apiserver_bin, &cm_bin] {
            if !b.is_file() {
                bail!("{} not found; {INSTALL_HINT}", b.display());
            }
        }
        let etcd_bin = find_on_path("etcd").with_context(|| format!("etcd not found on PATH; {INSTALL_HINT}"))?;
        find_on_path("kubectl").context("kubectl not found on PATH; install it with: apt-get install kubernetes-client")?;

        let dir = tempfile::Builder::new().prefix("revmesh-kube-").tempdir()?;
        let d = dir.path();
        let pki = d.join("pki");
        std::fs::create_dir_all(&pki)?;

        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let mut cmd = Command::new(etcd_bin);
        cmd.args([
            "--name=test",
            &format!("--data-dir={}", d.join("etcd").display()),
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-cluster=test=http://127.0.0.1:{etcd_peer}"),
            "--unsafe-no-fsync",
        ]);
        let mut etcd = Process::spawn_as("etcd", cmd, d, options.gid)?;
        wait_for("etcd to listen", Duration::from_secs(30), || {
            etcd.check_alive()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", etcd_port)).ok().map(|_| ()))
        })?;

        // Service-account signing key (ECDSA P-256, PKCS#8).
        let sa_key = rcgen::KeyPair::generate()?;
        let sa_key_path = d.join("sa.key");
        let sa_pub_path = d.join("sa.pub");
        std::fs::write(&sa_key_path, sa_key.serialize_pem())?;
        // 1.20 reads verification keys only from PUBLIC KEY blocks.
        std::fs::write(&sa_pub_path, sa_key.public_key_pem())?;
        let token = format!("admin-{}", std::process::id());
        std::fs::write(d.join("tokens.csv"), format!("{token},admin,admin,\"system:masters\"\n"))?;

        let api_port = free_port()?;
        let address = options.address;
        // A loopback address cannot be a Service endpoint: only a routable
        // one lets the API server publish itself as `kubernetes.default`.
        let reconciler = if address.is_loopback() { "none" } else { "lease" };
        let api_args: Vec<String> = [
            &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            &format!("--bind-address={address}"),
            &format!("--advertise-address={address}"),
            &format!("--secure-port={api_port}"),
            &format!("--cert-dir={}", pki.display()),
            &format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-key-file={}", sa_pub_path.display()),
            &format!("--service-account-signing-key-file={}", sa_key_path.display()),
            "--service-cluster-ip-range=10.96.0.0/24",
            "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            &format!("--endpoint-reconciler-type={reconciler}"),
            "--allow-privileged=true",
            // Reach kubelets (logs, exec) by the address they report, never
            // by looking their hostname up in the host's DNS.
            "--kubelet-preferred-address-types=InternalIP",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let mut apiserver = spawn_apiserver(&apiserver_bin, &api_args, d, options.gid)?;
        let server = format!("https://{address}:{api_port}");

        let ca = pki.join("apiserver.crt");
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
                ca.display()
            ),
        )?;
        let cluster_ready = |apiserver: &mut Process| -> Result<Option<()>> {
            apiserver.check_alive()?;
            if !ca.is_file() {
                return Ok(None);
            }
            let out = kubectl_raw(&kubeconfig, &["get", "--raw", "/readyz"], None)?;
            Ok(out.status.success().then_some(()))
        };
        wait_for("kube-apiserver /readyz", Duration::from_secs(90), || cluster_ready(&mut apiserver))?;

        let mut cmd = Command::new(cm_bin);
        cmd.args([
            &format!("--kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false",
            &format!("--service-account-private-key-file={}", sa_key_path.display()),
            &format!("--root-ca-file={}", ca.display()),
            "--port=0",
            "--secure-port=0",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            "--controllers=*,-nodeipam,-attachdetach,-persistentvolume-binder,-route,-service",
        ]);
        let controller_manager = Process::spawn_as("kube-controller-manager", cmd, d, options.gid)?;
        let mut cluster = Cluster { controller_manager, apiserver: Some(apiserver), etcd, server, kubeconfig, dir, apiserver_bin, apiserver_args: api_args, gid: options.gid };
        cluster.wait_for_service_account("default")?;
        Ok(cluster)
    }

    /// Fails if any component has died (a stopped API server is not checked).
    pub fn check_alive(&mut self) -> Result<()> {
        self.etcd.check_alive()?;
        if let Some(a) = self.apiserver.as_mut() {
            a.check_alive()?;
        }
        self.controller_manager.check_alive()
    }

    /// Stops the API server (an outage); etcd keeps the state.
    pub fn stop_apiserver(&mut self) {
        self.apiserver = None;
    }

    /// Starts the API server again on the same port, certificates and etcd.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let mut apiserver = spawn_apiserver(&self.apiserver_bin, &self.apiserver_args, self.dir.path(), self.gid)?;
        let kubeconfig = self.kubeconfig.clone();
        wait_for("kube-apiserver /readyz after a restart", Duration::from_secs(90), || {
            apiserver.check_alive()?;
            Ok(kubectl_raw(&kubeconfig, &["get", "--raw", "/readyz"], None)?.status.success().then_some(()))
        })?;
        self.apiserver = Some(apiserver);
        Ok(())
    }

    /// Runs kubectl against this cluster; fails with its stderr on a non-zero exit.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_input(args, None)
    }

    /// Runs kubectl with `input` on stdin.
    pub fn kubectl_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let out = kubectl_raw(&self.kubeconfig, args, input)?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl and returns (success, stdout, stderr) without judging.
    pub fn kubectl_outcome(&self, args: &[&str], input: Option<&str>) -> Result<(bool, String, String)> {
        let out = kubectl_raw(&self.kubeconfig, args, input)?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
    }

    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        let text = self.kubectl(&full)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {} did not print JSON", args.join(" ")))
    }

    /// Waits until the namespace's `default` service account has its token
    /// secret: before that, the API server refuses pods in the namespace.
    pub fn wait_for_service_account(&mut self, namespace: &str) -> Result<()> {
        self.wait_for_service_accounts(&[namespace])
    }

    pub fn wait_for_service_accounts(&mut self, namespaces: &[&str]) -> Result<()> {
        let wanted: std::collections::BTreeSet<&str> = namespaces.iter().copied().collect();
        wait_for("service-account tokens", Duration::from_secs(120), || {
            self.check_alive()?;
            let list = self.get_json(&["get", "serviceaccounts", "--all-namespaces", "--field-selector=metadata.name=default"])?;
            let ready: std::collections::BTreeSet<&str> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|sa| sa["secrets"].as_array().is_some_and(|s| !s.is_empty()))
                .filter_map(|sa| sa["metadata"]["namespace"].as_str())
                .collect();
            let missing: Vec<&&str> = wanted.iter().filter(|n| !ready.contains(**n)).collect();
            if missing.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("{} namespaces still without a token, e.g. {:?}", missing.len(), missing.first()))
            }
        })
    }

    /// Starts a cluster and runs `scenario` on it; on failure the
    /// components' logs are printed before the error is returned.
    pub fn run<T>(scenario: impl FnOnce(&mut Cluster) -> Result<T>) -> Result<T> {
        let mut cluster = Cluster::start()?;
        let result = scenario(&mut cluster);
        if result.is_err() {
            eprintln!("{}", cluster.diagnostics());
        }
        result
    }

    /// Logs of every component, for failure messages.
    pub fn diagnostics(&self) -> String {
        [Some(&self.etcd), self.apiserver.as_ref(), Some(&self.controller_manager)]
            .into_iter()
            .flatten()
            .map(|p| format!("--- {} ---\n{}", p.name, p.log_summary(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn spawn_apiserver(bin: &Path, args: &[String], dir: &Path, gid: Option<u32>) -> Result<Process> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    Process::spawn_as("kube-apiserver", cmd, dir, gid)
}

fn kubectl_raw(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Result<std::process::Output> {
    let mut cmd = Command::new("kubectl");
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display())).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().context("running kubectl")?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}
