//! The PROXY protocol header (HAProxy's specification, versions 1 and 2), sans-IO:
//! what a TCP load balancer sends first on each connection so that the broker sees
//! the client's own address. Only listeners with `proxy_protocol = true` read it, and
//! there it is required.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's fixed signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included.
const V1_MAX: usize = 107;
/// Version 2 address blocks longer than this are refused (TLVs included); the
/// specification allows 65535, but nothing a balancer sends comes near.
const V2_MAX_LEN: usize = 2048;
/// The longest header accepted, of either version.
pub const MAX_HEADER: usize = 16 + V2_MAX_LEN;

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (the listener requires one)")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// A complete header: the client's address (`None` for v1 `UNKNOWN`, v2 `LOCAL` or
/// an address family other than TCP over IPv4/IPv6: the connection's own peer
/// address stands), and how many bytes it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub source: Option<SocketAddr>,
    pub len: usize,
}

/// Parses the start of a connection: `Ok(None)` while more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..end];
    let line = line
        .strip_suffix(b"\r")
        .ok_or(ProxyError::Malformed("v1 header not ended by CRLF"))?;
    let line =
        std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 header not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let family = parts.next().ok_or(ProxyError::Malformed("v1 family"))?;
    let len = end + 1;
    if family == "UNKNOWN" {
        return Ok(Some(Header { source: None, len }));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::Malformed("v1 needs 4 fields after the family"));
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            IpAddr::V4(
                src.parse()
                    .map_err(|_| ProxyError::Malformed("v1 source"))?,
            ),
            IpAddr::V4(
                dst.parse()
                    .map_err(|_| ProxyError::Malformed("v1 destination"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(
                src.parse()
                    .map_err(|_| ProxyError::Malformed("v1 source"))?,
            ),
            IpAddr::V6(
                dst.parse()
                    .map_err(|_| ProxyError::Malformed("v1 destination"))?,
            ),
        ),
        _ => {
            return Err(ProxyError::Malformed(
                "v1 family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let _ = dst;
    let port = |p: &str| -> Result<u16, ProxyError> {
        // Decimal without leading zeros (the specification's form).
        if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
            return Err(ProxyError::Malformed("v1 port"));
        }
        p.parse().map_err(|_| ProxyError::Malformed("v1 port"))
    };
    let sport = port(sport)?;
    port(dport)?;
    Ok(Some(Header {
        source: Some(SocketAddr::new(src, sport)),
        len,
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => {
            return Err(ProxyError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ))
        }
    };
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_LEN {
        return Err(ProxyError::Malformed("v2 address block too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    if local {
        return Ok(Some(Header {
            source: None,
            len: total,
        }));
    }
    let source = match fam {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 => {
            if body.len() < 12 {
                return Err(ProxyError::Malformed("v2 IPv4 block too short"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(ProxyError::Malformed("v2 IPv6 block too short"));
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        // UNSPEC, UDP, UNIX: the connection's own address stands.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        _ => return Err(ProxyError::Malformed("v2 unknown address family")),
    };
    Ok(Some(Header { source, len: total }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend((body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 1883\r\nMQTT";
        assert_eq!(
            parse(h),
            Ok(Some(Header {
                source: Some("192.0.2.7:56324".parse().unwrap()),
                len: h.len() - 4
            }))
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n";
        assert_eq!(
            parse(h).unwrap().unwrap().source,
            Some("[2001:db8::1]:4000".parse().unwrap())
        );
        let h = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(parse(h).unwrap().unwrap().source, None);
    }

    #[test]
    fn v1_needs_more_bytes_until_crlf_and_refuses_garbage() {
        let full = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 1883\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 056324 1883\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 1883\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 ::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(parse(&long), Err(ProxyError::Malformed(_))));
    }

    #[test]
    fn a_connection_without_a_header_is_refused() {
        assert_eq!(parse(&[0x10, 0x0c, 0, 4]), Err(ProxyError::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::Missing));
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend(56324u16.to_be_bytes());
        body.extend(1883u16.to_be_bytes());
        // A TLV (type 0x04 NOOP, length 3) after the addresses is skipped.
        body.extend([0x04, 0, 3, 1, 2, 3]);
        let h = v2(1, 0x11, &body);
        let mut with_mqtt = h.clone();
        with_mqtt.extend([0x10, 0x0c]);
        assert_eq!(
            parse(&with_mqtt),
            Ok(Some(Header {
                source: Some("192.0.2.7:56324".parse().unwrap()),
                len: h.len()
            }))
        );
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }
        let mut body6 = vec![0x20, 0x01, 0x0d, 0xb8];
        body6.extend([0; 11]);
        body6.push(1);
        body6.extend([0; 16]);
        body6.extend(4000u16.to_be_bytes());
        body6.extend(1883u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body6)).unwrap().unwrap().source,
            Some("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().source, None);
        assert_eq!(parse(&v2(1, 0x00, &[])).unwrap().unwrap().source, None);
    }

    #[test]
    fn v2_refuses_what_it_cannot_read() {
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        let mut h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x11;
        assert!(matches!(parse(&h), Err(ProxyError::Malformed(_))));
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(parse(&h), Err(ProxyError::Malformed(_))));
    }
}
