//! Per-pod proxy settings, read from `sidecar.revmesh.io/*` annotations. An
//! invalid value denies the pod with a message naming the annotation, rather
//! than injecting a proxy that would fail later in a less obvious way.

use crate::echo;
use ipnet::IpNet;
use serde_json::{Map, Value};

pub const PREFIX: &str = "sidecar.revmesh.io/";
pub const PROXY_CPU: &str = "sidecar.revmesh.io/proxyCPU";
pub const PROXY_MEMORY: &str = "sidecar.revmesh.io/proxyMemory";
pub const PROXY_CPU_LIMIT: &str = "sidecar.revmesh.io/proxyCPULimit";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.revmesh.io/proxyMemoryLimit";
pub const LOG_LEVEL: &str = "sidecar.revmesh.io/logLevel";
pub const EXCLUDE_INBOUND_PORTS: &str = "sidecar.revmesh.io/excludeInboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "sidecar.revmesh.io/excludeOutboundPorts";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "sidecar.revmesh.io/excludeOutboundIPRanges";
/// `STRICT` (mTLS only) or `PERMISSIVE` (mTLS and plaintext): what the proxy
/// accepts inbound, like Istio's PeerAuthentication mode for one workload.
pub const INBOUND_MODE: &str = "sidecar.revmesh.io/inboundMode";
/// `"true"`: the app containers start only once the proxy is ready (Istio's
/// holdApplicationUntilProxyStarts), for apps that call out as they start.
pub const HOLD_APPLICATION: &str = "sidecar.revmesh.io/holdApplicationUntilProxyStarts";

/// Every annotation this module understands; other `sidecar.revmesh.io/` keys are refused
/// so that a typo does not silently do nothing.
pub const KNOWN: &[&str] = &[
    PROXY_CPU,
    PROXY_MEMORY,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    LOG_LEVEL,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_IP_RANGES,
    INBOUND_MODE,
    HOLD_APPLICATION,
];

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
const INBOUND_MODES: &[&str] = &["STRICT", "PERMISSIVE"];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overrides {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub log_level: Option<String>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_ip_ranges: Vec<IpNet>,
    pub inbound_mode: Option<String>,
    pub hold_application: bool,
}

/// A refused annotation. The value is kept cut to [`echo::MAX_QUOTED`] bytes
/// (with its full length), since the message is shown to the user and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value} is invalid: {why}")]
pub struct InvalidAnnotation {
    pub annotation: String,
    /// Quoted and cut: `"…"` or `"…"... (N bytes in all)`.
    pub value: String,
    pub why: String,
}

fn invalid(annotation: &str, value: &str, why: impl Into<String>) -> InvalidAnnotation {
    // Keys from the API server are at most 316 bytes, but the webhook may be
    // sent anything: keys are cut too.
    InvalidAnnotation { annotation: echo::cut(annotation, 320), value: echo::quoted(value), why: echo::cut(&why.into(), 400) }
}

/// Reads and validates the overrides among `annotations`.
pub fn parse(annotations: Option<&Map<String, Value>>) -> Result<Overrides, InvalidAnnotation> {
    let mut out = Overrides::default();
    let Some(annotations) = annotations else { return Ok(out) };
    for (key, value) in annotations {
        if !key.starts_with(PREFIX) {
            continue;
        }
        let Some(text) = value.as_str() else {
            return Err(invalid(key, &value.to_string(), "annotation values must be strings"));
        };
        let text = text.trim();
        match key.as_str() {
            PROXY_CPU | PROXY_CPU_LIMIT => {
                quantity(text).filter(|v| *v > 0.0).ok_or_else(|| {
                    invalid(key, text, "expected a CPU quantity such as 100m, 0.5 or 2")
                })?;
                if key == PROXY_CPU { out.cpu_request = Some(text.into()) } else { out.cpu_limit = Some(text.into()) }
            }
            PROXY_MEMORY | PROXY_MEMORY_LIMIT => {
                quantity(text).filter(|v| *v >= 1.0).ok_or_else(|| {
                    invalid(key, text, "expected a memory quantity such as 64Mi, 1Gi or 134217728")
                })?;
                if key == PROXY_MEMORY { out.memory_request = Some(text.into()) } else { out.memory_limit = Some(text.into()) }
            }
            LOG_LEVEL => {
                if !LOG_LEVELS.contains(&text) {
                    return Err(invalid(key, text, format!("expected one of {}", LOG_LEVELS.join(", "))));
                }
                out.log_level = Some(text.into());
            }
            EXCLUDE_INBOUND_PORTS => out.exclude_inbound_ports = ports(key, text)?,
            EXCLUDE_OUTBOUND_PORTS => out.exclude_outbound_ports = ports(key, text)?,
            EXCLUDE_OUTBOUND_IP_RANGES => out.exclude_outbound_ip_ranges = cidrs(key, text)?,
            INBOUND_MODE => {
                if !INBOUND_MODES.contains(&text) {
                    return Err(invalid(key, text, format!("expected one of {}", INBOUND_MODES.join(", "))));
                }
                out.inbound_mode = Some(text.into());
            }
            HOLD_APPLICATION => {
                out.hold_application = match text {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid(key, text, "expected \"true\" or \"false\"")),
                };
            }
            _ => {
                return Err(invalid(key, text, format!("unknown sidecar annotation; known: {}", KNOWN.join(", "))));
            }
        }
    }
    for (request, limit, req_key, lim_key) in [
        (&out.cpu_request, &out.cpu_limit, PROXY_CPU, PROXY_CPU_LIMIT),
        (&out.memory_request, &out.memory_limit, PROXY_MEMORY, PROXY_MEMORY_LIMIT),
    ] {
        if let (Some(r), Some(l)) = (request, limit) {
            if quantity(r) > quantity(l) {
                return Err(invalid(req_key, r, format!("the request is larger than {lim_key}={l}")));
            }
        }
    }
    Ok(out)
}

