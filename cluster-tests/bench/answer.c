/* answer: the HTTP phase's backend, answering every request `200` with a fixed body.
 *
 * The harness compiles it at run time (`gcc -O2`), like the flooder. It exists to be cheap:
 * wrk and the backend share the load core, and behind nginx that core filled up before either
 * proxy did (docs/benchmarks.md, "The HTTP phase's backend"). One recv and at most one send per
 * turn of a connection, nothing parsed but the blank line that ends a request head.
 *
 *   answer -p PORT -d SECS -b BODY     listen on 127.0.0.1:PORT for at most SECS seconds
 *
 * Requests must have no body (the proxies forward wrk's GETs): each "\r\n\r\n" is one request,
 * answered in order, pipelined or not. A connection whose answer does not fit its socket
 * buffer at once is closed rather than answered late, so a proxy sees an error, never a stall.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536
#define MAX_BODY 256

/* Per connection: how much of "\r\n\r\n" the bytes so far end with. */
static unsigned char matched[MAX_FD];

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int usage(void) {
    fprintf(stderr, "usage: answer -p PORT -d SECS -b BODY\n");
    return 2;
}

int main(int argc, char **argv) {
    int port = 0, secs = 0, opt;
    const char *body = NULL;
    while ((opt = getopt(argc, argv, "p:d:b:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'd': secs = atoi(optarg); break;
        case 'b': body = optarg; break;
        default: return usage();
        }
    }
    if (port <= 0 || port > 65535 || secs <= 0 || body == NULL || strlen(body) > MAX_BODY)
        return usage();

    char answer[512];
    int alen = snprintf(answer, sizeof answer,
                        "HTTP/1.1 200 OK\r\nServer: answer\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n%s",
                        strlen(body), body);

    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 4096) != 0) {
        perror("answer: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) != 0) {
        perror("answer: epoll");
        return 1;
    }

    static char in[65536];
    static char out[65536];
    static const char END[] = "\r\n\r\n";
    struct epoll_event evs[256];
    long answered = 0, closed_full = 0;
    double deadline = now_s() + secs;
    while (now_s() < deadline) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c;
                while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    if (c >= MAX_FD || epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) != 0) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    matched[c] = 0;
                }
                continue;
            }
            ssize_t r = recv(fd, in, sizeof in, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) {
                close(fd);
                continue;
            }
            int requests = 0;
            unsigned char m = matched[fd];
            for (ssize_t j = 0; j < r; j++) {
                if (in[j] == END[m]) {
                    if (++m == 4) {
                        requests++;
                        m = 0;
                    }
                } else {
                    m = in[j] == '\r';
                }
            }
            matched[fd] = m;
            size_t len = 0;
            for (int k = 0; k < requests; k++) {
                if (len + alen > sizeof out) {
                    /* More pipelined requests than one buffer holds: not a load this serves. */
                    len = 0;
                    break;
                }
                memcpy(out + len, answer, alen);
                len += alen;
            }
            if (requests > 0 && (len == 0 || send(fd, out, len, MSG_NOSIGNAL) != (ssize_t)len)) {
                closed_full++;
                close(fd);
                continue;
            }
            answered += requests;
        }
    }
    printf("answered=%ld closed_unanswered=%ld\n", answered, closed_full);
    return 0;
}
