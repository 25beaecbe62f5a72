//! `load` against `serve`, in process and as the real binary, on loopback.

use mesh_app::client::{get_once, Target};
use mesh_app::load::{self, LoadOptions, Shared};
use mesh_app::serve::{self, Echo, ServeOptions};
use mesh_app::stats::Report;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

fn options(name: &str) -> ServeOptions {
    ServeOptions { name: name.into(), pod: Some(format!("{name}-pod")), namespace: Some("apps".into()), shutdown_delay: Duration::ZERO, drain_timeout: Duration::from_secs(5) }
}

async fn start_server(name: &str) -> (std::net::SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<serve::ServeSummary>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve::serve(listener, options(name), async move {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

/// Polls the report until `done` holds, for at most 15 s.
async fn wait_for(shared: &Shared, what: &str, done: impl Fn(&Report) -> bool) -> Report {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = shared.report();
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; stats: {}", serde_json::to_string_pretty(&r).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_requests_then_records_refusals_once_the_server_stops() {
    let (addr, stop_server, server) = start_server("server-a").await;
    let targets = vec![Target::parse(&format!("http://{addr}/anything/one")).unwrap(), Target::parse(&format!("http://{addr}/anything/two")).unwrap()];
    let opts = LoadOptions { targets, rate: 100.0, duration: None, timeout: Duration::from_secs(2), window: Duration::from_millis(500), check_body: true };
    let shared = Arc::new(Shared::new(&opts.targets, opts.rate, opts.window));
    let (stop_load, load_stopped) = oneshot::channel::<()>();
    let load_task = tokio::spawn(load::run(opts, Arc::clone(&shared), async move {
        let _ = load_stopped.await;
    }));

    let r = wait_for(&shared, "60 answers", |r| r.ok >= 60).await;
    assert_eq!(r.failed, 0, "no failures while the server runs: {:?}", r.failures);
    for t in &r.targets {
        assert!(t.ok >= 20, "both targets get their share: {t:?}");
        assert_eq!(t.pods.keys().collect::<Vec<_>>(), vec!["server-a-pod"]);
        assert_eq!(t.peer_identities.keys().collect::<Vec<_>>(), vec!["(none)"], "no sidecar, so no identity");
        assert!(t.connections_opened * 2 <= t.ok, "keep-alive connections are reused: {t:?}");
    }
    assert!(r.latency.p50_ms.is_some() && r.latency.p99_ms.is_some() && r.latency.max_ms.is_some());
    assert!(r.windows.len() >= 2, "windows of 500 ms: {:?}", r.windows);

    // Stop the server: idle keep-alive connections close, the listener is gone.
    stop_server.send(()).unwrap();
    let summary = server.await.unwrap();
    assert_eq!(summary.connections_cut, 0);
    let answered = shared.report().ok;
    assert!(summary.requests >= answered, "the server counted {} requests, the client {answered} answers", summary.requests);

    let r = wait_for(&shared, "refused connections", |r| r.failures_by_cause.get("connect refused").copied().unwrap_or(0) >= 5).await;
    let refusal = r.failures.iter().find(|f| f.cause == "connect refused").unwrap();
    assert!(refusal.detail.contains(&addr.to_string()), "{refusal:?}");
    assert!(refusal.unix_ms > 0 && refusal.at_s > 0.0);
    assert!(r.windows.iter().any(|w| w.failed > 0));

    stop_load.send(()).unwrap();
    assert_eq!(load_task.await.unwrap(), Ok(load::Ended::Stopped));
    assert!(!shared.document().running);

    // A reset starts the counts over.
    shared.reset();
    let r = shared.report();
    assert_eq!((r.ok, r.failed, r.failures.len()), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_slow_answers_and_wrong_bodies_are_failures_with_their_cause() {
    let (addr, stop_server, server) = start_server("server-b").await;
    let url = |p: &str| Target::parse(&format!("http://{addr}{p}")).unwrap();
    // An echo of another path is covered by the unit tests of `judge`.
    let targets = vec![url("/anything?status=503"), url("/anything?delay_ms=4000"), url("/healthz")];
    let opts = LoadOptions { targets, rate: 30.0, duration: Some(Duration::from_millis(1500)), timeout: Duration::from_secs(1), window: Duration::from_secs(1), check_body: true };
    let shared = Arc::new(Shared::new(&opts.targets, opts.rate, opts.window));
    let ended = load::run(opts, Arc::clone(&shared), std::future::pending()).await.unwrap();
    assert_eq!(ended, load::Ended::DurationReached);
    let r = shared.report();
    assert_eq!(r.ok, 0, "{:?}", r.targets);
    let causes = |i: usize| r.targets[i].failures_by_cause.keys().cloned().collect::<Vec<_>>();
    assert_eq!(causes(0), vec!["status 503"]);
    assert_eq!(causes(1), vec!["timeout"]);
    assert_eq!(causes(2), vec!["body mismatch"], "/healthz is not mesh-app's JSON");
    let timeout = r.failures.iter().find(|f| f.cause == "timeout").unwrap();
    assert!(timeout.latency_ms >= 1000.0 && timeout.latency_ms < 4000.0, "{timeout:?}");
    stop_server.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_then_refuses() {
    let (addr, stop_server, server) = start_server("server-c").await;
    let slow = Target::parse(&format!("http://{addr}/anything/slow?delay_ms=700")).unwrap();
    let in_flight = tokio::spawn(async move { get_once(&slow, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_server.send(()).unwrap();
    let answer = in_flight.await.unwrap().expect("the request in flight is answered");
    assert_eq!(answer.status, 200);
    let echo: Echo = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(echo.path, "/anything/slow");
    assert_eq!(server.await.unwrap().connections_cut, 0);
    let after = get_once(&Target::parse(&format!("http://{addr}/anything")).unwrap(), Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(after.cause, mesh_app::stats::Cause::ConnectRefused);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary: `serve` answers `get`, and exits 0 on SIGTERM.
#[test]
fn the_binary_serves_gets_and_exits_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_mesh-app");
    let port = free_port();
    let mut server = std::process::Command::new(bin)
        .args(["serve", "--address", "127.0.0.1", "--port", &port.to_string(), "--name", "echo"])
        .env("POD_NAME", "echo-7d9f")
        .env("POD_NAMESPACE", "demo")
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/anything/here");
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = std::process::Command::new(bin).args(["get", &url, "--timeout", "1s"]).output().unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(out.status.success(), "get failed: {}", String::from_utf8_lossy(&out.stderr));
    let echo: Echo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo, Echo { name: "echo".into(), pod: Some("echo-7d9f".into()), namespace: Some("demo".into()), peer_identity: None, path: "/anything/here".into() });

    let bad = std::process::Command::new(bin).args(["get", &format!("http://127.0.0.1:{port}/x?status=500")]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("500"));

    // `load` against it: a short stream, then /stats stays up (--linger).
    let stats_port = free_port();
    let mut load = std::process::Command::new(bin)
        .args(["load", "--target", &url, "--rate", "40", "--duration", "1s", "--stats-address", "127.0.0.1", "--stats-port", &stats_port.to_string(), "--linger"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stats_url = format!("http://127.0.0.1:{stats_port}/stats");
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let out = std::process::Command::new(bin).args(["get", &stats_url, "--timeout", "1s"]).output().unwrap();
        if out.status.success() {
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if doc["running"] == false {
                break doc;
            }
        }
        assert!(Instant::now() < deadline, "load never reported its end on /stats");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(stats["ok"].as_u64().unwrap() >= 30, "{stats}");
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["targets"][0]["pods"]["echo-7d9f"], stats["ok"]);
    assert!(std::process::Command::new("kill").args(["-TERM", &load.id().to_string()]).status().unwrap().success());
    assert!(load.wait().unwrap().success());

    let kill = std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            panic!("serve did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let refused = std::process::Command::new(bin).args(["get", &url, "--timeout", "1s"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("connect refused"), "{}", String::from_utf8_lossy(&refused.stderr));
}
