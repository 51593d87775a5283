#!/usr/bin/env python3
"""A light stand-in for the JVM service in many-host ship tests and the ship benchmark.

Serves GET /version (200 "version=V" from the properties file), /health, and
/ (same as /version). The properties file is VERSION_FILE, else
service.properties beside this script (a release directory). Listens on an
inherited socket when LISTEN_FDS=1 (fd 3, as baton's [listen] hands it),
else on --bind/--port. Prints "serving on ..." once it accepts; SIGTERM ends it
after the request in flight. BROKEN=1 in the properties file's directory
(a file named BROKEN) makes it exit 3 at once, for failed-deploy tests.
"""
import http.server
import os
import signal
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROPS = os.environ.get("VERSION_FILE") or os.path.join(HERE, "service.properties")


def version():
    try:
        with open(PROPS) as f:
            for line in f:
                if line.startswith("version="):
                    return line.strip()[len("version="):]
    except OSError:
        pass
    return "dev"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path in ("/", "/version"):
            body = ("version=%s\n" % version()).encode()
        elif self.path == "/health":
            body = b"ok\n"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    if os.path.exists(os.path.join(HERE, "BROKEN")):
        print("app: this build is broken (BROKEN file present)", flush=True)
        sys.exit(3)
    args = sys.argv[1:]
    bind, port = "127.0.0.1", 0
    while args:
        a = args.pop(0)
        if a == "--bind":
            bind = args.pop(0)
        elif a == "--port":
            port = int(args.pop(0))
    if os.environ.get("LISTEN_FDS") == "1":
        srv = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        srv.socket.close()
        srv.socket = socket.socket(fileno=3)
        where = "%s:%d (inherited socket)" % srv.socket.getsockname()[:2]
    else:
        srv = http.server.HTTPServer((bind, port), Handler)
        where = "%s:%d" % srv.socket.getsockname()[:2]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("app: serving on %s version=%s pid=%d" % (where, version(), os.getpid()), flush=True)
    try:
        srv.serve_forever()
    finally:
        print("app: stopped", flush=True)


if __name__ == "__main__":
    main()
