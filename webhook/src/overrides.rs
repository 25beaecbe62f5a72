//! Per-pod proxy settings, read from `sidecar.revmesh.io/*` annotations. An
//! invalid value denies the pod with a message naming the annotation, rather
//! than injecting a proxy that would fail later in a less obvious way.

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
];

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?} is invalid: {why}")]
pub struct InvalidAnnotation {
    pub annotation: String,
    pub value: String,
    pub why: String,
}

fn invalid(annotation: &str, value: &str, why: impl Into<String>) -> InvalidAnnotation {
    InvalidAnnotation { annotation: annotation.into(), value: value.into(), why: why.into() }
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

fn ports(key: &str, text: &str) -> Result<Vec<u16>, InvalidAnnotation> {
    split_list(text)
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(key, text, format!("{p:?} is not a port: expected a comma-separated list of numbers from 1 to 65535"))),
        })
        .collect()
}

fn cidrs(key: &str, text: &str) -> Result<Vec<IpNet>, InvalidAnnotation> {
    split_list(text)
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(key, text, format!("{c:?} is not a CIDR: expected a comma-separated list such as 10.0.0.0/8,192.168.1.1/32")))
        })
        .collect()
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The value of a Kubernetes resource quantity (`100m`, `1.5`, `64Mi`, `1e3`), or
/// `None` when it is not one. Only used to validate and compare, never re-printed.
pub fn quantity(text: &str) -> Option<f64> {
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
            ("sidecar.revmesh.io/proxyCpu", "1"),
        ] {
            let err = parse(Some(&ann(&[(key, value)]))).expect_err(value);
            assert_eq!(err.annotation, key);
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = parse(Some(&ann(&[(PROXY_MEMORY, "2Gi"), (PROXY_MEMORY_LIMIT, "1Gi")]))).expect_err("request > limit");
        assert_eq!(err.annotation, PROXY_MEMORY);
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
