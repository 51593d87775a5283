/* benches/wake-kernel.c — what the kernel's side of a wake costs: ppoll(2) on N
 * descriptors against epoll_wait(2) on the same N, registered once.
 *
 * The supervisor sleeps in ppoll on the descriptors of src/supervisor/poll.rs (for one
 * idle service: the signalfd, the control socket, the service's two pipes, the cgroup's
 * cgroup.events; with notify, the notify socket; while `start` waits, its connection).
 * When one becomes ready, ppoll's return re-polls every file of the set and takes its
 * entry off every file's wait queue before user space runs; epoll_wait touches the ready
 * item only. On this VM every distinct page touched after an idle wait is paid for
 * (HELPERS.md), kernel objects included. This measures whether that difference shows.
 *
 * One receiver process per (mechanism, N, wake kind), each with its own descriptors (an
 * fd registered in an epoll set would make every wake of that file run epoll's callback,
 * so ppoll and epoll must not share files). The set, in this order, cut at N:
 *   signalfd (SIGCHLD), listening unix stream socket, bound unix datagram socket,
 *   connected unix stream socket, pipe, pipe, cgroup.events (POLLPRI; an inotify fd
 *   where no cgroup v2 directory can be made), pidfd of a child, inotify fd, then pipes.
 * N=1 is the woken socket alone (the floor).
 * The parent sleeps IDLE ms, takes CLOCK_MONOTONIC, then sends one datagram (`dgram`)
 * or connects (`connect`) to one receiver; the receiver takes the clock as its wait
 * returns. The latency is that difference; the receivers are visited in turn, the
 * order rotated each round, so noise from others' builds falls on every variant.
 *
 *   gcc -O2 -o /tmp/wake-kernel benches/wake-kernel.c
 *   /tmp/wake-kernel [-r ROUNDS] [-i IDLE_MS] [-n N,N,...] [-k dgram|connect|both] [-x COPIES] [-p]
 *     -x  COPIES receivers per variant (each its own process and memory: the cost of a
 *         cold wake differs from one process to another)
 *     -p  print the receivers' PIDs and wait for Enter before the rounds (to attach
 *         `perf stat -p`, strace, or ftrace to them)
 * Prints, per variant, median, quartiles, min and max in microseconds.
 * Needs Linux >= 5.3 (pidfd_open); as root it makes (and removes) one cgroup per
 * receiver under /sys/fs/cgroup/unified or /sys/fs/cgroup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXN 64
#define MAXV 32
#define MAXR 1000

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

struct variant {
    int epoll;     /* 0: ppoll, 1: epoll_wait */
    int n;         /* descriptors waited on */
    int kind;      /* 0: datagram, 1: connect */
    pid_t pid;     /* receiver */
    int result;    /* read end of the receiver's results */
    char dir[128]; /* its sockets live here */
    char cg[128];  /* its cgroup, if made */
    int64_t lat[MAXR];
    int nlat;
};

static char base[64];

