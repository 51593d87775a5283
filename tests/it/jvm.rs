//! The original case: a real Clojure service on Jetty (examples/clj-service) under baton.

use crate::harness;

use harness::{free_port, Spec};
use std::net::TcpStream;
use std::path::Path;

#[test]
fn clojure_service_is_ready_serves_its_version_and_stops_cleanly() {
    if !harness::jvm_available() {
        eprintln!("skipped: run scripts/setup-deps for Java, Clojure and Jetty");
        return;
    }
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clj-service/run");
    let port = free_port();
    let svc = Spec::new("clj", &format!("[\"{}\", \"--port\", \"{{port}}\"]", run.display()))
        .env("VERSION_FILE = \"{dir}/service.properties\"\nJAVA_OPTS = \"-Xmx128m\"")
        .tables(&format!(
            "[port]\nmode = \"fixed\"\nport = {port}\n[ready]\nhttp = \"http://127.0.0.1:{{port}}/health\"\n\
             log = \"Started ServerConnector@\"\ntimeout = \"90s\"\n[stop]\ntimeout = \"30s\"\ndump_signal = \"QUIT\""
        ))
        .create();
    std::fs::write(svc.path("service.properties"), "version=1.2.3\n").expect("properties");
    svc.start();
    // Ready means serving: the very first request after start succeeds.
    let reply = harness::fetch(&format!("http://127.0.0.1:{port}/")).expect("an answer");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("version=1.2.3"), "{reply:?}");
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    assert!(
        svc.log("stderr.log").contains("Started ServerConnector@"),
        "Jetty's line went to stderr.log"
    );

    svc.stop();
    let (code, st) = svc.status();
    assert_eq!(code, 3, "{st}");
    assert_eq!(
        st["last_exit"], "exited with code 143",
        "the JVM's 143 after TERM: {st}"
    );
    assert!(
        svc.processes().is_empty(),
        "JVM survived stop: {:?}",
        svc.processes()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port still open after stop"
    );
}
