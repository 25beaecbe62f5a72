//! `meshctl demo --check`: the local mesh comes up on loopback, a request goes
//! through two sidecars with mTLS (the app sees the caller's SPIFFE identity),
//! and the GraphQL gateway answers across two subgraphs.

#[test]
fn the_loopback_demo_works_end_to_end() {
    // A port range unlikely to be shared with a parallel run.
    let base = 20_000 + (std::process::id() % 400) as u16 * 100;
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