static int make_cgroup_events(struct variant *v) {
    const char *roots[] = {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"};
    for (int i = 0; i < 2; i++) {
        char p[256];
        snprintf(v->cg, sizeof v->cg, "%s/wake-kernel.%d", roots[i], (int)getpid());
        if (mkdir(v->cg, 0755) != 0)
            continue;
        snprintf(p, sizeof p, "%s/cgroup.events", v->cg);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        char buf[256];
        /* Read once, as baton does: until then kernfs reports POLLPRI. */
        if (fd >= 0 && read(fd, buf, sizeof buf) >= 0)
            return fd;
        rmdir(v->cg);
    }
    v->cg[0] = 0;
    return -1;
}

static void receive(struct variant *v, int report) {
    int fds[MAXN], events[MAXN], n = 0;
    int listener = -1, dgram = -1, pipes[2];
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    /* A child holding the pipes' write ends, whose pidfd is polled. */
    int pw[MAXN], npw = 0;
    int want = v->n < 2 ? 0 : v->n;
    int npipes = want > 9 ? 2 + (want - 9) : 2;
    for (int i = 0; i < npipes; i++) {
        if (pipe2(pipes, O_CLOEXEC) != 0)
            die("pipe");
        pw[npw++] = pipes[1];
        fds[MAXN - 1 - i] = pipes[0];
    }
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;)
            pause();
    }
    for (int i = 0; i < npw; i++)
        close(pw[i]);

    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(a.sun_path, sizeof a.sun_path, "%s/sock", v->dir);
    if (bind(listener, (void *)&a, sizeof a) != 0 || listen(listener, 16) != 0)
        die("listen");
    dgram = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    snprintf(a.sun_path, sizeof a.sun_path, "%s/dgram", v->dir);
    if (bind(dgram, (void *)&a, sizeof a) != 0)
        die("bind");
    int woken = v->kind ? listener : dgram;

    if (v->n == 1) {
        fds[n] = woken;
        events[n++] = POLLIN;
    } else {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
            die("socketpair");
        int sfd = signalfd(-1, &set, SFD_CLOEXEC);
        int cg = make_cgroup_events(v);
        int ino = inotify_init1(IN_CLOEXEC);
        if (ino < 0 || inotify_add_watch(ino, v->dir, IN_ATTRIB) < 0)
            die("inotify");
        int pidfd = syscall(SYS_pidfd_open, child, 0);
        if (sfd < 0 || pidfd < 0)
            die("signalfd/pidfd");
        int all[9] = {sfd, listener, dgram, sp[0], fds[MAXN - 1], fds[MAXN - 2],
                      cg >= 0 ? cg : inotify_init1(IN_CLOEXEC), pidfd, ino};
        int ev[9] = {POLLIN, POLLIN, POLLIN, POLLIN, POLLIN, POLLIN,
                     cg >= 0 ? POLLPRI : POLLIN, POLLIN, POLLIN};
        for (int i = 0; i < 9 && n < v->n; i++) {
            fds[n] = all[i];
            events[n++] = ev[i];
        }
        for (int i = 2; n < v->n; i++) {
            fds[n] = fds[MAXN - 1 - i];
            events[n++] = POLLIN;
        }
    }

    struct pollfd pfd[MAXN];
    for (int i = 0; i < n; i++)
        pfd[i] = (struct pollfd){.fd = fds[i], .events = events[i]};
    int ep = -1;
    if (v->epoll) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        for (int i = 0; i < n; i++) {
            struct epoll_event e = {.events = (uint32_t)events[i], .data.u32 = i};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e) != 0)
                die("epoll_ctl");
        }
    }
    if (write(report, &(int64_t){0}, 8) != 8) /* set up */
        die("report");

    for (;;) {
        int got;
        if (v->epoll) {
            struct epoll_event out[MAXN];
            got = epoll_pwait(ep, out, MAXN, -1, NULL);
        } else {
            got = ppoll(pfd, n, NULL, NULL);
        }
        int64_t t1 = now_ns();
        if (got < 0) {
            if (errno == EINTR)
                continue;
            die("wait");
        }
        if (got != 1 || (!v->epoll && !(pfd[v->n == 1 ? 0 : 1 + !v->kind].revents & POLLIN))) {
            for (int i = 0; i < n; i++)
                if (pfd[i].revents)
                    fprintf(stderr, "unexpected: descriptor %d of the set ready (%#x)\n", i,
                            pfd[i].revents);
            fprintf(stderr, "unexpected wake (%d ready)\n", got);
            exit(1);
        }
        int64_t t0 = 0;
        if (v->kind) {
            int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0 || read(c, &t0, 8) != 8)
                die("accept/read");
            close(c);
        } else if (recv(dgram, &t0, 8, 0) != 8) {
            die("recv");
        }
        int64_t lat = t1 - t0;
        if (write(report, &lat, 8) != 8)
            exit(0);
    }
}

