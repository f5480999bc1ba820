//! The default IPv4 gateway, which is where the app's DebianService listens
//! (the phone is the guest's gateway on the tethering /24).
use std::net::Ipv4Addr;
use std::path::Path;

// Via /proc/self so it also works under ProcSubset=pid (same table: the
// caller's network namespace).
pub const PROC_NET_ROUTE: &str = "/proc/self/net/route";

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: field {field}: {value:?} is not hexadecimal")]
    Field {
        path: String,
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("{path} line {line}: expected at least 8 columns")]
    Short { path: String, line: usize },
    #[error("no default IPv4 route via a gateway in {0} (is the network up?)")]
    NoDefault(String),
}

/// Reads `path` (normally /proc/net/route) and returns the default gateway.
pub fn default_gateway(path: &Path) -> Result<Ipv4Addr, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|source| GatewayError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_default_gateway(&text, &path.display().to_string())
}

/// Parses the /proc/net/route table: the up, gateway-flagged route with
/// destination and mask 0 and the lowest metric wins.
pub fn parse_default_gateway(text: &str, path: &str) -> Result<Ipv4Addr, GatewayError> {
    let mut best: Option<(u32, Ipv4Addr)> = None;
    for (idx, line) in text.lines().enumerate().skip(1) {
        let lineno = idx + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        if cols.len() < 8 {
            return Err(GatewayError::Short {
                path: path.to_owned(),
                line: lineno,
            });
        }
        let hex = |i: usize, field: &'static str| {
            u32::from_str_radix(cols[i], 16).map_err(|_| GatewayError::Field {
                path: path.to_owned(),
                line: lineno,
                field,
                value: cols[i].to_owned(),
            })
        };
        let dest = hex(1, "Destination")?;
        let gw = hex(2, "Gateway")?;
        let flags = hex(3, "Flags")?;
        let metric: u32 = cols[6].parse().map_err(|_| GatewayError::Field {
            path: path.to_owned(),
            line: lineno,
            field: "Metric",
            value: cols[6].to_owned(),
        })?;
        let mask = hex(7, "Mask")?;
        if dest != 0 || mask != 0 || flags & (RTF_UP | RTF_GATEWAY) != (RTF_UP | RTF_GATEWAY) {
            continue;
        }
        // The kernel prints the network-order address as a native u32.
        let addr = Ipv4Addr::from(gw.to_ne_bytes());
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, addr));
        }
    }
    best.map(|(_, a)| a)
        .ok_or_else(|| GatewayError::NoDefault(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    #[test]
    fn picks_default_route_with_lowest_metric() {
        let text = format!(
            "{HEADER}\
             enp0s1\t00000000\t0131A8C0\t0003\t0\t0\t1024\t00000000\t0\t0\t0\n\
             enp0s1\t0031A8C0\t00000000\t0001\t0\t0\t1024\t00FFFFFF\t0\t0\t0\n\
             wlan0\t00000000\t0101000A\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        );
        let gw = parse_default_gateway(&text, "route").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(gw, Ipv4Addr::new(10, 0, 1, 1));
        }
    }

    #[test]
    fn sample_from_a_tethered_guest() {
        let text = format!(
            "{HEADER}eth0\t00000000\t01B2A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t00B2A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        let gw = parse_default_gateway(&text, "route").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(gw, Ipv4Addr::new(192, 168, 178, 1));
        }
    }

    #[test]
    fn down_or_gatewayless_routes_are_not_defaults() {
        let text = format!(
            "{HEADER}eth0\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"
        );
        let e = parse_default_gateway(&text, "/proc/net/route").unwrap_err();
        assert!(matches!(e, GatewayError::NoDefault(_)), "{e}");
        assert!(e.to_string().contains("/proc/net/route"));
    }

    #[test]
    fn bad_field_is_named() {
        let text = format!("{HEADER}eth0\t00000000\tZZ\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        let e = parse_default_gateway(&text, "route").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 2") && msg.contains("Gateway"), "{msg}");
    }

    #[test]
    fn the_hosts_own_table_parses() {
        // The real file must at least parse without a format error.
        match default_gateway(Path::new(PROC_NET_ROUTE)) {
            Ok(_) | Err(GatewayError::NoDefault(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
