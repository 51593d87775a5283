//! A blocking HTTP/1.0 GET, enough to read the version a host reports.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `http://HOST:PORT/PATH`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address (brackets kept off IPv6).
    pub host: String,
    /// Port, 80 when absent.
    pub port: u16,
    /// Path with query, `/` when absent.
    pub path: String,
}

impl Url {
    /// Parses a plain `http://` URL.
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s:?} is not an http:// URL"))?;
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = auth.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed ["))?;
            (h, p.strip_prefix(':'))
        } else {
            match auth.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (auth, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            None => 80,
        };
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// GETs `url`; returns the status code and body, or why there is none.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let u = Url::parse(url)?;
    let addr = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {e}", u.host))?
        .next()
        .ok_or_else(|| format!("resolve {}: no address", u.host))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}:{}\r\nConnection: close\r\nUser-Agent: baton-ship\r\n\r\n",
        u.path, u.host, u.port
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} sent no complete HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr} sent a bad status line"))?;
    Ok((status, body.to_string()))
}

/// The version in a `/version` answer: a `version=V` line, or the whole trimmed body.
pub fn version_of(body: &str) -> String {
    body.lines()
        .find_map(|l| l.trim().strip_prefix("version=").map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.2:8080/version").expect("ok");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.2", 8080, "/version")
        );
        assert_eq!(Url::parse("http://h").expect("ok").port, 80);
        assert!(Url::parse("https://h/").is_err());
        assert!(Url::parse("http://h:x/").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(version_of("version=1.2\n"), "1.2");
        assert_eq!(version_of("1.3\n"), "1.3");
    }
}
