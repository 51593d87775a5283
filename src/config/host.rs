//! What a valid config must still meet on this host: the files it names, the kernel it runs on.

use super::{PortSpec, ProxySpec, Spec};
use std::path::Path;

/// What a look at the host found: errors stop `check` and `start`; warnings are told.
#[derive(Debug, Default)]
pub struct Findings {
    /// The config cannot work here.
    pub errors: Vec<String>,
    /// It works, but something will bite.
    pub warnings: Vec<String>,
}

/// Looks at the host for `spec`.
pub fn check(spec: &Spec) -> Findings {
    let mut f = Findings::default();
    if let ProxySpec::Nginx(sw) = &spec.proxy {
        match std::fs::read_to_string(&sw.config) {
            Ok(main) => {
                if let Err(e) = nginx_includes(&main, &sw.upstream) {
                    f.errors
                        .push(format!("proxy.config {}: {e}", sw.config.display()));
                }
            }
            Err(e) => f.warnings.push(format!(
                "unable to read proxy.config {}: {e}; a deploy needs it",
                sw.config.display()
            )),
        }
    }
    if let PortSpec::Auto { from, to } = spec.port {
        if let Some((lo, hi)) = ephemeral_range() {
            if from <= hi && lo <= to {
                f.warnings.push(format!(
                    "port.range {from}..{to} overlaps the kernel's ephemeral ports {lo}..{hi} \
                     (net.ipv4.ip_local_port_range): outgoing connections can take a port between \
                     baton's pick and the service's bind; use a range outside it, e.g. [20000, 29999]"
                ));
            }
        }
    }
    f
}

/// Whether nginx's main config mentions `live`, the upstream file a switch rewrites, by that path.
///
/// The switch's `nginx -t` runs a copy of the main config with that mention pointed at the
/// candidate: an upstream file included only through a glob or another include is never
/// checked, and the switch cannot work.
pub fn nginx_includes(main: &str, live: &Path) -> std::result::Result<(), String> {
    let live = live.to_string_lossy();
    if main.contains(live.as_ref()) {
        Ok(())
    } else {
        Err(format!(
            "does not mention the upstream file {live}; include it by that path \
             from proxy.config, or use kind = \"command\" with a check of your own"
        ))
    }
}

/// net.ipv4.ip_local_port_range: the ports the kernel hands to outgoing connections.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_file_the_main_config_does_not_name_is_refused() {
        let live = Path::new("/etc/nginx/app.upstream");
        assert!(nginx_includes("upstream app { include /etc/nginx/app.upstream; }", live).is_ok());
        let e = nginx_includes("include /etc/nginx/conf.d/*.conf;", live);
        assert!(
            e.as_ref()
                .is_err_and(|e| e.contains("/etc/nginx/app.upstream")),
            "{e:?}"
        );
    }
}
