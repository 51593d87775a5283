(ns baton.example.service
  "A small, real Clojure web service on Jetty 9, the kind baton supervises.

  Endpoints (every response carries `X-Pid: <pid>`, so a caller, or baton's
  switch confirmation through nginx, can tell which instance answered):
    GET /health       200 \"ok\"
    GET /version      200 \"version=<version>\"  (from service.properties)
    GET /             same as /version
    GET /slow?ms=N    sleeps N ms, then 200 \"slept N\"  (for drain tests)

  Listening socket, first match wins:
    1. a listening socket inherited on fd 0 (System/inheritedChannel, which
       Jetty adopts with ServerConnector#setInheritChannel); the `run`
       launcher moves a systemd-style LISTEN_FDS=1 socket (fd 3) there;
    2. 127.0.0.1:PORT bound here (--port / PORT; 0 = an ephemeral port,
       reported in the serving line).

  SIGTERM drains (a JVM shutdown hook), bounded by --stop-timeout-ms:
    1. stop accepting: ServerConnector#setAccepting false (the connector
       accepts from its selector, no acceptor threads, so no accept is
       pending); an own socket is then closed, so connects are refused at
       once, while an inherited one stays open, since it is shared with the
       next instance, whose accept queue it is;
    2. answer every further request with `Connection: close`, and wait
       until no request is in flight and every connection has been closed
       by its client (idle keep-alive connections are left to the client:
       nginx closes idle upstream connections after its keepalive_timeout);
    3. Jetty's graceful stop (StatisticsHandler + Server#setStopTimeout)
       for whatever is left at the deadline, then the JVM exits (143).
  Step 2 exists because Jetty 9.4's graceful stop alone is not enough for a
  shared socket: once shut down, StatisticsHandler answers 503 to requests
  that keep-alive clients send on connections they already hold."
  (:import (java.io File FileInputStream)
           (java.lang ProcessHandle)
           (java.nio.channels ServerSocketChannel)
           (java.util Properties)
           (javax.servlet.http HttpServletRequest HttpServletResponse)
           (org.eclipse.jetty.server Server ServerConnector Request)
           (org.eclipse.jetty.server.handler AbstractHandler StatisticsHandler)
           (org.eclipse.jetty.util.component LifeCycle$Listener)))

(set! *warn-on-reflection* true)

(defn log [& parts]
  (locking *out*
    (println (apply str "baton-example: " parts))
    (flush)))

(def pid (.pid (ProcessHandle/current)))

(def draining? (atom false))

(defn read-version
  "The `version` property of the properties file at `path`, or \"dev\"."
  [path]
  (if (and path (.isFile (File. ^String path)))
    (with-open [in (FileInputStream. ^String path)]
      (let [p (doto (Properties.) (.load in))]
        (.getProperty p "version" "dev")))
    "dev"))

(defn- parse-long* [s default]
  (try (Long/parseLong (str s)) (catch Exception _ default)))

(defn- reply [^Request base ^HttpServletResponse resp status ^String body]
  (.setStatus resp (int status))
  (.setContentType resp "text/plain; charset=utf-8")
  (.setHeader resp "X-Pid" (str pid))
  (when @draining?
    ;; Jetty closes the connection after this response; the client's next
    ;; request opens a new one, which the next instance accepts.
    (.setHeader resp "Connection" "close"))
  (.write (.getWriter resp) body)
  (.setHandled base true))

(defn handler [version]
  (proxy [AbstractHandler] []
    (handle [^String target ^Request base ^HttpServletRequest req ^HttpServletResponse resp]
      (case target
        "/health"  (reply base resp 200 "ok\n")
        ("/" "/version") (reply base resp 200 (str "version=" version "\n"))
        "/slow"    (let [ms (max 0 (parse-long* (.getParameter req "ms") 1000))]
                     (Thread/sleep (long ms))
                     (reply base resp 200 (str "slept " ms "\n")))
        (reply base resp 404 "not found\n")))))

(defn- lifecycle-logger []
  (reify LifeCycle$Listener
    (lifeCycleStarting [_ _])
    (lifeCycleStarted [_ _])
    (lifeCycleFailure [_ _ cause] (log "failure: " cause))
    (lifeCycleStopping [_ _] (log "stopping: Jetty's graceful stop"))
    (lifeCycleStopped [_ _] (log "stopped"))))

(defn inherited-listener
  "The listening socket inherited on fd 0, or nil."
  ^ServerSocketChannel []
  (let [ch (System/inheritedChannel)]
    (when (instance? ServerSocketChannel ch) ch)))

