/* flood: the new-connection flooder and the paced "good client" of `bench flood`.
 *
 * The harness compiles it at run time (`gcc -O2`), into its target directory; nothing here is
 * installed. C with epoll so that the load side, not this tool, is the cheapest part of a
 * connection: on a 2-core machine the flooder shares a core with the backend and is what limits
 * the rate.
 *
 *   flood -p PORT -d SECS -c INFLIGHT            keep INFLIGHT connections opening: connect, send a
 *                                                GET, wait for the first byte / EOF / RST, close
 *                                                with RST (no TIME_WAIT). Counts how each ended.
 *   flood -p PORT -d SECS -r RATE -b SRC_IP [-n N]
 *                                                paced client from SRC_IP: one new connection per
 *                                                1/RATE s, full GET, success and latency. With -n,
 *                                                from N addresses in turn, SRC_IP and the N - 1
 *                                                after it, each at RATE/N.
 *
 * Output: one line of key=value pairs (the paced client adds `latencies_ms=` with every
 * successful request's latency in the order sent, and `sent_at_s=` with when each was sent).
 * Only 127.0.0.0/8 targets; always stops after -d s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char GET[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
static struct sockaddr_in target, source;
static int bind_source;
/* The paced client's addresses: source's and the sources - 1 after it, in turn. */
static uint32_t first_source, sources = 1, next_source;

static double mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A non-blocking socket connecting to the target; RST on close. */
static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct linger rst = {1, 0};
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind_source) {
        source.sin_addr.s_addr = htonl(first_source + next_source++ % sources);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&source, sizeof source) != 0) goto fail;
    }
    if (connect(fd, (struct sockaddr *)&target, sizeof target) != 0 && errno != EINPROGRESS) goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Waits for `events` on fd until `deadline`; 1 when ready. */
static int wait_for(int fd, short events, double deadline) {
    struct pollfd p = {fd, events, 0};
    for (;;) {
        int left = (int)((deadline - mono()) * 1000.0);
        if (left <= 0) return 0;
        int n = poll(&p, 1, left);
        if (n > 0) return 1;
        if (n < 0 && errno != EINTR) return 0;
    }
}

static int paced(double secs, double rate, double timeout) {
    size_t cap = (size_t)(secs * rate) + 8, n = 0;
    double *lat = calloc(cap, sizeof *lat), *sorted = calloc(cap, sizeof *sorted);
    double *at = calloc(cap, sizeof *at);
    long sent = 0, ok = 0, bad_status = 0, reset = 0, timed_out = 0, failed = 0;
    char buf[8192];
    double start = mono(), next = start;
    while (mono() - start < secs && (size_t)sent < cap) {
        double now = mono();
        if (now < next) {
            usleep((useconds_t)((next - now) * 1e6));
            continue;
        }
        next += 1.0 / rate;
        sent++;
        double t0 = mono(), deadline = t0 + timeout;
        int fd = dial();
        if (fd < 0) { failed++; continue; }
        int err = 0;
        socklen_t len = sizeof err;
        if (!wait_for(fd, POLLOUT, deadline)) { timed_out++; close(fd); continue; }
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) { failed++; close(fd); continue; }
        if (send(fd, GET, sizeof GET - 1, MSG_NOSIGNAL) < 0) { reset++; close(fd); continue; }
        size_t got = 0;
        int status = 0, end = 0; /* 1 = EOF after a response, 2 = reset/EOF before, 3 = timeout */
        while (!end) {
            if (!wait_for(fd, POLLIN, deadline)) { end = 3; break; }
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0) {
                if (got == 0 && r >= 12) status = atoi(buf + 9);
                got += (size_t)r;
            } else if (r == 0 && got > 0) {
                end = 1;
            } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            } else {
                end = 2;
            }
        }
        close(fd);
        if (end == 1 && status == 200) {
            ok++;
            at[n] = t0 - start;
            lat[n++] = (mono() - t0) * 1000.0;
        }
        else if (end == 1) bad_status++;
        else if (end == 2) reset++;
        else timed_out++;
    }
    memcpy(sorted, lat, n * sizeof *lat);
    qsort(sorted, n, sizeof *sorted, by_value);
    double p50 = n ? sorted[n / 2] : -1, p99 = n ? sorted[(size_t)((double)(n - 1) * 0.99)] : -1;
    printf("sent=%ld ok=%ld bad_status=%ld reset=%ld timeout=%ld failed=%ld success_pct=%.2f "
           "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
           sent, ok, bad_status, reset, timed_out, failed, sent ? 100.0 * (double)ok / (double)sent : 0.0,
           p50, p99, n ? sorted[n - 1] : -1);
    /* Every successful request's latency, in the order sent, so the harness can pool several
     * runs (one run's p99 of some 200 requests is its third-slowest, too few to tell two
     * proxies apart), and when each was sent, so it can tell where in a run the tail sits. */
    printf("latencies_ms=");
    for (size_t i = 0; i < n; i++) printf(i ? ",%.3f" : "%.3f", lat[i]);
    printf("\nsent_at_s=");
    for (size_t i = 0; i < n; i++) printf(i ? ",%.3f" : "%.3f", at[i]);
    printf("\n");
    return 0;
}

