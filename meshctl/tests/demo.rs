//! `meshctl demo --check`: the local mesh comes up on loopback, a request goes
//! through two sidecars with mTLS (the app sees the caller's SPIFFE identity),
//! and the GraphQL gateway answers across two subgraphs.

#[test]
fn the_loopback_demo_works_end_to_end() {
    // A free port range below the kernel's ephemeral range (32768 and up),
    // where outgoing connections of other tests could otherwise take a port.
    let free = |base: u16| (base..base + 30).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
    let first = (std::process::id() % 120) as u16;
    let base = (0..120u16).map(|i| 20_000 + ((first + i) % 120) * 100).find(|b| free(*b)).expect("a free range of 30 ports between 20000 and 32000");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["demo", "--check", "--port-base", &base.to_string()])
        .output()
        .expect("meshctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"caller\":\"spiffe://cluster.local/ns/demo/sa/client\""), "{stdout}");
    assert!(stdout.contains("Upgrades should be boring."), "{stdout}");
    assert!(stdout.contains("check passed"), "{stdout}");
}
