//! Flags and wiring of `sidecar init` and `sidecar run`.

use crate::admin::{Admin, Port};
use crate::capture::{self, CaptureOptions};
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::proxy::{Drain, Outbound};
use crate::xds::{self, NodeInfo, XdsStatus, XdsTarget};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Parser)]
#[command(name = "sidecar", about = "Revmesh's proxy: `init` installs traffic capture, `run` proxies")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Install the iptables rules that capture the pod's TCP traffic (run as
    /// root with NET_ADMIN in the pod's network namespace; idempotent).
    Init(InitArgs),
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Wait until the proxy in this pod is ready (its readiness endpoint
    /// answers 200); exit 1 after the timeout. The webhook runs it as the
    /// proxy container's postStart hook when the pod asks that its app start
    /// only once the proxy has config and a certificate.
    Wait(WaitArgs),
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    #[arg(long, default_value = "127.0.0.1:15021")]
    pub ready_address: SocketAddr,
    #[arg(long, default_value = "60s", value_parser = revmesh_duration::parse)]
    pub timeout: Duration,
}

/// Polls the proxy's readiness endpoint until it answers 200 or `timeout` passes.
fn wait_ready(args: WaitArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + args.timeout;
    let mut last = String::from("no answer yet");
    while std::time::Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<bool> {
            let mut tcp = std::net::TcpStream::connect_timeout(&args.ready_address, Duration::from_secs(1))?;
            tcp.set_read_timeout(Some(Duration::from_secs(1)))?;
            tcp.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut head = [0u8; 16];
            let n = tcp.read(&mut head)?;
            Ok(head[..n].starts_with(b"HTTP/1.1 200"))
        })();
        match attempt {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not ready yet".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("the proxy at {} was not ready within {:?} ({last})", args.ready_address, args.timeout)
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The proxy's uid: its own connections are never captured.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Ports whose inbound traffic goes straight to the app (comma-separated),
    /// as the annotation sidecar.revmesh.io/excludeInboundPorts.
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// As sidecar.revmesh.io/excludeOutboundPorts.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// As sidecar.revmesh.io/excludeOutboundIPRanges (CIDRs).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ip_ranges: Vec<ipnet::IpNet>,
    /// Capture outbound traffic only.
    #[arg(long)]
    pub no_inbound: bool,
    /// Print the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The mesh version of this proxy; its control plane serves only that revision.
    #[arg(long, env = "REVMESH_REVISION")]
    pub revision: String,
    /// The control plane, host:port (15012 TLS, or 15010 with --xds-plaintext).
    #[arg(long, env = "REVMESH_CONTROL_PLANE")]
    pub control_plane: String,
    /// The name the control plane's certificate carries (default: the host of --control-plane).
    #[arg(long)]
    pub control_plane_name: Option<String>,
    /// The mesh root (PEM), mounted from ConfigMap revmesh-ca-root.
    #[arg(long, default_value = "/var/run/revmesh/ca-root/root-cert.pem")]
    pub ca_root: PathBuf,
    /// Plaintext xDS (port 15010; local development only).
    #[arg(long)]
    pub xds_plaintext: bool,
    #[arg(long, default_value = "0.0.0.0:15001")]
    pub outbound_listen: SocketAddr,
    /// Traffic reaches the proxy by iptables REDIRECT (off: apps address the
    /// outbound listener directly, with the service's name as Host).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub capture: bool,
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound_listen: SocketAddr,
    /// Without capture: serve inbound mTLS on --inbound-listen and forward to
    /// this address (the app), for meshes on one host such as `meshctl demo`.
    #[arg(long)]
    pub inbound_target: Option<SocketAddr>,
    /// PERMISSIVE: mTLS from meshed peers and plaintext from others; STRICT: mTLS only.
    #[arg(long, env = "REVMESH_INBOUND_MODE", value_enum, default_value = "PERMISSIVE")]
    pub inbound_mode: crate::inbound::Mode,
    /// The pod's service account: the identity the proxy claims to the control
    /// plane, which must be the one its token proves.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// The projected service-account token (audience revmesh-ca) that the CA
    /// and xDS on the TLS port check.
    #[arg(long, env = "REVMESH_TOKEN_PATH", default_value = "/var/run/secrets/revmesh/tokens/revmesh-token")]
    pub token_path: PathBuf,
    /// SPIFFE trust domain of peer identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Requested certificate lifetime; renewed at `--cert-renew-fraction` of it.
    #[arg(long, default_value = "3600", value_parser = |s: &str| s.trim_end_matches('s').parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?} is not seconds")))]
    pub cert_ttl: Duration,
    /// How far into a certificate's life it is renewed (Istio's
    /// SECRET_GRACE_PERIOD_RATIO, the other way round): 0.5 is halfway.
    #[arg(long, default_value_t = 0.5, value_parser = renew_fraction)]
    pub cert_renew_fraction: f64,
    /// Threads serving traffic (Istio's proxy concurrency defaults to 2, too).
    #[arg(long, env = "REVMESH_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_listen: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_listen: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub ready_listen: SocketAddr,
    /// The app's HTTP probes (JSON: health path → {port, path, headers}),
    /// written by the webhook when it points the kubelet's probes at 15020.
    #[arg(long, env = "REVMESH_APP_PROBES", default_value = "")]
    pub app_probes: String,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,
    #[arg(long, env = "INSTANCE_IP", value_delimiter = ',')]
    pub instance_ips: Vec<std::net::IpAddr>,
    /// Workload name for metrics (default: the pod name).
    #[arg(long)]
    pub workload: Option<String>,
    /// Log filter (tracing syntax); change it later with POST /logging?level= on the admin port.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// The version this proxy reports (xDS node metadata and user agent, admin
    /// `/server_info`). Defaults to the crate version; images set it, so two
    /// tags of one build are told apart during an upgrade.
    #[arg(long, env = "REVMESH_PROXY_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub proxy_version: String,
    /// On SIGTERM: stop accepting, then wait this long for requests in flight.
    #[arg(long, default_value = "5", value_parser = |s: &str| s.trim_end_matches('s').parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?} is not seconds")))]
    pub drain_grace: Duration,
    /// On SIGTERM, before draining: readiness fails at once, but the proxy
    /// keeps serving as before for this long (Istio's terminationDrainDuration),
    /// while the pod's endpoint is withdrawn from every other proxy. Draining
    /// at once refused the streams of peers that had not heard yet, and with
    /// one replica their retries had nowhere else to go (the node upgrade test).
    #[arg(long, env = "REVMESH_DRAIN_DELAY", default_value = "5s", value_parser = revmesh_duration::parse)]
    pub drain_delay: Duration,
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(args) => init(args),
        Command::Wait(args) => wait_ready(args),
        Command::Run(args) => {
            let set_log_level = logging(&args.log_level)?;
            // One worker: a current-thread runtime, with no work stealing or
            // cross-thread wake-ups on the request path.
            let runtime = if args.worker_threads <= 1 {
                tokio::runtime::Builder::new_current_thread().on_thread_park(release_memory_when_idle).enable_all().build()?
            } else {
                tokio::runtime::Builder::new_multi_thread().worker_threads(args.worker_threads).on_thread_park(release_memory_when_idle).enable_all().build()?
            };
            runtime.block_on(run(*args, set_log_level))
        }
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let options = CaptureOptions {
        proxy_uid: args.proxy_uid,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_ip_ranges: args.exclude_outbound_ip_ranges,
        capture_inbound: !args.no_inbound,
    };
    let rules = capture::rules(&options);
    if args.dry_run {
        print!("{}", capture::describe(&rules));
        return Ok(());
    }
    capture::apply(&rules)?;
    eprintln!("traffic capture installed: outbound → {}, inbound → {}", options.outbound_port, options.inbound_port);
    Ok(())
}

