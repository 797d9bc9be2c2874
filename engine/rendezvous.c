/* rendezvous.c - node 0 hands each other node its launch line over TCP.
 * Protocol: the client sends its node rank as a decimal line; the server
 * answers with that node's line and closes. Plain blocking sockets with
 * poll() timeouts; errors name the address and what failed. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "internal.h"

/* reads until '\n' or EOF, at most cap-1 bytes; -1 on timeout/error */
static int read_line(int fd, char *buf, int cap, double deadline) {
    int n = 0;
    while (n < cap - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        int left = (int)((deadline - fsdp_now_s()) * 1000);
        if (left <= 0 || poll(&p, 1, left) <= 0) return -1;
        ssize_t got = read(fd, buf + n, 1);
        if (got <= 0) break;
        if (buf[n] == '\n') break;
        n++;
    }
    buf[n] = 0;
    return n;
}

static int write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

int fsdp_tcp_listen(int port, int backlog) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    sa.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int fsdp_rendezvous_serve(int port, const char *const *lines, int n_lines, double timeout_s) {
    int fd = fsdp_tcp_listen(port, 64);
    if (fd < 0) return fsdp_error(FSDP_ERR_IO, "rendezvous: cannot listen on port %d: %s", port, strerror(errno));
    double deadline = fsdp_now_s() + timeout_s;
    int served = 0;
    char *done = calloc((size_t)n_lines, 1);
    while (served < n_lines - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        int left = (int)((deadline - fsdp_now_s()) * 1000);
        if (left <= 0 || poll(&p, 1, left) <= 0) {
            close(fd);
            free(done);
            return fsdp_error(FSDP_ERR_COMM, "rendezvous: port %d: only %d of %d nodes joined within %.0f s",
                              port, served + 1, n_lines, timeout_s);
        }
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        char buf[32];
        int k = read_line(c, buf, sizeof buf, fsdp_now_s() + 10) < 0 ? -1 : atoi(buf);
        if (k >= 1 && k < n_lines && !done[k]) {
            write_all(c, lines[k], strlen(lines[k]));
            write_all(c, "\n", 1);
            done[k] = 1;
            served++;
        } else {
            write_all(c, "ERROR bad or repeated node rank\n", 32);
        }
        close(c);
    }
    close(fd);
    free(done);
    return FSDP_OK;
}

int fsdp_rendezvous_fetch(const char *addr, int port, int node_rank, char *buf, int64_t cap, double timeout_s) {
    double deadline = fsdp_now_s() + timeout_s;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    for (;;) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(addr, service, &hints, &res);
        if (rc != 0)
            return fsdp_error(FSDP_ERR_COMM, "rendezvous: cannot resolve %s: %s", addr, gai_strerror(rc));
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
            freeaddrinfo(res);
            char msg[32];
            int n = snprintf(msg, sizeof msg, "%d\n", node_rank);
            if (write_all(fd, msg, (size_t)n) == 0 && read_line(fd, buf, (int)cap, deadline) > 0) {
                close(fd);
                if (strncmp(buf, "ERROR", 5) == 0)
                    return fsdp_error(FSDP_ERR_COMM, "rendezvous: %s:%d refused node rank %d: %s", addr, port,
                                      node_rank, buf);
                return FSDP_OK;
            }
            close(fd);
            return fsdp_error(FSDP_ERR_COMM, "rendezvous: %s:%d answered node rank %d with nothing", addr, port, node_rank);
        }
        if (fd >= 0) close(fd);
        freeaddrinfo(res);
        if (fsdp_now_s() > deadline)
            return fsdp_error(FSDP_ERR_COMM, "rendezvous: node rank %d could not reach %s:%d within %.0f s", node_rank,
                              addr, port, timeout_s);
        usleep(200000);
    }
}
