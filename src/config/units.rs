//! The value syntaxes a config uses: durations, sizes, signals, env files and variable names.

use nix::sys::signal::Signal;
use std::str::FromStr;
use std::time::Duration;

/// PATH unless the config sets one: the system's directories, nothing the caller added.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH a program name in `command` is looked up in, as the service will see it.
pub fn lookup_path(env: &[(String, String)], inherit: &[String]) -> std::ffi::OsString {
    if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == "PATH") {
        return v.into();
    }
    if inherit.iter().any(|k| k == "PATH") {
        if let Some(p) = std::env::var_os("PATH") {
            return p;
        }
    }
    SAFE_PATH.into()
}

/// Whether `name` can be an environment variable's name (what `env_file` and `inherit_env` accept).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The one way baton writes a duration: `250ms`, `90s`, `1.5s`, `2.25s` (parses back).
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        let text = format!("{:.2}", d.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// The longest duration a config may give: a week. Every timeout, backoff and window baton
/// knows is far shorter, and the bound keeps `Instant + duration` far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The largest size a config may give: 1 TiB (a log file rotated beyond that is never rotated).
pub const MAX_SIZE: u64 = 1 << 40;

/// `100ms`, `30s`, `5m`, `1h`, `1.5s`; at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. \"100ms\", \"30s\", \"5m\")"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "" => return Err(format!("{s:?} has no unit: write \"{s}s\" or \"{s}ms\"")),
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (expected ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "{s:?} is too long: durations are at most 168h (a week)"
        ));
    }
    // Rounded to the microsecond: decimal input must not turn into 99.999999ms.
    Ok(Duration::from_micros((secs * 1e6).round() as u64))
}

/// `100MB`, `10KiB`, `1G`, `4096`; at most [`MAX_SIZE`].
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. \"100MB\")"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1000,
        "KIB" => 1 << 10,
        "M" | "MB" => 1000 * 1000,
        "MIB" => 1 << 20,
        "G" | "GB" => 1000 * 1000 * 1000,
        "GIB" => 1 << 30,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (expected B, KB, MB, GB or KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|&n| n > 0 && n <= MAX_SIZE)
        .ok_or_else(|| format!("{s:?} is out of range: sizes are from 1 byte to 1TiB"))
}

/// `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> std::result::Result<Signal, String> {
    let t = s.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{s:?} is not a signal number"));
    }
    let full = if t.starts_with("SIG") {
        t
    } else {
        format!("SIG{t}")
    };
    Signal::from_str(&full)
        .map_err(|_| format!("{s:?} is not a signal name (e.g. \"TERM\", \"INT\", \"QUIT\")"))
}

/// `KEY=VALUE` lines, `#` comments, optional `export ` and surrounding quotes.
pub(crate) fn parse_env_file(
    body: &str,
) -> std::result::Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err((i + 1, format!("expected KEY=VALUE, found {line:?}")));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((i + 1, format!("{k:?} is not a valid variable name")));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("100ms", 100),
            ("30s", 30_000),
            ("1.5s", 1500),
            ("2m", 120_000),
            ("1h", 3_600_000),
        ];
        for (s, ms) in table {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "30", "ms", "3 parsecs", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
    #[test]
    fn sizes_and_signals() {
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert!(parse_size("0").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("TERMINATE").is_err());
    }
    #[test]
    fn env_file_lines() {
        let pairs = parse_env_file("# c\nA=1\nexport B=\"two words\"\n\nC='x'\n");
        assert_eq!(
            pairs,
            Ok(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into())
            ])
        );
        assert_eq!(parse_env_file("A=1\nnope\n").map_err(|e| e.0), Err(2));
    }
}