(defn connector
  "A connector that accepts from its selector (0 acceptor threads), so that
  setAccepting false stops accepting without closing the socket. With
  `inherited?` it adopts fd 0 and never closes it: the socket is shared with
  the next instance, and closing the JDK's inherited channel would also dup2
  /dev/null over fds 0, 1 and 2 (sun.nio.ch.InheritedChannel), silencing
  this service's output."
  ^ServerConnector [^Server server inherited? port]
  (doto ^ServerConnector
        (proxy [ServerConnector] [server (int 0) (int -1)]
          (close []
            (if inherited?
              (.setAccepting ^ServerConnector this false)
              (let [^ServerConnector this this] (proxy-super close)))))
    ;; Jetty names a connector after its class, here the proxy's: keep its usual
    ;; "Started ServerConnector@..." line, which readiness probes match.
    (.setName "ServerConnector")
    (.setInheritChannel (boolean inherited?))
    (.setHost "127.0.0.1")
    (.setPort (int port))
    (.setAcceptQueueSize 1024)))

(defn drain!
  "Stop accepting, let clients finish and close their connections (at most
  `timeout-ms`), then Jetty's graceful stop for the rest of the time."
  [^Server server ^ServerConnector conn ^StatisticsHandler stats inherited? timeout-ms]
  (let [t0 (System/nanoTime)
        elapsed #(quot (- (System/nanoTime) t0) 1000000)
        open #(.size (.getConnectedEndPoints conn))]
    (reset! draining? true)
    (.setAccepting conn false)
    (when-not inherited? (.close conn))
    (log "draining: stopped accepting" (if inherited? " (shared socket left open)" "")
         "; " (.getRequestsActive stats) " requests in flight, " (open) " connections open")
    (loop [last-report (long 0)]
      (let [busy (.getRequestsActive stats)
            conns (open)
            ms (elapsed)]
        (cond
          (and (zero? busy) (zero? conns))
          (log "drained in " ms " ms")

          (>= ms timeout-ms)
          (log "drain timeout after " ms " ms: " conns " connections open, "
               busy " requests in flight")

          :else
          (do (Thread/sleep 20)
              (recur (if (>= (- ms last-report) 1000)
                       (do (log "draining: " busy " in flight, " conns " connections open")
                           (long ms))
                       last-report))))))
    (.setStopTimeout server (max 1000 (- timeout-ms (elapsed))))
    (.stop server)))

(defn parse-args [args]
  (loop [opts {} [a b & more :as args] args]
    (cond
      (empty? args) opts
      (= a "--port") (recur (assoc opts :port b) more)
      (= a "--version-file") (recur (assoc opts :version-file b) more)
      (= a "--stop-timeout-ms") (recur (assoc opts :stop-timeout-ms b) more)
      :else (do (binding [*out* *err*]
                  (println "usage: service [--port N] [--version-file PATH] [--stop-timeout-ms N]")
                  (println "unknown argument:" a))
                (System/exit 2)))))

(defn -main [& args]
  (let [opts (parse-args args)
        port (parse-long* (or (:port opts) (System/getenv "PORT")) 18080)
        version-file (or (:version-file opts) (System/getenv "VERSION_FILE"))
        version (read-version version-file)
        stop-ms (parse-long* (or (:stop-timeout-ms opts) (System/getenv "STOP_TIMEOUT_MS")) 25000)
        inherited? (some? (inherited-listener))
        server (Server.)
        conn (connector server inherited? port)
        ;; StatisticsHandler makes Jetty's stop graceful: it waits for
        ;; in-flight requests before the server shuts down.
        stats (doto (StatisticsHandler.) (.setHandler (handler version)))]
    (doto server
      (.addConnector conn)
      (.setHandler stats)
      (.setStopTimeout (long stop-ms))
      (.addLifeCycleListener (lifecycle-logger)))
    (log "starting version=" version (if inherited? " socket=inherited" (str " port=" port))
         " pid=" pid)
    (.addShutdownHook (Runtime/getRuntime)
                      (Thread. ^Runnable
                               (fn []
                                 (try
                                   (if (.isStarted server)
                                     (drain! server conn stats inherited? stop-ms)
                                     (log "stopped before serving"))
                                   (catch Throwable t
                                     (log "stop failed: " t))))))
    (try
      (.start server)
      (catch Exception e
        (log "failed to start: " e)
        (System/exit 1)))
    (log "serving on 127.0.0.1:" (.getLocalPort conn) " version=" version " pid=" pid
         (if inherited? " (inherited socket)" ""))
    (.join server)))