struct slot { int fd; int sent; double since; };

static int flood(double secs, int inflight, double timeout) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct slot *s = calloc((size_t)inflight, sizeof *s);
    struct epoll_event ev[512];
    long opened = 0, served = 0, rejected = 0, timed_out = 0, failed = 0;
    char buf[4096];
    for (int i = 0; i < inflight; i++) s[i].fd = -1;
    double start = mono();
    while (mono() - start < secs) {
        double now = mono();
        for (int i = 0; i < inflight; i++) {
            if (s[i].fd >= 0 && now - s[i].since > timeout) {
                timed_out++;
                close(s[i].fd);
                s[i].fd = -1;
            }
            if (s[i].fd >= 0) continue;
            int fd = dial();
            if (fd < 0) { failed++; continue; }
            opened++;
            s[i] = (struct slot){fd, 0, now};
            struct epoll_event e = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
        }
        int n = epoll_wait(ep, ev, 512, 20);
        for (int k = 0; k < n; k++) {
            struct slot *c = &s[ev[k].data.u32];
            if (c->fd < 0) continue;
            int done = 0;
            uint32_t what = ev[k].events;
            if (!c->sent && (what & EPOLLOUT)) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err == ECONNRESET || err == EPIPE || err == ECONNREFUSED) { rejected++; done = 1; }
                else if (err != 0) { failed++; done = 1; }
                else if (send(c->fd, GET, sizeof GET - 1, MSG_NOSIGNAL) < 0) { rejected++; done = 1; }
                else {
                    c->sent = 1;
                    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = ev[k].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                }
            }
            if (!done && (what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r > 0) { served++; done = 1; }
                else if (r == 0 || (errno != EAGAIN && errno != EINTR)) { rejected++; done = 1; }
            }
            if (done) { close(c->fd); c->fd = -1; }
        }
    }
    double el = mono() - start;
    printf("secs=%.3f opened=%ld served=%ld rejected=%ld timeout=%ld failed=%ld rejected_per_s=%.0f "
           "served_per_s=%.0f\n",
           el, opened, served, rejected, timed_out, failed, (double)rejected / el, (double)served / el);
    return 0;
}

int main(int argc, char **argv) {
    const char *src = NULL;
    int port = 0, inflight = 256, o;
    double secs = 5, rate = 0, timeout = 2.0;
    while ((o = getopt(argc, argv, "p:d:c:r:b:t:n:")) != -1) {
        switch (o) {
        case 'p': port = atoi(optarg); break;
        case 'd': secs = atof(optarg); break;
        case 'c': inflight = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'b': src = optarg; break;
        case 't': timeout = atof(optarg); break;
        case 'n': sources = (uint32_t)atoi(optarg); break;
        default: fprintf(stderr, "usage: see the comment at the top of flood.c\n"); return 2;
        }
    }
    if (port <= 0 || port > 65535 || secs <= 0 || secs > 600 || inflight < 1 || inflight > 65536) {
        fprintf(stderr, "flood: need -p PORT, 0 < -d <= 600, 1 <= -c <= 65536\n");
        return 2;
    }
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    target.sin_addr.s_addr = htonl(0x7f000001);
    if (src) {
        source.sin_family = AF_INET;
        if (inet_pton(AF_INET, src, &source.sin_addr) != 1 || (ntohl(source.sin_addr.s_addr) >> 24) != 127) {
            fprintf(stderr, "flood: -b must be a 127.0.0.0/8 address\n");
            return 2;
        }
        first_source = ntohl(source.sin_addr.s_addr);
        if (sources < 1 || sources > 64 || ((first_source + sources - 1) >> 24) != 127) {
            fprintf(stderr, "flood: -n must be 1-64 and keep every address in 127.0.0.0/8\n");
            return 2;
        }
        bind_source = 1;
    }
    return rate > 0 ? paced(secs, rate, timeout) : flood(secs, inflight, timeout);
}
