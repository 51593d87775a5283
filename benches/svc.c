/* benches/svc.c — the test service every supervisor runs in benches/run.
 *
 * Small and static so that its own cost is negligible next to the
 * supervisor's. Every timestamp is CLOCK_REALTIME in nanoseconds, appended as
 * one "EVENT NS PID" line (a single write) to the file given by -s, so that
 * stamps from successive instances and from the bench script compare.
 *
 *   svc [-s STAMPFILE] [-r KIND] [-d DELAY_MS] [-l LIFE_MS] [-i]
 *       [-w BYTES [-L LINE_LEN] [-o FILE]] [-t TAG]
 *     -r KIND     become ready DELAY_MS after main(), then stamp "ready":
 *                   notify    sendto($NOTIFY_SOCKET, "READY=1") (sd_notify;
 *                             start-stop-daemon --notify-await uses it too)
 *                   fd:N      write "\n" to descriptor N and close it (s6's
 *                             notification-fd)
 *                   log       print the line "ready" on stdout
 *                   tcp:PORT  listen on 127.0.0.1:PORT (accept and close)
 *                   http:PORT listen on 127.0.0.1:PORT, answer every request
 *                             "200 OK" (GET /health)
 *     -l LIFE_MS  stamp "exit" and exit(1) LIFE_MS after main()
 *     -i          ignore SIGTERM; without -i and with -s, SIGTERM stamps "term"
 *                 (the moment the signal arrives) and then kills the
 *                 service as the default action would
 *     -w BYTES    write BYTES (rounded down to whole lines) of numbered lines
 *                 of LINE_LEN bytes (default 100) to stdout, or to FILE with
 *                 -o, as fast as possible; stamp "done" and exit 0
 *     -t TAG      ignored: lets the bench find processes by command line
 *   Without -l or -w the service runs until signalled.
 *
 *   svc now                           print CLOCK_REALTIME ns
 *   svc reaper CMD...                 run CMD as a child subreaper that reaps
 *                                     orphans at once, as init does on a real
 *                                     host; exit with CMD's status
 *   svc connect PORT                  exit 0 if 127.0.0.1:PORT accepts a
 *                                     connection (runit's ./check)
 *   svc coldpages PAGES IDLE_MS       touch PAGES pages of memory, then touch
 *                                     them again at once and after IDLE_MS of
 *                                     sleep, three times each; print the median
 *                                     microseconds per page of both, "HOT COLD"
 *                                     (what the machine charges a process for
 *                                     memory it left alone for a while)
 *   svc waitlog BYTES TIMEOUT_MS DIR  poll DIR every 1 ms until the files
 *                                     named current, @*, stdout.log* or
 *                                     self.log hold BYTES bytes in total;
 *                                     print CLOCK_REALTIME ns of that moment
 *                                     (exit 1 on timeout)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *stampfile;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void stamp_at(const char *event, long long ns) {
    if (!stampfile) return;
    char buf[96];
    int n = snprintf(buf, sizeof buf, "%s %lld %d\n", event, ns, (int)getpid());
    int fd = open(stampfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (write(fd, buf, (size_t)n) < 0) { /* nothing to do */ }
    close(fd);
}

static void die(const char *what) {
    fprintf(stderr, "svc: %s: %s\n", what, strerror(errno));
    exit(111);
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

static void sleep_ms(long long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

/* Numbered lines: "NNNNNNNNNNNN xxxx...x\n", the counter kept in ASCII. */
#define DIGITS 12
static void write_lines(int fd, unsigned long long bytes, int len) {
    if (len < DIGITS + 2) len = DIGITS + 2;
    size_t per = (1 << 16) / (size_t)len;
    if (per == 0) per = 1;
    char *buf = malloc(per * (size_t)len);
    if (!buf) die("malloc");
    for (size_t i = 0; i < per; i++) {
        char *l = buf + i * (size_t)len;
        memset(l, '0', DIGITS);
        l[DIGITS] = ' ';
        memset(l + DIGITS + 1, 'x', (size_t)len - DIGITS - 2);
        l[len - 1] = '\n';
    }
    char counter[DIGITS];
    memset(counter, '0', DIGITS);
    unsigned long long lines = bytes / (unsigned long long)len;
    while (lines) {
        size_t n = lines < per ? (size_t)lines : per;
        for (size_t i = 0; i < n; i++) {
            int d = DIGITS - 1; /* increment: the first line is number 1 */
            while (d >= 0 && counter[d] == '9') counter[d--] = '0';
            if (d >= 0) counter[d]++;
            memcpy(buf + i * (size_t)len, counter, DIGITS);
        }
        write_all(fd, buf, n * (size_t)len);
        lines -= n;
    }
    free(buf);
}

static int listen_on(int port) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(s, 128) < 0) die("listen");
    return s;
}

