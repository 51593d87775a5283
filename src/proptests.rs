//! Property tests for every parser that config and deploy-file input reaches: none may panic,
//! and what they accept stays inside the bounds the rest of baton relies on.

use crate::config::units::{parse_duration, parse_env_file, parse_size, MAX_DURATION, MAX_SIZE};
use crate::url::HttpTarget;
use proptest::prelude::*;
use std::path::Path;

/// Values a config line may hold, valid or not: the reader must report, never crash.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,25}(ms|s|m|h|min|)".prop_map(|s| format!("{s:?}")),
        "[0-9]{0,8}\\.[0-9]{0,8}(ms|s|h)".prop_map(|s| format!("{s:?}")),
        "[0-9]{1,22}(B|KB|MB|GB|KiB|MiB|GiB|TB|)".prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
        Just("[\"1ms\", \"99999999999999999999h\"]".to_string()),
        Just("[20000, 1]".to_string()),
        Just("{ A = \"1\" }".to_string()),
    ]
}

/// Keys the reader knows (and a few it does not), in their sections.
fn line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "ready.timeout",
        "ready.log",
        "ready.notify",
        "stop.timeout",
        "stop.signal",
        "stop.dump_after",
        "stop.dump_signal",
        "restart.backoff",
        "restart.max",
        "restart.window",
        "restart.stable",
        "restart.policy",
        "log.max_size",
        "log.keep",
        "port.port",
        "port.range",
        "port.mode",
        "deploy.drain_timeout",
        "umask",
        "inherit_env",
        "env",
        "bogus",
        "proxy.confirm_timeout",
    ]);
    (keys, value()).prop_map(|(k, v)| format!("{k} = {v}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn durations_never_panic_and_stay_bounded(s in "\\PC{0,30}") {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d <= MAX_DURATION);
        }
    }

    #[test]
    fn durations_in_range_round_trip(ms in 0u64..MAX_DURATION.as_millis() as u64) {
        prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(std::time::Duration::from_millis(ms)));
    }

    #[test]
    fn durations_past_the_bound_are_refused(secs in MAX_DURATION.as_secs() + 1..u64::MAX) {
        let (s, h) = (parse_duration(&format!("{secs}s")), parse_duration(&format!("{secs}h")));
        prop_assert!(s.is_err() && h.is_err());
    }

    #[test]
    fn sizes_never_panic_and_stay_bounded(s in "\\PC{0,30}") {
        if let Ok(n) = parse_size(&s) {
            prop_assert!(n > 0 && n <= MAX_SIZE);
        }
    }

    #[test]
    fn sizes_in_range_round_trip(k in 1u64..(MAX_SIZE >> 10)) {
        prop_assert_eq!(parse_size(&format!("{k}KiB")), Ok(k << 10));
    }

    #[test]
    fn env_files_never_panic(body in "\\PC{0,200}") {
        let _ = parse_env_file(&body);
    }

    #[test]
    fn env_file_pairs_round_trip(
        pairs in prop::collection::vec(("[A-Z_][A-Z0-9_]{0,10}", "[a-z0-9 ./:-]{0,20}"), 0..10)
    ) {
        let body: String = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect();
        let parsed = parse_env_file(&body).map_err(|e| e.1);
        let want: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(parsed, Ok(want));
    }

    #[test]
    fn http_targets_never_panic(s in "\\PC{0,60}") {
        let _ = HttpTarget::parse(&s);
        let _ = HttpTarget::parse(&format!("http://{s}"));
    }

    #[test]
    fn http_targets_round_trip(
        host in "[a-z0-9.-]{1,20}",
        port in any::<u16>(),
        path in "(/[a-zA-Z0-9._~?=&-]{0,10}){0,4}",
    ) {
        let url = format!("http://{host}:{port}{path}");
        let t = HttpTarget::parse(&url).map_err(TestCaseError::fail)?;
        prop_assert_eq!(t.host, host);
        prop_assert_eq!(t.port, port);
        prop_assert_eq!(t.path, if path.is_empty() { "/".to_string() } else { path });
    }

    #[test]
    fn problem_lines_match_a_plain_count(text in "(\\PC{0,5}\n?){0,40}", at in any::<prop::sample::Index>()) {
        let offset = at.index(text.len() + 1);
        let plain = text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        prop_assert_eq!(crate::config::Walker::new(&text).line_of(offset), plain);
    }

    #[test]
    fn arbitrary_text_never_crashes_the_config_reader(text in "\\PC{0,300}") {
        let _ = crate::config::parse(&text, Path::new("/nonexistent/t.toml"), "t");
    }

    #[test]
    fn every_problem_has_a_line_inside_the_file(lines in prop::collection::vec(line(), 0..12)) {
        // Dotted keys keep each line self-contained; a section table per key would reorder them.
        let text = format!("command = [\"/bin/sh\"]\n{}\n", lines.join("\n"));
        let count = text.lines().count();
        if let Err(problems) = crate::config::parse(&text, Path::new("/nonexistent/t.toml"), "t") {
            for p in problems {
                if let Some(l) = p.line {
                    prop_assert!(l >= 1 && l <= count, "line {} of {}: {:?}", l, count, p);
                }
            }
        }
    }

    #[test]
    fn accepted_configs_hold_bounded_durations(lines in prop::collection::vec(line(), 0..12)) {
        let text = format!("command = [\"/bin/sh\"]\n{}\n", lines.join("\n"));
        if let Ok(spec) = crate::config::parse(&text, Path::new("/nonexistent/t.toml"), "t") {
            for d in [
                spec.ready.timeout,
                spec.stop.timeout,
                spec.stop.dump_after,
                spec.restart.backoff_min,
                spec.restart.backoff_max,
                spec.restart.window,
                spec.restart.stable,
                spec.deploy.drain_timeout,
            ] {
                prop_assert!(d <= MAX_DURATION);
            }
            prop_assert!(spec.log.max_size <= MAX_SIZE);
        }
    }

    #[test]
    fn deploy_files_never_crash_the_reader(text in "\\PC{0,300}") {
        let _ = crate::ship::config::parse(&text, Path::new("deploy.toml"), Path::new("/nonexistent"));
    }

    #[test]
    fn deploy_file_values_never_crash_the_reader(
        verify in value(),
        parallel in value(),
        port in value(),
        hosts in prop::collection::vec("[a-z0-9.]{0,12}", 0..4),
    ) {
        let text = format!(
            "service = \"web\"\n[build]\ncommand = \"true\"\nartifact = \"a\"\n[environments.p]\n\
             hosts = {hosts:?}\ndeploy_to = \"/srv\"\nversion_url = \"http://{{host}}:1/v\"\n\
             verify_timeout = {verify}\nmax_parallel = {parallel}\nport = {port}\n"
        );
        let _ = crate::ship::config::parse(&text, Path::new("deploy.toml"), Path::new("/nonexistent"));
    }
}
