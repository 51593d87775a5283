//! TCP sockets as the kernel lists them in /proc/net/tcp and /proc/net/tcp6.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP state numbers of include/net/tcp_states.h.
pub const ESTABLISHED: u8 = 1;
/// A listening socket.
pub const LISTEN: u8 = 0x0A;

/// One line of /proc/net/tcp{,6}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// The local endpoint.
    pub local: (IpAddr, u16),
    /// The peer (unspecified for a listening socket).
    pub remote: (IpAddr, u16),
    /// The kernel's TCP state number.
    pub state: u8,
    /// The socket inode (0 once no process holds it, e.g. in TIME_WAIT).
    pub inode: u64,
}

/// Every TCP socket of this network namespace.
pub fn all() -> Vec<TcpSocket> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            out.extend(text.lines().skip(1).filter_map(parse_line));
        }
    }
    out
}

/// One table line: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_line(line: &str) -> Option<TcpSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    Some(TcpSocket {
        local: endpoint(f.get(1)?)?,
        remote: endpoint(f.get(2)?)?,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), in the kernel's byte order.
fn endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        // Each 32-bit word is printed as a host-order integer of network-order bytes.
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Every connection to local `port` in any state but LISTEN (TIME_WAIT included), by the
/// client's endpoint, with whether it is established.
///
/// A connection over loopback shows twice: the server's half (local `port`) and the
/// client's (remote `port`). Whichever half closed first lingers in TIME_WAIT while the
/// other may already be gone, so both are looked at, each reduced to the client's endpoint.
pub fn peers_of(port: u16) -> HashMap<(IpAddr, u16), bool> {
    let mut out = HashMap::new();
    for s in all().into_iter().filter(|s| s.state != LISTEN) {
        let peer = if s.local.1 == port {
            s.remote
        } else if s.remote.1 == port && s.remote.0.is_loopback() {
            s.local
        } else {
            continue;
        };
        *out.entry(peer).or_insert(false) |= s.state == ESTABLISHED;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6_lines() {
        let v4 = "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 20 4 30 10 -1";
        let s = parse_line(v4).expect("v4");
        assert_eq!(s.local, (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080));
        assert_eq!(s.remote, (IpAddr::V4(Ipv4Addr::LOCALHOST), 0xD431));
        assert_eq!((s.state, s.inode), (ESTABLISHED, 123456));
        let v6 = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(v6).expect("v6");
        assert_eq!(s.local, (IpAddr::V6(Ipv6Addr::LOCALHOST), 8080));
        assert_eq!(s.state, LISTEN);
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn sees_a_loopback_connection_from_both_sides() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let me = client.local_addr().expect("addr");
        let (_server, _) = listener.accept().expect("accept");
        assert_eq!(peers_of(port).get(&(me.ip(), me.port())), Some(&true));
    }
}
