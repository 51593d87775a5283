(ns baton.example.service
  "A small, real Clojure web service on Jetty 9, the kind baton supervises.

  Endpoints:
    GET /health       200 \"ok\"
    GET /             200 \"version=<version>\"  (from service.properties)
    GET /slow?ms=N    sleeps N ms, then 200 \"slept N\"  (for drain tests)

  Options (see ../run): --port N, --version-file PATH, --stop-timeout-ms N.
  Binds 127.0.0.1 only. On SIGTERM the JVM's shutdown hook stops Jetty
  gracefully: the connector closes, in-flight requests finish (up to the stop
  timeout), then the JVM exits (status 143)."
  (:import (java.io File FileInputStream)
           (java.lang ProcessHandle)
           (java.util Properties)
           (javax.servlet.http HttpServletRequest HttpServletResponse)
           (org.eclipse.jetty.server Server ServerConnector Request)
           (org.eclipse.jetty.server.handler AbstractHandler StatisticsHandler)
           (org.eclipse.jetty.util.component LifeCycle LifeCycle$Listener)))

(set! *warn-on-reflection* true)

(defn log [& parts]
  (locking *out*
    (println (apply str "baton-example: " parts))))

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
  (.write (.getWriter resp) body)
  (.setHandled base true))

(defn handler [version]
  (proxy [AbstractHandler] []
    (handle [^String target ^Request base ^HttpServletRequest req ^HttpServletResponse resp]
      (case target
        "/health" (reply base resp 200 "ok\n")
        "/"       (reply base resp 200 (str "version=" version "\n"))
        "/slow"   (let [ms (max 0 (parse-long* (.getParameter req "ms") 1000))]
                    (Thread/sleep (long ms))
                    (reply base resp 200 (str "slept " ms "\n")))
        (reply base resp 404 "not found\n")))))

(defn- lifecycle-logger []
  (reify LifeCycle$Listener
    (lifeCycleStarting [_ _])
    (lifeCycleStarted [_ _])
    (lifeCycleFailure [_ _ cause] (log "failure: " cause))
    (lifeCycleStopping [_ _] (log "stopping: closing connector, draining in-flight requests"))
    (lifeCycleStopped [_ _] (log "stopped"))))

(defn parse-args [args]
  (loop [opts {} [a b & more :as args] args]
    (cond
      (empty? args) opts
      (= a "--port") (recur (assoc opts :port b) more)
      (= a "--version-file") (recur (assoc opts :version-file b) more)
      (= a "--stop-timeout-ms") (recur (assoc opts :stop-timeout-ms b) more)
      :else (do (binding [*out* *err*]
                  (println "usage: service --port N [--version-file PATH] [--stop-timeout-ms N]")
                  (println "unknown argument:" a))
                (System/exit 2)))))

(defn -main [& args]
  (let [opts (parse-args args)
        port (parse-long* (or (:port opts) (System/getenv "PORT")) 18080)
        version-file (or (:version-file opts) (System/getenv "VERSION_FILE"))
        version (read-version version-file)
        stop-ms (parse-long* (or (:stop-timeout-ms opts) (System/getenv "STOP_TIMEOUT_MS")) 25000)
        server (Server.)
        connector (doto (ServerConnector. server)
                    (.setHost "127.0.0.1")
                    (.setPort (int port)))
        ;; StatisticsHandler makes Jetty's stop graceful: it waits for
        ;; in-flight requests before the server shuts down.
        stats (doto (StatisticsHandler.) (.setHandler (handler version)))]
    (doto server
      (.addConnector connector)
      (.setHandler stats)
      (.setStopTimeout (long stop-ms))
      (.setStopAtShutdown true)
      (.addLifeCycleListener (lifecycle-logger)))
    (log "starting version=" version " port=" port " pid=" (.pid (ProcessHandle/current)))
    (try
      (.start server)
      (catch Exception e
        (log "failed to start: " e)
        (System/exit 1)))
    (log "serving on 127.0.0.1:" (.getLocalPort connector) " version=" version)
    (.join server)))
