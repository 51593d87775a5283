//! Reading the version a host reports, over the HTTP client the rest of baton uses.

use std::io::Read;
use std::time::Duration;

/// GETs `url`; returns the status code and body (up to 1 MiB), or why there is none.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    // Validated like every URL baton takes: plain http://HOST[:PORT]/PATH.
    crate::url::HttpTarget::parse(url)?;
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .max_idle_connections(0)
        .redirects(0)
        .user_agent("baton-ship")
        .build();
    let response = match agent.get(url).set("Connection", "close").call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        // ureq's transport errors repeat the URL; the caller names it already.
        Err(ureq::Error::Transport(t)) => {
            return Err(t.to_string().lines().next().unwrap_or_default().to_string())
        }
    };
    let status = response.status();
    let mut body = Vec::new();
    response
        .into_reader()
        .take(1 << 20)
        .read_to_end(&mut body)
        .map_err(|e| format!("read the answer: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
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
    fn versions() {
        assert_eq!(version_of("version=1.2\n"), "1.2");
        assert_eq!(version_of("1.3\n"), "1.3");
    }

    #[test]
    fn a_url_that_is_not_plain_http_is_refused_before_any_connection() {
        assert!(get("https://h/", Duration::from_secs(1)).is_err());
        assert!(get("http://h:x/", Duration::from_secs(1)).is_err());
    }
}
