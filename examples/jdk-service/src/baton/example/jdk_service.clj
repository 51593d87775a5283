(ns baton.example.jdk-service
  "A small, real Clojure web service on the JDK's built-in HTTP server
  (com.sun.net.httpserver), made for zero-downtime deploy tests.

  Endpoints (every response carries `X-Pid: <pid>`, so a caller can tell
  which instance answered):
    GET /health      200 \"ok\" once initialised; 503 \"initialising\" before
    GET /version     200 \"version=<version>\"  (from a properties file)
    GET /            same as /version
    GET /slow?ms=N   sleeps N ms, then 200 \"slept N\"  (drain tests)

  Listening socket, first match wins:
    1. an inherited listening socket on fd 0 (System/inheritedChannel); the
       `run` launcher moves a systemd-style LISTEN_FDS=1 socket (fd 3) there;
    2. 127.0.0.1:PORT bound here (--port / PORT; 0 = an ephemeral port,
       reported in the serving line).
  By default the port is bound (or the inherited socket accepted on) only
  after initialisation, so nothing connects to an instance that is not
  ready. --listen-early (LISTEN_EARLY=1) binds first and answers 503 until
  initialised, to reproduce services that open their port too soon.

  SIGTERM drains: stop accepting (an own socket is closed, so new connects
  are refused; an inherited one is only deregistered, because it is shared
  with the next instance), answer every further request with
  `Connection: close`, wait until no request is in flight and every
  connection has been closed by its client (nginx closes idle upstream
  keep-alive connections itself after its keepalive_timeout), then exit.
  Bounded by --drain-timeout-ms; what is still open then is closed.

  HttpServer cannot adopt an existing channel through its API, so the
  channel is installed into sun.net.httpserver.ServerImpl by reflection
  (fields schan, selector, listenerKey, bound, allConnections; JDK 17..25),
  which needs --add-opens jdk.httpserver/sun.net.httpserver=ALL-UNNAMED
  (the launcher passes it)."
  (:import (com.sun.net.httpserver HttpExchange HttpHandler HttpServer)
           (java.io File FileInputStream)
           (java.lang ProcessHandle)
           (java.lang.reflect Field)
           (java.net InetSocketAddress StandardSocketOptions)
           (java.nio.channels SelectionKey Selector ServerSocketChannel)
           (java.util Properties Set)
           (java.util.concurrent Executors ThreadFactory)
           (java.util.concurrent.atomic AtomicLong)))

(set! *warn-on-reflection* true)

(defn log [& parts]
  (locking *out*
    (println (apply str "jdk-service: " parts))
    (flush)))

(def pid (.pid (ProcessHandle/current)))

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

;; ------------------------------------------------------------- state

(def ^AtomicLong in-flight (AtomicLong. 0))
(def ready? (atom false))
(def draining? (atom false))
(def version (atom "dev"))

;; ------------------------------------------------------------- HTTP

(defn- query-param [^HttpExchange ex k]
  (some (fn [kv] (let [[a b] (.split ^String kv "=" 2)] (when (= a k) b)))
        (some-> (.getRawQuery (.getRequestURI ex)) (.split "&"))))