fn logging(level: &str) -> anyhow::Result<crate::admin::SetLogLevel> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(level).with_context(|| format!("--log-level {level:?} is not a log filter"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false)).init();
    Ok(Arc::new(move |text: &str| {
        let next = tracing_subscriber::EnvFilter::try_new(text).map_err(|e| format!("{text:?} is not a log filter: {e}"))?;
        handle.reload(next).map_err(|e| e.to_string())
    }))
}

/// Runs the proxy until SIGTERM or Ctrl-C, then drains. The caller owns
/// logging: `set_log_level` is what `POST /logging` calls.
pub async fn run(args: RunArgs, set_log_level: crate::admin::SetLogLevel) -> anyhow::Result<()> {
    let tls = if args.xds_plaintext {
        None
    } else {
        let root = std::fs::read_to_string(&args.ca_root).with_context(|| format!("reading the mesh root {} (or use --xds-plaintext for local development)", args.ca_root.display()))?;
        let host = args.control_plane.rsplit_once(':').map_or(args.control_plane.as_str(), |(h, _)| h);
        Some((root, args.control_plane_name.clone().unwrap_or_else(|| host.to_string())))
    };
    let pod = if args.pod_name.is_empty() { format!("sidecar-{}", std::process::id()) } else { args.pod_name.clone() };
    let ip = args.instance_ips.first().map(|i| i.to_string()).unwrap_or_default();
    let node = NodeInfo {
        id: format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local", ns = args.pod_namespace),
        revision: args.revision.clone(),
        outbound_address: args.outbound_listen,
        captured: args.capture,
        instance_ips: args.instance_ips.clone(),
        proxy_version: args.proxy_version.clone(),
    };
    let credentials = xds::XdsCredentials { token: args.token_path.clone(), namespace: args.pod_namespace.clone(), service_account: args.service_account.clone() };
    let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(ProxyConfig::default()));
    let status = Arc::new(XdsStatus::default());
    let metrics = Arc::new(Metrics::default());
    let drain = Arc::new(Drain::default());

    // Identity: with TLS to the control plane, the proxy gets its certificate
    // from the same port and speaks mTLS to meshed peers. Plaintext xDS (local
    // development) means no identity and plaintext everywhere.
    let mesh = match &tls {
        Some((root, server_name)) => {
            let (creds_tx, creds_rx) = tokio::sync::watch::channel(None);
            let ca = identity::CaClient { addr: args.control_plane.clone(), server_name: server_name.clone(), root_pem: root.clone(), token: identity::TokenSource::File(args.token_path.clone()) };
            tokio::spawn(identity::keep_fresh(ca, args.cert_ttl, args.cert_renew_fraction, creds_tx));
            Some(crate::tls::Mesh::new(root, &args.trust_domain, creds_rx)?)
        }
        None => {
            tracing::warn!("plaintext xDS: no workload certificate, so no mTLS (local development only)");
            None
        }
    };

    let bind = |addr: SocketAddr| async move { tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}")) };
    let outbound_listener = bind(args.outbound_listen).await?;
    let inbound_listener = if args.capture || args.inbound_target.is_some() { Some(bind(args.inbound_listen).await?) } else { None };
    let admin = Admin { config: config_rx.clone(), xds: Arc::clone(&status), metrics: Arc::clone(&metrics), drain: Arc::clone(&drain), set_log_level, mesh: mesh.clone(), server_info: crate::admin::ServerInfo { version: args.proxy_version.clone(), revision: args.revision.clone(), node: node.id.clone() }, app_probes: Arc::new(crate::app_probe::AppProbes::parse(&args.app_probes)?) };
    tokio::spawn(admin.clone().serve(bind(args.admin_listen).await?, Port::Admin));
    tokio::spawn(admin.clone().serve(bind(args.metrics_listen).await?, Port::Metrics));
    tokio::spawn(admin.serve(bind(args.ready_listen).await?, Port::Readiness));
    tokio::spawn(xds::run(XdsTarget { address: args.control_plane.clone(), tls, credentials: Some(credentials) }, node.clone(), config_tx, Arc::clone(&status)));
    let workload = args.workload.clone().unwrap_or(pod);
    let inbound = inbound_listener.map(|listener| {
        let mut inbound = crate::inbound::Inbound::new(mesh.clone(), args.inbound_mode, Arc::clone(&metrics), workload.clone(), args.revision.clone(), Arc::clone(&drain));
        inbound.fixed_target = if args.capture { None } else { args.inbound_target };
        inbound.config = Some(config_rx.clone());
        inbound.limits = crate::limits::Limits::from(&args.limits);
        let inbound = Arc::new(inbound);
        tokio::spawn(inbound.serve(listener))
    });
    let mut outbound = Outbound::new(config_rx, metrics, args.capture, workload, args.revision.clone(), Arc::clone(&drain), mesh);
    outbound.limits = crate::limits::Limits::from(&args.limits);
    let outbound = Arc::new(outbound);
    let serving = tokio::spawn(Arc::clone(&outbound).serve(outbound_listener));
    tracing::info!(node = %node.id, revision = %args.revision, version = %args.proxy_version, control_plane = %args.control_plane, "proxy running");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drain.terminating.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(delay = ?args.drain_delay, "terminating: not ready, still serving");
    tokio::time::sleep(args.drain_delay).await;
    tracing::info!(grace = ?args.drain_grace, "draining");
    let left = drain.drain(args.drain_grace).await;
    serving.abort();
    if let Some(i) = inbound {
        i.abort();
    }
    if left > 0 {
        tracing::warn!(connections = left, "grace period over; closing the rest");
    } else {
        tracing::info!("drained");
    }
    Ok(())
}