/// The proxy's resources where no annotation overrides them (the injector's settings).
#[derive(Debug, Clone, Copy)]
pub struct ResourceDefaults<'a> {
    pub cpu_request: &'a str,
    pub cpu_limit: &'a str,
    pub memory_request: &'a str,
    pub memory_limit: &'a str,
}

/// Refuses an override that, with the default it leaves in place, gives the
/// proxy a request above its limit: the API server would refuse the pod with a
/// message about container `revmesh-proxy` that names no annotation. The limit
/// is never raised behind the user's back; the message says which annotation
/// to add.
pub fn check_against_defaults(o: &Overrides, defaults: &ResourceDefaults<'_>) -> Result<(), InvalidAnnotation> {
    for (what, request, limit, default_request, default_limit, req_key, lim_key) in [
        ("CPU", &o.cpu_request, &o.cpu_limit, defaults.cpu_request, defaults.cpu_limit, PROXY_CPU, PROXY_CPU_LIMIT),
        ("memory", &o.memory_request, &o.memory_limit, defaults.memory_request, defaults.memory_limit, PROXY_MEMORY, PROXY_MEMORY_LIMIT),
    ] {
        match (request, limit) {
            (Some(r), None) if quantity(r) > quantity(default_limit) => {
                return Err(invalid(
                    req_key,
                    r,
                    format!("the request is above the proxy's default {what} limit {default_limit}; also set {lim_key} to {r} or more, or ask for less"),
                ));
            }
            (None, Some(l)) if quantity(default_request) > quantity(l) => {
                return Err(invalid(
                    lim_key,
                    l,
                    format!("the limit is below the proxy's default {what} request {default_request}; also set {req_key} to {l} or less, or allow more"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn ports(key: &str, text: &str) -> Result<Vec<u16>, InvalidAnnotation> {
    split_list(text)
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(key, text, format!("{} is not a port: expected a comma-separated list of numbers from 1 to 65535", echo::quoted(p)))),
        })
        .collect()
}

fn cidrs(key: &str, text: &str) -> Result<Vec<IpNet>, InvalidAnnotation> {
    split_list(text)
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(key, text, format!("{} is not a CIDR: expected a comma-separated list such as 10.0.0.0/8,192.168.1.1/32", echo::quoted(c))))
        })
        .collect()
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The value of a Kubernetes resource quantity (`100m`, `1.5`, `64Mi`, `1e3`), or
/// `None` when it is not one. Only used to validate and compare, never re-printed.
pub fn quantity(text: &str) -> Option<f64> {
    // No real quantity is this long; a longer one would only parse to infinity.
    if text.len() > 40 {
        return None;
    }
    let t = text.strip_prefix('+').unwrap_or(text);
    let digits_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let base: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().ok().filter(|e| e.abs() <= 18)?),
        _ => return None,
    };
    Some(base * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
    }

    #[test]
    fn valid_overrides() {
        let a = ann(&[
            (PROXY_CPU, "250m"),
            (PROXY_MEMORY, "128Mi"),
            (PROXY_CPU_LIMIT, "1"),
            (PROXY_MEMORY_LIMIT, "1Gi"),
            (LOG_LEVEL, "debug"),
            (EXCLUDE_INBOUND_PORTS, "8081, 9090"),
            (EXCLUDE_OUTBOUND_PORTS, "5432"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,169.254.169.254"),
            ("other.io/thing", "ignored"),
        ]);
        let o = parse(Some(&a)).expect("valid");
        assert_eq!(o.cpu_request.as_deref(), Some("250m"));
        assert_eq!(o.exclude_inbound_ports, vec![8081, 9090]);
        assert_eq!(o.exclude_outbound_ip_ranges.len(), 2);
        assert_eq!(o.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn each_invalid_value_names_its_annotation() {
        for (key, value) in [
            (PROXY_CPU, "lots"),
            (PROXY_CPU, "-1"),
            (PROXY_MEMORY, "12Zi"),
            (LOG_LEVEL, "loud"),
            (EXCLUDE_INBOUND_PORTS, "80,http"),
            (EXCLUDE_OUTBOUND_PORTS, "70000"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
            (INBOUND_MODE, "strict-ish"),
            (HOLD_APPLICATION, "yes"),
            ("sidecar.revmesh.io/proxyCpu", "1"),
        ] {
            let err = parse(Some(&ann(&[(key, value)]))).expect_err(value);
            assert_eq!(err.annotation, key);
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = parse(Some(&ann(&[(PROXY_MEMORY, "2Gi"), (PROXY_MEMORY_LIMIT, "1Gi")]))).expect_err("request > limit");
        assert_eq!(err.annotation, PROXY_MEMORY);
    }

    const DEFAULTS: ResourceDefaults<'static> = ResourceDefaults { cpu_request: "100m", cpu_limit: "2", memory_request: "64Mi", memory_limit: "256Mi" };

    #[test]
    fn an_override_crossing_the_default_on_the_other_side_is_refused_naming_it() {
        let check = |pairs: &[(&str, &str)]| parse(Some(&ann(pairs))).and_then(|o| check_against_defaults(&o, &DEFAULTS).map(|()| o));
        // A request above the default limit, with no limit annotation.
        let err = check(&[(PROXY_CPU, "4")]).expect_err("4 CPUs > default limit 2");
        assert_eq!(err.annotation, PROXY_CPU);
        let text = err.to_string();
        assert!(text.contains("default CPU limit 2") && text.contains(PROXY_CPU_LIMIT), "{text}");
        let err = check(&[(PROXY_MEMORY, "1Gi")]).expect_err("1Gi > default limit 256Mi");
        assert_eq!(err.annotation, PROXY_MEMORY);
        // A limit below the default request, with no request annotation.
        let err = check(&[(PROXY_CPU_LIMIT, "50m")]).expect_err("50m < default request 100m");
        assert_eq!(err.annotation, PROXY_CPU_LIMIT);
        assert!(err.to_string().contains(PROXY_CPU), "{err}");
        let err = check(&[(PROXY_MEMORY_LIMIT, "32Mi")]).expect_err("32Mi < default request 64Mi");
        assert_eq!(err.annotation, PROXY_MEMORY_LIMIT);
        // Both given and consistent: fine, however far from the defaults.
        check(&[(PROXY_CPU, "4"), (PROXY_CPU_LIMIT, "8")]).expect("4 <= 8");
        check(&[(PROXY_MEMORY, "16Mi"), (PROXY_MEMORY_LIMIT, "32Mi")]).expect("16Mi <= 32Mi");
        // Equal to the default on the other side is allowed (request == limit).
        check(&[(PROXY_CPU, "2")]).expect("2 == default limit");
        check(&[(PROXY_MEMORY_LIMIT, "64Mi")]).expect("64Mi == default request");
        // Both given but crossed: the request annotation is named.
        let err = check(&[(PROXY_CPU, "3"), (PROXY_CPU_LIMIT, "1")]).expect_err("3 > 1");
        assert_eq!(err.annotation, PROXY_CPU);
    }

    #[test]
    fn a_megabyte_value_is_quoted_cut_with_its_length() {
        let huge = "8".repeat(1024 * 1024) + ",x";
        let err = parse(Some(&ann(&[(EXCLUDE_INBOUND_PORTS, &huge)]))).expect_err("not ports");
        let text = err.to_string();
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert!(text.contains(&format!("({} bytes in all)", huge.len())), "{text}");
        let err = parse(Some(&ann(&[(PROXY_CPU, &"9".repeat(100_000))]))).expect_err("not a quantity");
        assert!(err.to_string().len() < 1000);
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("100m"), Some(0.1));
        assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity(".5"), Some(0.5));
        assert_eq!(quantity("1.2.3"), None);
        assert_eq!(quantity("m"), None);
        assert_eq!(quantity(""), None);
    }
}
