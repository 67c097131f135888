/* The fan-out floor: the least any proxy that runs every statement on two servers can cost.
 *
 * One thread, one epoll set, no parsing: a client's bytes go to the truth and to the
 * target, the truth's bytes go back to the client, the target's bytes are read and dropped.
 * bench/relay.py logs every connection in (start-up and SCRAM are Python's) and then hands
 * the three sockets to relay_add; relay_serve runs the loop until relay_stop.
 *
 * It compares nothing, times nothing, and writes with blocking sends: a floor for pgbench's
 * small select-only messages, not a proxy anyone should run.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum side { CLIENT = 0, TRUTH = 1, TARGET = 2 };

struct relay_conn {
    int fd[3];
    int closed;
    struct relay_conn *next_closed;
};

static volatile int stopping;

static uint64_t tag(struct relay_conn *conn, enum side side) {
    return (uint64_t)(uintptr_t)conn | (uint64_t)side; /* malloc aligns to 8: low bits free */
}

static int send_all(int fd, const char *buf, ssize_t len) {
    while (len > 0) {
        ssize_t sent = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += sent;
        len -= sent;
    }
    return 0;
}

int relay_add(int epfd, int client, int truth, int target) {
    struct relay_conn *conn = calloc(1, sizeof *conn);
    if (conn == NULL)
        return -1;
    conn->fd[CLIENT] = client;
    conn->fd[TRUTH] = truth;
    conn->fd[TARGET] = target;
    for (int side = CLIENT; side <= TARGET; side++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag(conn, side)};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, conn->fd[side], &ev) < 0)
            return -1;
    }
    return 0;
}

void relay_stop(void) { stopping = 1; }

/* Closing a connection frees it only after the batch of events that may still name it. */
static void close_conn(struct relay_conn *conn, struct relay_conn **closed) {
    if (conn->closed)
        return;
    conn->closed = 1;
    for (int side = CLIENT; side <= TARGET; side++)
        close(conn->fd[side]); /* close also takes the fd out of the epoll set */
    conn->next_closed = *closed;
    *closed = conn;
}

int relay_serve(int epfd) {
    static char buf[65536];
    struct epoll_event events[64];
    while (!stopping) {
        int n = epoll_wait(epfd, events, 64, 200);
        if (n < 0 && errno != EINTR)
            return -1;
        struct relay_conn *closed = NULL;
        for (int i = 0; i < n; i++) {
            struct relay_conn *conn = (struct relay_conn *)(uintptr_t)(events[i].data.u64 & ~7ULL);
            enum side side = (enum side)(events[i].data.u64 & 7);
            if (conn->closed)
                continue;
            ssize_t got = recv(conn->fd[side], buf, sizeof buf, 0);
            if (got <= 0) {
                if (got < 0 && (errno == EINTR || errno == EAGAIN))
                    continue;
                close_conn(conn, &closed);
                continue;
            }
            int failed = 0;
            if (side == CLIENT)
                failed = send_all(conn->fd[TRUTH], buf, got) || send_all(conn->fd[TARGET], buf, got);
            else if (side == TRUTH)
                failed = send_all(conn->fd[CLIENT], buf, got);
            if (failed)
                close_conn(conn, &closed);
        }
        while (closed != NULL) {
            struct relay_conn *next = closed->next_closed;
            free(closed);
            closed = next;
        }
    }
    return 0;
}