(defn- reply [^HttpExchange ex status ^String body]
  (let [bytes (.getBytes body "UTF-8")
        h (.getResponseHeaders ex)]
    (.set h "Content-Type" "text/plain; charset=utf-8")
    (.set h "X-Pid" (str pid))
    (when @draining?
      ;; nginx will not reuse this upstream connection; the JDK server
      ;; (17.0.x with JDK-8304065's fix and later) closes it after the reply.
      (.set h "Connection" "close"))
    (.sendResponseHeaders ex (int status) (long (alength bytes)))
    (with-open [out (.getResponseBody ex)]
      (.write out bytes))))

(defn- route [^HttpExchange ex]
  (let [path (.getPath (.getRequestURI ex))]
    (cond
      (not @ready?) (reply ex 503 "initialising\n")
      (= path "/health") (reply ex 200 "ok\n")
      (or (= path "/version") (= path "/")) (reply ex 200 (str "version=" @version "\n"))
      (= path "/slow") (let [ms (max 0 (parse-long* (query-param ex "ms") 1000))]
                         (Thread/sleep (long ms))
                         (reply ex 200 (str "slept " ms "\n")))
      :else (reply ex 404 "not found\n"))))

(def handler
  (reify HttpHandler
    (handle [_ ex]
      (.incrementAndGet in-flight)
      (try
        (.readAllBytes (.getRequestBody ex))   ; consume any body: keeps the connection reusable
        (route ex)
        (catch Throwable t
          (log "request failed: " t))
        (finally
          (.close ex)
          (.decrementAndGet in-flight))))))

;; ------------------------------------------------ adopting a channel

(defn- field ^Field [^Class c ^String n]
  (doto (.getDeclaredField c n) (.setAccessible true)))

(defn- impl-of
  "The sun.net.httpserver.ServerImpl behind an HttpServer."
  [^HttpServer server]
  (.get (field (class server) "server") server))

(defn- impl-field [impl n] (.get (field (class impl) n) impl))

(defn adopt!
  "Make the (not yet started, unbound) `server` accept on channel `ch`.
  Returns the listener's SelectionKey."
  ^SelectionKey [^HttpServer server ^ServerSocketChannel ch]
  (let [impl (impl-of server)
        c (class impl)
        ^ServerSocketChannel own (impl-field impl "schan")
        ^SelectionKey own-key (impl-field impl "listenerKey")
        ^Selector sel (impl-field impl "selector")]
    (.cancel own-key)
    (.close own)
    (.configureBlocking ch false)
    (let [k (.register ch sel SelectionKey/OP_ACCEPT)]
      (.set (field c "schan") impl ch)
      (.set (field c "listenerKey") impl k)
      (.setBoolean (field c "bound") impl true)
      k)))

(defn open-connections
  "Connections the server holds (accepted, idle keep-alive, busy)."
  [^HttpServer server]
  (.size ^Set (impl-field (impl-of server) "allConnections")))

(defn- wakeup! [^HttpServer server]
  (.wakeup ^Selector (impl-field (impl-of server) "selector")))

;; ------------------------------------------------------------- socket

(defn inherited-listener
  "The listening socket inherited on fd 0, or nil."
  ^ServerSocketChannel []
  (let [ch (System/inheritedChannel)]
    (when (instance? ServerSocketChannel ch) ch)))

(defn bind-listener ^ServerSocketChannel [port]
  (doto (ServerSocketChannel/open)
    (.setOption StandardSocketOptions/SO_REUSEADDR true)
    (.bind (InetSocketAddress. "127.0.0.1" (int port)) 1024)))

;; ------------------------------------------------------------- drain

(defn drain!
  "Stop accepting, then wait (at most `timeout-ms`) until no request is in
  flight and every connection is closed; then stop the server."
  [^HttpServer server ^SelectionKey key ^ServerSocketChannel ch inherited? timeout-ms]
  (let [t0 (System/nanoTime)
        elapsed #(quot (- (System/nanoTime) t0) 1000000)]
    (reset! draining? true)
    (.cancel key)
    ;; Our own socket is closed, so connects are refused at once. An
    ;; inherited socket is shared with the next instance: only stop
    ;; accepting on it. (Closing the JDK's inherited channel would also
    ;; dup2 /dev/null over fds 0, 1 and 2, silencing our output.)
    (when-not inherited? (.close ch))
    (wakeup! server)
    (log "draining: stopped accepting; " (.get in-flight) " requests in flight, "
         (open-connections server) " connections open")
    (loop [last-report (long 0)]
      (let [busy (.get in-flight)
            conns (open-connections server)
            ms (elapsed)]
        (cond
          (and (zero? busy) (zero? conns))
          (log "drained in " ms " ms")

          (>= ms timeout-ms)
          (log "drain timeout after " ms " ms: closing " conns " connections, "
               busy " requests in flight")

          :else
          (do (Thread/sleep 20)
              (recur (if (>= (- ms last-report) 1000)
                       (do (log "draining: " busy " in flight, " conns " connections open") (long ms))
                       last-report))))))
    (when inherited?
      ;; HttpServer.stop closes its channel; keep it off the inherited one
      ;; (see above) by handing it a fresh, unbound channel to close.
      (let [impl (impl-of server)]
        (.set (field (class impl) "schan") impl (ServerSocketChannel/open))))
    (.stop server 0)
    (log "stopped")))

;; ------------------------------------------------------------- main

(defn parse-args [args]
  (loop [opts {} [a b & more :as args] args]
    (cond
      (empty? args) opts
      (= a "--port") (recur (assoc opts :port b) more)
      (= a "--version-file") (recur (assoc opts :version-file b) more)
      (= a "--init-ms") (recur (assoc opts :init-ms b) more)
      (= a "--drain-timeout-ms") (recur (assoc opts :drain-timeout-ms b) more)
      (= a "--listen-early") (recur (assoc opts :listen-early true) (rest args))
      :else (do (binding [*out* *err*]
                  (println "usage: run [--port N] [--version-file PATH] [--init-ms N]"
                           "[--drain-timeout-ms N] [--listen-early]")
                  (println "unknown argument:" a))
                (System/exit 2)))))

(defn- daemon-threads []
  (reify ThreadFactory
    (newThread [_ r] (doto (Thread. ^Runnable r) (.setDaemon true)))))

(defn -main [& args]
  (let [opts (parse-args (remove nil? args))
        port (parse-long* (or (:port opts) (System/getenv "PORT")) 18081)
        version-file (or (:version-file opts) (System/getenv "VERSION_FILE"))
        init-ms (parse-long* (or (:init-ms opts) (System/getenv "INIT_MS")) 500)
        drain-ms (parse-long* (or (:drain-timeout-ms opts) (System/getenv "DRAIN_TIMEOUT_MS")) 25000)
        early? (or (:listen-early opts) (= "1" (System/getenv "LISTEN_EARLY")))
        inherited (inherited-listener)
        server (HttpServer/create)
        key (atom nil)
        ch (atom nil)
        listen! (fn []
                  (let [c (or inherited
                              (try (bind-listener port)
                                   (catch Exception e
                                     (log "cannot listen on 127.0.0.1:" port ": " e)
                                     (System/exit 1))))]
                    (reset! ch c)
                    (reset! key (adopt! server c))
                    (.start server)))]
    (log "starting pid=" pid (if inherited " socket=inherited" (str " port=" port)))
    (doto server
      (.createContext "/" handler)
      (.setExecutor (Executors/newCachedThreadPool (daemon-threads))))
    (.addShutdownHook (Runtime/getRuntime)
                      (Thread. ^Runnable
                               (fn []
                                 (if-let [k @key]
                                   (drain! server k @ch (some? inherited) drain-ms)
                                   (log "stopped before serving")))))
    (when early? (listen!))
    ;; "Initialisation": read the release's properties, warm up.
    (reset! version (read-version version-file))
    (Thread/sleep (long init-ms))
    (when-not early? (listen!))
    (reset! ready? true)
    (let [^ServerSocketChannel c @ch
          ^InetSocketAddress a (.getLocalAddress c)]
      (log "serving on 127.0.0.1:" (.getPort a) " version=" @version " pid=" pid
           (if inherited " (inherited socket)" "")))))