/// A renewal point strictly inside a certificate's life.
fn renew_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1 (exclusive), such as 0.5")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_once_the_proxy_answers_ready_and_fails_after_its_timeout() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf);
                let answer: &[u8] = if n < 2 { b"HTTP/1.1 503 Service Unavailable\r\n\r\n" } else { b"HTTP/1.1 200 OK\r\n\r\n" };
                let _ = conn.write_all(answer);
            }
        });
        wait_ready(WaitArgs { ready_address: address, timeout: Duration::from_secs(10) }).expect("ready on the third poll");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let err = wait_ready(WaitArgs { ready_address: closed, timeout: Duration::from_millis(500) }).expect_err("nobody listens");
        assert!(err.to_string().contains("was not ready within"), "{err}");
    }

    #[test]
    fn renewal_points_outside_a_certificates_life_are_refused() {
        assert_eq!(renew_fraction("0.05"), Ok(0.05));
        for bad in ["0", "1", "1.5", "-0.1", "half", "NaN"] {
            assert!(renew_fraction(bad).unwrap_err().contains("between 0 and 1"), "{bad}");
        }
    }
}

/// Called each time a worker thread runs out of work. mimalloc keeps the
/// pages a thread freed (a flood of connections closing, say) on that
/// thread until it allocates again, so a worker that stays idle afterwards
/// would hold them for good; collecting when it parks hands them back to
/// the OS. At most once a second per thread: a busy worker rarely parks,
/// and a lightly loaded one parks often.
fn release_memory_when_idle() {
    use std::cell::Cell;
    thread_local! {
        static LAST_COLLECT: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let due = LAST_COLLECT.with(|last| {
        let due = last.get().is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: mi_collect only walks this thread's own heap and mimalloc's
        // shared segment lists under its own locks; it takes no pointers.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}
