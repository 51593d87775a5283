//! The one URL type baton parses itself: plain `http://host:port/path` (probes, proxy confirmation).

/// An `http://host:port/path` URL, as far as a readiness GET needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// Host as written (sent in the Host header).
    pub host: String,
    /// TCP port (80 if absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpTarget {
    /// Parses a plain-HTTP URL; https is refused with a reason.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?} must start with http:// (baton speaks plain HTTP only)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: {p:?} is not a port"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(HttpTarget {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}