static void sd_notify_ready(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) {
        errno = ENOENT;
        die("NOTIFY_SOCKET is not set");
    }
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof a.sun_path) {
        errno = ENAMETOOLONG;
        die("NOTIFY_SOCKET");
    }
    memcpy(a.sun_path, path, n);
    if (path[0] == '@') a.sun_path[0] = 0; /* abstract */
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
    long long t = now_ns();
    if (sendto(s, "READY=1", 7, 0, (struct sockaddr *)&a, alen) < 0) die("sendto NOTIFY_SOCKET");
    stamp_at("ready", t);
    close(s);
}

static void answer_http(int c) {
    char req[2048];
    size_t got = 0;
    struct pollfd p = {c, POLLIN, 0};
    while (got < sizeof req - 1 && poll(&p, 1, 1000) > 0) {
        ssize_t r = read(c, req + got, sizeof req - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n")) break;
    }
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 3\r\nConnection: close\r\n\r\nok\n";
    static const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                             "Connection: close\r\n\r\n";
    if (strncmp(req, "GET /health", 11) == 0) {
        if (write(c, ok, sizeof ok - 1) < 0) { /* peer went away */ }
    } else if (write(c, nf, sizeof nf - 1) < 0) { /* peer went away */ }
}

/* SIGTERM with -s: stamp "term", then die of the signal as if unhandled. Only
 * async-signal-safe calls (no stdio): the digits are formatted by hand. */
static void on_term(int sig) {
    long long t = now_ns();
    char buf[64], digits[24];
    int n = 0, d = 0;
    memcpy(buf, "term ", 5);
    n = 5;
    do { digits[d++] = (char)('0' + t % 10); t /= 10; } while (t);
    while (d) buf[n++] = digits[--d];
    buf[n++] = '\n';
    int fd = open(stampfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, buf, (size_t)n) < 0) { /* nothing to do */ }
        close(fd);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static pid_t reaper_child;
static void forward(int sig) { if (reaper_child > 0) kill(reaper_child, sig); }

static int cmd_reaper(char **argv) {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) die("PR_SET_CHILD_SUBREAPER");
    signal(SIGINT, SIG_IGN); /* the terminal sends it to the child too */
    signal(SIGTERM, forward);
    signal(SIGHUP, forward);
    reaper_child = fork();
    if (reaper_child < 0) die("fork");
    if (reaper_child == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execvp(argv[0], argv);
        die(argv[0]);
    }
    for (;;) {
        int st;
        pid_t p = wait(&st);
        if (p < 0 && errno == EINTR) continue;
        if (p < 0) return 111;
        if (p == reaper_child) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
}

static int cmd_waitlog(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: svc waitlog BYTES TIMEOUT_MS DIR\n");
        return 2;
    }
    unsigned long long want = strtoull(argv[2], 0, 10);
    long long deadline = mono_ms() + atoll(argv[3]);
    for (;;) {
        unsigned long long total = 0;
        DIR *d = opendir(argv[4]);
        if (!d) die(argv[4]);
        int dfd = dirfd(d);
        struct dirent *e;
        while ((e = readdir(d))) {
            const char *n = e->d_name;
            if (!(strcmp(n, "current") == 0 || n[0] == '@' || strncmp(n, "stdout.log", 10) == 0 ||
                  strcmp(n, "self.log") == 0))
                continue;
            struct stat st;
            if (fstatat(dfd, n, &st, 0) == 0) total += (unsigned long long)st.st_size;
        }
        closedir(d);
        if (total >= want) {
            printf("%lld\n", now_ns());
            return total == want ? 0 : 3;
        }
        if (mono_ms() > deadline) {
            fprintf(stderr, "svc waitlog: %llu of %llu bytes after timeout\n", total, want);
            return 1;
        }
        sleep_ms(1);
    }
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* The same pages touched again: at once, then after IDLE_MS asleep. */
static int cmd_coldpages(char **argv) {
    long pages = atol(argv[2]), idle = atol(argv[3]);
    if (pages <= 0 || idle < 0) return 2;
    size_t size = (size_t)pages * 4096;
    volatile char *p = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    madvise((void *)p, size, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < size; i += 4096) p[i] = 1;
    long long hot[3], cold[3];
    for (int r = 0; r < 3; r++) {
        long long t0 = now_ns();
        for (size_t i = 0; i < size; i += 4096) p[i]++;
        hot[r] = now_ns() - t0;
        sleep_ms(idle);
        t0 = now_ns();
        for (size_t i = 0; i < size; i += 4096) p[i]++;
        cold[r] = now_ns() - t0;
    }
    qsort(hot, 3, sizeof hot[0], cmp_ll);
    qsort(cold, 3, sizeof cold[0], cmp_ll);
    printf("%.2f %.2f\n", hot[1] / 1e3 / pages, cold[1] / 1e3 / pages);
    return 0;
}

int main(int argc, char **argv) {
    long long t_main = now_ns();
    long long m_main = mono_ms();
    if (argc > 1 && strcmp(argv[1], "now") == 0) {
        printf("%lld\n", t_main);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "waitlog") == 0) return cmd_waitlog(argc, argv);
    if (argc == 4 && strcmp(argv[1], "coldpages") == 0) return cmd_coldpages(argv);
    if (argc > 2 && strcmp(argv[1], "reaper") == 0) return cmd_reaper(argv + 2);
    if (argc == 3 && strcmp(argv[1], "connect") == 0) { /* a check script: is PORT open? */
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return connect(s, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : 1;
    }

    const char *ready = "none", *out = 0;
    long long delay = 0, life = -1;
    unsigned long long bytes = 0;
    int ignore_term = 0, write_mode = 0, linelen = 100, opt;
    while ((opt = getopt(argc, argv, "s:r:d:l:iw:L:o:t:")) != -1) {
        switch (opt) {
        case 's': stampfile = optarg; break;
        case 'r': ready = optarg; break;
        case 'd': delay = atoll(optarg); break;
        case 'l': life = atoll(optarg); break;
        case 'i': ignore_term = 1; break;
        case 'w': bytes = strtoull(optarg, 0, 10); write_mode = 1; break;
        case 'L': linelen = atoi(optarg); break;
        case 'o': out = optarg; break;
        case 't': break;
        default: return 2;
        }
    }
    stamp_at("main", t_main);
    if (ignore_term) signal(SIGTERM, SIG_IGN);
    else if (stampfile) signal(SIGTERM, on_term);

    if (write_mode) {
        int fd = 1;
        if (out) {
            fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0) die(out);
        }
        write_lines(fd, bytes, linelen);
        if (out) close(fd);
        stamp_at("done", now_ns());
        return 0;
    }

    int lfd = -1, http = 0;
    if (strcmp(ready, "none") != 0) {
        if (delay > 0) sleep_ms(delay - (mono_ms() - m_main));
        if (strcmp(ready, "notify") == 0) {
            sd_notify_ready();
        } else if (strncmp(ready, "fd:", 3) == 0) {
            int fd = atoi(ready + 3);
            long long t = now_ns();
            if (write(fd, "\n", 1) != 1) die("write notification fd");
            stamp_at("ready", t);
            close(fd);
        } else if (strcmp(ready, "log") == 0) {
            long long t = now_ns();
            write_all(1, "ready\n", 6);
            stamp_at("ready", t);
        } else if (strncmp(ready, "tcp:", 4) == 0 || strncmp(ready, "http:", 5) == 0) {
            http = ready[0] == 'h';
            lfd = listen_on(atoi(strchr(ready, ':') + 1));
            stamp_at("ready", now_ns());
        } else {
            fprintf(stderr, "svc: unknown readiness kind %s\n", ready);
            return 2;
        }
    }

    for (;;) {
        int timeout = -1;
        if (life >= 0) {
            long long left = life - (mono_ms() - m_main);
            if (left <= 0) {
                stamp_at("exit", now_ns());
                return 1;
            }
            timeout = (int)left;
        }
        if (lfd >= 0) {
            struct pollfd p = {lfd, POLLIN, 0};
            if (poll(&p, 1, timeout) > 0) {
                int c = accept4(lfd, 0, 0, SOCK_CLOEXEC);
                if (c >= 0) {
                    if (http) answer_http(c);
                    close(c);
                }
            }
        } else if (timeout >= 0) {
            sleep_ms(timeout);
        } else {
            pause();
        }
    }
}