static int cmp(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int rounds = 20, idle_ms = 1600, kinds = 3, pause_for_pids = 0, copies = 1;
    int ns[8] = {1, 7}, nns = 2;
    int o;
    while ((o = getopt(argc, argv, "r:i:n:k:x:p")) != -1) {
        switch (o) {
        case 'r': rounds = atoi(optarg); break;
        case 'i': idle_ms = atoi(optarg); break;
        case 'n': {
            nns = 0;
            for (char *s = strtok(optarg, ","); s && nns < 8; s = strtok(NULL, ","))
                ns[nns++] = atoi(s);
            break;
        }
        case 'k': kinds = !strcmp(optarg, "dgram") ? 1 : !strcmp(optarg, "connect") ? 2 : 3; break;
        case 'p': pause_for_pids = 1; break;
        case 'x': copies = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-r ROUNDS] [-i IDLE_MS] [-n N,...] [-k dgram|connect|both] [-x COPIES] [-p]\n", argv[0]);
            return 2;
        }
    }
    if (rounds > MAXR)
        rounds = MAXR;
    snprintf(base, sizeof base, "/tmp/wake-kernel.%d", (int)getpid());
    if (mkdir(base, 0700) != 0)
        die("mkdir");

    static struct variant v[MAXV];
    int nv = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < nns; i++)
            for (int e = 0; e < 2 * copies; e++) {
                if (!(kinds & (1 << k)) || ns[i] < 1 || ns[i] > MAXN - 8 || nv == MAXV)
                    continue;
                struct variant *x = &v[nv];
                *x = (struct variant){.epoll = e % 2, .n = ns[i], .kind = k};
                snprintf(x->dir, sizeof x->dir, "%s/%d", base, nv);
                mkdir(x->dir, 0700);
                int r[2];
                if (pipe2(r, O_CLOEXEC) != 0)
                    die("pipe");
                x->pid = fork();
                if (x->pid == 0) {
                    close(r[0]);
                    receive(x, r[1]);
                    _exit(0);
                }
                close(r[1]);
                x->result = r[0];
                int64_t ok;
                if (read(x->result, &ok, 8) != 8) {
                    fprintf(stderr, "receiver %d failed to start\n", nv);
                    return 1;
                }
                nv++;
            }
    if (pause_for_pids) {
        for (int i = 0; i < nv; i++)
            printf("%s N=%d %s: pid %d\n", v[i].epoll ? "epoll" : "ppoll", v[i].n,
                   v[i].kind ? "connect" : "dgram", (int)v[i].pid);
        printf("Enter to start\n");
        fflush(stdout);
        getchar();
    }

    int dg = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct timespec idle = {idle_ms / 1000, (idle_ms % 1000) * 1000000L};
    for (int r = 0; r < rounds; r++) {
        for (int j = 0; j < nv; j++) {
            struct variant *x = &v[(j + r) % nv];
            struct sockaddr_un a = {.sun_family = AF_UNIX};
            snprintf(a.sun_path, sizeof a.sun_path, "%s/%s", x->dir, x->kind ? "sock" : "dgram");
            int c = x->kind ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
            nanosleep(&idle, NULL);
            int64_t t0 = now_ns();
            if (x->kind) {
                if (connect(c, (void *)&a, sizeof a) != 0 || write(c, &t0, 8) != 8)
                    die("connect");
                close(c);
            } else if (sendto(dg, &t0, 8, 0, (void *)&a, sizeof a) != 8) {
                die("sendto");
            }
            int64_t lat;
            if (read(x->result, &lat, 8) != 8)
                die("result");
            x->lat[x->nlat++] = lat;
        }
    }

    printf("%-6s %-8s %3s %8s %8s %8s %8s %8s   (us, %d rounds, %d ms idle)\n", "wake", "wait",
           "N", "median", "q1", "q3", "min", "max", rounds, idle_ms);
    for (int i = 0; i < nv; i++) {
        struct variant *x = &v[i];
        qsort(x->lat, x->nlat, 8, cmp);
        int m = x->nlat;
        printf("%-6s %-5s%-3s %3d %8.1f %8.1f %8.1f %8.1f %8.1f\n", x->kind ? "conn" : "dgram",
               x->epoll ? "epoll" : "ppoll", copies > 1 ? (const char[]){'#', (char)('0' + i / 2 % copies), 0} : "", x->n, x->lat[m / 2] / 1e3, x->lat[m / 4] / 1e3,
               x->lat[3 * m / 4] / 1e3, x->lat[0] / 1e3, x->lat[m - 1] / 1e3);
        printf("       raw:");
        for (int k = 0; k < m; k++)
            printf(" %.0f", x->lat[k] / 1e3);
        printf("\n");
    }
    for (int i = 0; i < nv; i++) {
        kill(v[i].pid, SIGKILL);
        waitpid(v[i].pid, NULL, 0);
    }
    /* Their sleeping children die with them (PR_SET_PDEATHSIG); their cgroups and sockets. */
    for (int i = 0; i < nv; i++) {
        char p[256];
        snprintf(p, sizeof p, "/sys/fs/cgroup/unified/wake-kernel.%d", (int)v[i].pid);
        rmdir(p);
        snprintf(p, sizeof p, "/sys/fs/cgroup/wake-kernel.%d", (int)v[i].pid);
        rmdir(p);
        snprintf(p, sizeof p, "%s/dgram", v[i].dir);
        unlink(p);
        snprintf(p, sizeof p, "%s/sock", v[i].dir);
        unlink(p);
        rmdir(v[i].dir);
    }
    rmdir(base);
    return 0;
}
