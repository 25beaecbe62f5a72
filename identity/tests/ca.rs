//! The identity client against the real control plane's CA (dir mode with a
//! bootstrap token): issue, verify, renew, and refuse.

use identity::{keep_fresh, CaClient, IdentityError, TokenSource};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    kube_harness::free_port().expect("free port")
}

const TOKEN: &str = "bootstrap-token-for-web-0123";

/// A control plane (revision `dev`) and the mesh root it serves.
fn control_plane(dir: &std::path::Path) -> (Killed, u16, String) {
    let bin = kube_harness::workspace_bin("control-plane").expect("control-plane binary");
    std::fs::create_dir_all(dir.join("mesh")).expect("mesh dir");
    std::fs::write(dir.join("tokens"), format!("{TOKEN} demo/web\n")).expect("tokens");
    let (xds, tls, debug) = (free_port(), free_port(), free_port());
    let child = Command::new(bin)
        .args(["--revision", "dev", "--source", &format!("dir:{}", dir.join("mesh").display())])
        .args(["--xds-listen", &format!("127.0.0.1:{xds}"), "--tls-listen", &format!("127.0.0.1:{tls}"), "--debug-listen", &format!("127.0.0.1:{debug}")])
        .args(["--ca-bootstrap-tokens", &dir.join("tokens").display().to_string()])
        .stderr(std::fs::File::create(dir.join("cp.log")).expect("log"))
        .spawn()
        .expect("control plane starts");
    let cp = Killed(child);
    let start = Instant::now();
    loop {
        // The root, as the ConfigMap would deliver it (fetched unverified here).
        let out = Command::new("curl").args(["-sk", &format!("https://127.0.0.1:{tls}/v1/root")]).stdout(Stdio::piped()).output().expect("curl");
        let root = String::from_utf8_lossy(&out.stdout).into_owned();
        if root.contains("BEGIN CERTIFICATE") {
            return (cp, tls, root);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "control plane not up: {}", std::fs::read_to_string(dir.join("cp.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn client(tls: u16, root: &str, token: &str) -> CaClient {
    CaClient { addr: format!("127.0.0.1:{tls}"), server_name: "control-plane-dev.revmesh-system.svc".into(), root_pem: root.into(), token: TokenSource::Fixed(token.into()) }
}

fn openssl_verify(dir: &std::path::Path, root: &str, chain: &str) -> String {
    std::fs::write(dir.join("root.pem"), root).expect("root");
    std::fs::write(dir.join("chain.pem"), chain).expect("chain");
    let out = Command::new("openssl").args(["verify", "-CAfile"]).arg(dir.join("root.pem")).arg(dir.join("chain.pem")).output().expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_verifies_renews_and_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cp, tls, root) = control_plane(dir.path());

    // Issued for the token's identity, chaining to the root; the key stayed here.
    let creds = client(tls, &root, TOKEN).request(Duration::from_secs(600)).await.expect("certificate");
    assert_eq!(creds.identity, "spiffe://cluster.local/ns/demo/sa/web");
    assert!(openssl_verify(dir.path(), &root, &creds.chain_pem).contains(": OK"));
    assert!(creds.key_pem.contains("PRIVATE KEY") && !format!("{creds:?}").contains("PRIVATE KEY"));
    let lifetime = creds.not_after.duration_since(creds.issued_at).expect("not_after after issue");
    assert!(lifetime > Duration::from_secs(590) && lifetime <= Duration::from_secs(600), "{lifetime:?}");

    // Renewal: at a tiny fraction of a 60 s lifetime, a new key and certificate
    // arrive well before expiry, on the same channel.
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(keep_fresh(client(tls, &root, TOKEN), Duration::from_secs(60), 0.01, tx));
    let mut seen: Vec<Arc<identity::Credentials>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 3 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
        if let Some(c) = rx.borrow_and_update().clone() {
            seen.push(c);
        }
    }
    assert!(seen.len() >= 3, "renewed {} times", seen.len());
    assert!(seen.windows(2).all(|w| w[0].key_pem != w[1].key_pem && w[0].chain_pem != w[1].chain_pem), "each renewal has a fresh key");
    assert!(seen.iter().all(|c| c.not_after > std::time::SystemTime::now()), "renewed before expiry");
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("keep_fresh stops when nobody listens").expect("task");

    // A wrong token is refused with the CA's reason.
    match client(tls, &root, "bootstrap-token-wrong-00000").request(Duration::from_secs(60)).await {
        Err(IdentityError::Refused { status: 401, message }) => assert!(message.contains("not accepted"), "{message}"),
        other => panic!("expected a 401, got {other:?}"),
    }
    // A root that did not sign the CA's certificate: the TLS handshake fails.
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".to_string()]).expect("cert").cert.pem();
    match client(tls, &stranger, TOKEN).request(Duration::from_secs(60)).await {
        Err(IdentityError::Connect { message, .. }) => assert!(message.contains("TLS"), "{message}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    // The token never reaches the control plane's log.
    assert!(!std::fs::read_to_string(dir.path().join("cp.log")).unwrap_or_default().contains(TOKEN));
}
