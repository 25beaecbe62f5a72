//! `sidecar init`: the iptables rules (nat table, IPv4) that send a pod's TCP
//! traffic through the proxy.
//!
//! * Outbound: everything the app sends goes to 15001, except the proxy's own
//!   traffic (uid 1337), loopback, and excluded ports and CIDRs.
//! * Inbound: everything that arrives goes to 15006, except excluded ports (the
//!   proxy's own 15020/15021 are excluded by the webhook).
//!
//! Rules live in chains of their own (`REVMESH_*`), so applying them again
//! replaces them rather than adding a second copy. The only rules outside
//! those chains are the two jumps, and those are added only when missing.
//! Building the rules is pure ([`rules`]); [`apply`] runs iptables.

use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};

pub const OUTPUT_CHAIN: &str = "REVMESH_OUTPUT";
pub const REDIRECT_CHAIN: &str = "REVMESH_REDIRECT";
pub const INBOUND_CHAIN: &str = "REVMESH_INBOUND";
pub const IN_REDIRECT_CHAIN: &str = "REVMESH_IN_REDIRECT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    pub proxy_uid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_ip_ranges: Vec<IpNet>,
    /// Capture inbound traffic at all (off: only outbound is redirected).
    pub capture_inbound: bool,
}

/// What `apply` does: a restore file for the REVMESH chains, and the jumps
/// into them from the built-in chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// `iptables-restore --noflush` input: declares (and so empties) the
    /// REVMESH chains, then fills them.
    pub restore: String,
    /// (built-in chain, rule spec) pairs, added only when missing.
    pub jumps: Vec<(&'static str, Vec<String>)>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn rules(o: &CaptureOptions) -> Ruleset {
    let mut r = String::from("*nat\n");
    for chain in [OUTPUT_CHAIN, REDIRECT_CHAIN, INBOUND_CHAIN, IN_REDIRECT_CHAIN] {
        r.push_str(&format!(":{chain} - [0:0]\n"));
    }
    r.push_str(&format!("-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}\n", o.outbound_port));
    r.push_str(&format!("-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}\n", o.inbound_port));

    // Outbound, in order: the proxy's own connections, loopback, exclusions, then capture.
    r.push_str(&format!("-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN\n", o.proxy_uid));
    r.push_str(&format!("-A {OUTPUT_CHAIN} -d 127.0.0.1/32 -j RETURN\n"));
    r.push_str(&format!("-A {OUTPUT_CHAIN} -o lo -j RETURN\n"));
    for port in &o.exclude_outbound_ports {
        r.push_str(&format!("-A {OUTPUT_CHAIN} -p tcp --dport {port} -j RETURN\n"));
    }
    for net in o.exclude_outbound_ip_ranges.iter().filter(|n| matches!(n, IpNet::V4(_))) {
        r.push_str(&format!("-A {OUTPUT_CHAIN} -d {net} -j RETURN\n"));
    }
    r.push_str(&format!("-A {OUTPUT_CHAIN} -p tcp -j {REDIRECT_CHAIN}\n"));

    // Inbound: the proxy's listeners themselves and excluded ports pass through.
    if o.capture_inbound {
        for port in [o.outbound_port, o.inbound_port].iter().chain(&o.exclude_inbound_ports) {
            r.push_str(&format!("-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN\n"));
        }
        r.push_str(&format!("-A {INBOUND_CHAIN} -p tcp -j {IN_REDIRECT_CHAIN}\n"));
    }
    r.push_str("COMMIT\n");

    let jumps = vec![("OUTPUT", strings(&["-p", "tcp", "-j", OUTPUT_CHAIN])), ("PREROUTING", strings(&["-p", "tcp", "-j", INBOUND_CHAIN]))];
    Ruleset { restore: r, jumps }
}

/// The commands `apply` runs, for `--dry-run`.
pub fn describe(set: &Ruleset) -> String {
    let mut out = String::from("# iptables-restore --noflush <<EOF\n");
    out.push_str(&set.restore);
    out.push_str("# EOF\n");
    for (chain, spec) in &set.jumps {
        out.push_str(&format!("iptables -t nat -C {chain} {0} || iptables -t nat -A {chain} {0}\n", spec.join(" ")));
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("running {command}: {source} (is iptables installed, and does this process have NET_ADMIN?)")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

fn run(program: &str, args: &[String], input: Option<&str>) -> Result<bool, CaptureError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { command: command.clone(), source })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|source| CaptureError::Spawn { command: command.clone(), source })?;
    }
    let out = child.wait_with_output().map_err(|source| CaptureError::Spawn { command: command.clone(), source })?;
    if !out.status.success() && input.is_some() {
        return Err(CaptureError::Failed { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(out.status.success())
}

/// Installs the rules; running it again leaves the same rules.
pub fn apply(set: &Ruleset) -> Result<(), CaptureError> {
    run("iptables-restore", &strings(&["--noflush"]), Some(&set.restore))?;
    for (chain, spec) in &set.jumps {
        let mut check = strings(&["-t", "nat", "-C", chain]);
        check.extend(spec.iter().cloned());
        if !run("iptables", &check, None)? {
            let mut add = strings(&["-t", "nat", "-A", chain]);
            add.extend(spec.iter().cloned());
            let command = format!("iptables {}", add.join(" "));
            if !run("iptables", &add, None)? {
                return Err(CaptureError::Failed { command, stderr: "could not add the jump".into() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CaptureOptions {
        CaptureOptions {
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_inbound_ports: vec![15020, 15021],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_ip_ranges: vec!["169.254.169.254/32".parse().expect("cidr"), "fd00::/8".parse().expect("cidr")],
            capture_inbound: true,
        }
    }

    #[test]
    fn outbound_exempts_the_proxy_loopback_and_exclusions_before_capturing() {
        let r = rules(&options()).restore;
        let lines: Vec<&str> = r.lines().filter(|l| l.starts_with("-A REVMESH_OUTPUT")).collect();
        assert_eq!(
            lines,
            [
                "-A REVMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A REVMESH_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A REVMESH_OUTPUT -o lo -j RETURN",
                "-A REVMESH_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-A REVMESH_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-A REVMESH_OUTPUT -p tcp -j REVMESH_REDIRECT",
            ]
        );
        assert!(r.contains("-A REVMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(!r.contains("fd00::"), "IPv6 ranges do not belong in the IPv4 table");
    }

    #[test]
    fn inbound_passes_excluded_ports_and_can_be_off() {
        let r = rules(&options()).restore;
        for port in [15001, 15006, 15020, 15021] {
            assert!(r.contains(&format!("-A REVMESH_INBOUND -p tcp --dport {port} -j RETURN")), "{port}");
        }
        assert!(r.contains("-A REVMESH_INBOUND -p tcp -j REVMESH_IN_REDIRECT"));
        let off = rules(&CaptureOptions { capture_inbound: false, ..options() }).restore;
        assert!(!off.contains("-A REVMESH_INBOUND"));
    }

    #[test]
    fn dry_run_shows_every_command() {
        let text = describe(&rules(&options()));
        assert!(text.contains("iptables-restore --noflush"));
        assert!(text.contains("iptables -t nat -C OUTPUT -p tcp -j REVMESH_OUTPUT || iptables -t nat -A OUTPUT -p tcp -j REVMESH_OUTPUT"));
        assert!(text.contains("PREROUTING -p tcp -j REVMESH_INBOUND"));
    }
}
