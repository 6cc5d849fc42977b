/*
 * The relay's data plane in C (Linux): overlayd.nat.turn's forwarding thread
 * calls ovl_fwd_run() through ctypes, which releases the GIL for the call.
 *
 * One epoll loop over the TURN socket, the relayed peers' local sockets (the
 * endpoints WireGuard sends to) and the wake socket. The TURN socket is not
 * connected (in "both relay" mode the peer's relayed address sends to it as
 * well as the TURN server), so every send names the server and every receive
 * gets its source. The fast path stays here:
 *
 *   WireGuard -> TURN: recvmmsg() from a peer's socket into slots with four
 *     bytes of headroom, the ChannelData header written into the headroom, one
 *     sendmmsg() to the TURN server; no copy.
 *   TURN -> WireGuard: recvmmsg() from the TURN socket; from the server, the
 *     ChannelData header checked and skipped; from a peer's relayed address
 *     (the peer sends through its own allocation), the datagram as it is; runs
 *     of datagrams for the same peer sent with one sendmmsg(). Keepalives
 *     (STUN Binding indications a peer sends to this node's relayed address,
 *     which arrive as ChannelData) are dropped here.
 *
 * Runs of equal-sized datagrams for one destination leave as one UDP GSO
 * send (UDP_SEGMENT: one trip through the stack, cut into datagrams at the
 * end), which the kernel may refuse (a segment over the path MTU, no
 * checksum offload); then that destination gets one datagram per message.
 *
 * Whatever needs Python is copied into the caller's buffer and returned:
 * a datagram from the TURN server that is not ChannelData (STUN answers, Data
 * indications) or is for a channel the table does not know (bound since the
 * table was loaded), the first datagrams from a peer's relayed address (until
 * the table marks that address as seen), a datagram from a peer without a
 * bound channel in the table (it goes out as a Send indication, or as
 * ChannelData if bound since), the wake socket (the peer table changed, or
 * stop), and the deadline (so counters and the stop flag are looked at every
 * so often). Datagrams from any other source are dropped. A TURN batch cut
 * short by such a datagram is resumed on the next call. The peer table is
 * replaced with ovl_fwd_table(), from the same thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define OVL_BATCH 64
#define OVL_SLOT 65540 /* the largest UDP payload and a ChannelData header */
#define OVL_CHANNEL_MIN 0x4000
#define OVL_CHANNELS 0x4000 /* 0x4000..0x7FFF */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define OVL_GSO_SEGMENTS 64   /* UDP_MAX_SEGMENTS of older kernels */
#define OVL_GSO_BYTES 60000   /* a GSO send is one UDP datagram before it is cut */
#define OVL_TAG_TURN UINT64_MAX
#define OVL_TAG_WAKE (UINT64_MAX - 1)
#define OVL_ADDR 28 /* an address as Python passes it: a struct sockaddr_in or _in6 */

enum {
    OVL_DEADLINE = 0, /* the call's time is up */
    OVL_TURN = 1,     /* a datagram from the TURN socket that is not ChannelData */
    OVL_PEER = 2,     /* a datagram from a peer without a channel (*out_fd says whose) */
    OVL_WAKE = 3,     /* the wake socket is readable (not drained) */
    OVL_RAW = 4,      /* a datagram from a peer's relayed address not yet seen (*out_fd: whose) */
};

union ovl_addr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
};

struct ovl_batch {
    unsigned char *data; /* OVL_BATCH slots of OVL_SLOT bytes */
    struct mmsghdr msg[OVL_BATCH];
    struct iovec iov[OVL_BATCH];
    union ovl_addr from[OVL_BATCH]; /* sources (filled on the TURN socket only) */
};

struct ovl_fwd {
    int epfd, turn_fd, wake_fd;
    union ovl_addr server; /* the TURN server: every TURN send goes there */
    socklen_t server_len;
    int npeers;
    int *peer_fd;
    uint16_t *peer_channel; /* 0: not bound */
    /* the peer's relayed address (family 0: none), what arrives from it is
     * delivered (1), dropped (0), or handed to Python (2: not seen yet) */
    union ovl_addr *peer_relay;
    uint8_t *peer_raw;
    /* the peers with a relayed address, ordered by it (cmp_addr): a datagram's
     * source is looked up by binary search, not by a scan of every peer */
    int *relay_order;
    int nrelay;
    int last_relay; /* the peer whose relayed address matched last */
    /* channel - 0x4000 -> fd of an inbound peer; -2: not delivered; -1: unknown */
    int chan_fd[OVL_CHANNELS];
    struct ovl_batch in_turn, in_peer;
    int pend_next, pend_count; /* TURN datagrams received, not yet handled */
    /* datagrams to send (out_iov), grouped into messages (out, out_count each) */
    struct iovec out_iov[OVL_BATCH];
    struct mmsghdr out[OVL_BATCH];
    int out_count[OVL_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } out_cmsg[OVL_BATCH];
    int gso_turn, gso_peer; /* whether GSO sends are still tried that way */
    uint64_t sent, received, dropped;
};

static int batch_init(struct ovl_batch *b, size_t headroom)
{
    b->data = malloc((size_t)OVL_BATCH * OVL_SLOT);
    if (!b->data)
        return -1;
    for (int i = 0; i < OVL_BATCH; i++) {
        b->iov[i].iov_base = b->data + (size_t)i * OVL_SLOT + headroom;
        b->iov[i].iov_len = OVL_SLOT - headroom;
        memset(&b->msg[i], 0, sizeof(b->msg[i]));
        b->msg[i].msg_hdr.msg_iov = &b->iov[i];
        b->msg[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

void ovl_fwd_free(struct ovl_fwd *c)
{
    if (!c)
        return;
    if (c->epfd >= 0)
        close(c->epfd);
    free(c->in_turn.data);
    free(c->in_peer.data);
    free(c->peer_fd);
    free(c->peer_channel);
    free(c->peer_relay);
    free(c->peer_raw);
    free(c->relay_order);
    free(c);
}

static socklen_t addr_len(const union ovl_addr *a)
{
    return a->sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* Order of two addresses by family, port and address (flow and scope ignored);
 * 0 when they are the same. Addresses of no family are all the same. */
static int cmp_addr(const union ovl_addr *a, const union ovl_addr *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return a->sa.sa_family < b->sa.sa_family ? -1 : 1;
    if (a->sa.sa_family == AF_INET) {
        if (a->in4.sin_port != b->in4.sin_port)
            return a->in4.sin_port < b->in4.sin_port ? -1 : 1;
        return memcmp(&a->in4.sin_addr, &b->in4.sin_addr, sizeof(a->in4.sin_addr));
    }
    if (a->sa.sa_family == AF_INET6) {
        if (a->in6.sin6_port != b->in6.sin6_port)
            return a->in6.sin6_port < b->in6.sin6_port ? -1 : 1;
        return memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof(a->in6.sin6_addr));
    }
    return 0;
}

/* qsort_r comparator of peer indices by their relayed addresses. */
static int cmp_relay(const void *x, const void *y, void *relays)
{
    const union ovl_addr *r = relays;
    return cmp_addr(&r[*(const int *)x], &r[*(const int *)y]);
}

/* turn_fd: the TURN client socket (not connected); server: the TURN server's
 * address (OVL_ADDR bytes, a struct sockaddr_in or sockaddr_in6). */
struct ovl_fwd *ovl_fwd_new(int turn_fd, int wake_fd, const unsigned char *server)
{
    struct ovl_fwd *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->epfd = -1;
    c->gso_turn = c->gso_peer = 1;
    c->turn_fd = turn_fd;
    c->wake_fd = wake_fd;
    memcpy(&c->server, server, OVL_ADDR);
    c->server_len = addr_len(&c->server);
    for (int i = 0; i < OVL_CHANNELS; i++)
        c->chan_fd[i] = -1;
    if (batch_init(&c->in_turn, 0) < 0 || batch_init(&c->in_peer, 4) < 0) {
        ovl_fwd_free(c);
        return NULL;
    }
    for (int i = 0; i < OVL_BATCH; i++)
        c->in_turn.msg[i].msg_hdr.msg_name = &c->in_turn.from[i];
    return c;
}

static int watch(int epfd, int fd, uint64_t tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* Replace the peer table: n peers, their fds, channels (0: not bound),
 * whether what arrives for them is delivered, their relayed addresses
 * (n * OVL_ADDR bytes; family 0: none) and what to do with a datagram from
 * one (raw: 1 deliver, 0 drop, 2 hand to Python). Returns 0 or -errno. */
int ovl_fwd_table(struct ovl_fwd *c, int n, const int *fds, const uint16_t *channels,
                  const uint8_t *inbound, const unsigned char *relays, const uint8_t *raw)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return -errno;
    if (watch(epfd, c->turn_fd, OVL_TAG_TURN) < 0 || watch(epfd, c->wake_fd, OVL_TAG_WAKE) < 0) {
        int err = errno;
        close(epfd);
        return -err;
    }
    size_t slots = (size_t)(n ? n : 1);
    int *peer_fd = malloc(sizeof(int) * slots);
    uint16_t *peer_channel = malloc(sizeof(uint16_t) * slots);
    union ovl_addr *peer_relay = calloc(slots, sizeof(union ovl_addr));
    uint8_t *peer_raw = malloc(slots);
    int *relay_order = malloc(sizeof(int) * slots);
    if (!peer_fd || !peer_channel || !peer_relay || !peer_raw || !relay_order) {
        free(peer_fd);
        free(peer_channel);
        free(peer_relay);
        free(peer_raw);
        free(relay_order);
        close(epfd);
        return -ENOMEM;
    }
    int nrelay = 0;
    for (int i = 0; i < OVL_CHANNELS; i++)
        c->chan_fd[i] = -1;
    for (int i = 0; i < n; i++) {
        peer_fd[i] = fds[i];
        peer_channel[i] = channels[i];
        memcpy(&peer_relay[i], relays + (size_t)i * OVL_ADDR, OVL_ADDR);
        peer_raw[i] = raw[i];
        if (peer_relay[i].sa.sa_family == AF_INET || peer_relay[i].sa.sa_family == AF_INET6)
            relay_order[nrelay++] = i;
        watch(epfd, fds[i], (uint64_t)i); /* a socket closed meanwhile is left out */
        unsigned slot = (unsigned)channels[i] - OVL_CHANNEL_MIN;
        if (channels[i] && slot < OVL_CHANNELS)
            c->chan_fd[slot] = inbound[i] ? fds[i] : -2;
    }
    if (c->epfd >= 0)
        close(c->epfd);
    free(c->peer_fd);
    free(c->peer_channel);
    free(c->peer_relay);
    free(c->peer_raw);
    free(c->relay_order);
    qsort_r(relay_order, (size_t)nrelay, sizeof(int), cmp_relay, peer_relay);
    c->epfd = epfd;
    c->npeers = n;
    c->peer_fd = peer_fd;
    c->peer_channel = peer_channel;
    c->peer_relay = peer_relay;
    c->peer_raw = peer_raw;
    c->relay_order = relay_order;
    c->nrelay = nrelay;
    c->last_relay = 0;
    return 0;
}

void ovl_fwd_stats(const struct ovl_fwd *c, uint64_t *out)
{
    out[0] = c->sent;
    out[1] = c->received;
    out[2] = c->dropped;
}

/* Group out_iov[0..n) into messages to `to` (NULL: the connected peer): a run
 * of equal sizes (the last may be shorter) becomes one GSO message when *gso
 * allows. Returns the count. */
static int group(struct ovl_fwd *c, int n, int gso, union ovl_addr *to, socklen_t to_len)
{
    int nmsg = 0;
    for (int k = 0; k < n;) {
        size_t seg = c->out_iov[k].iov_len, total = seg;
        int g = 1;
        while (gso && k + g < n && g < OVL_GSO_SEGMENTS && c->out_iov[k + g].iov_len <= seg &&
               total + c->out_iov[k + g].iov_len <= OVL_GSO_BYTES) {
            total += c->out_iov[k + g].iov_len;
            if (c->out_iov[k + g++].iov_len < seg)
                break; /* only the last segment may be shorter */
        }
        struct msghdr *h = &c->out[nmsg].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_iov = &c->out_iov[k];
        h->msg_iovlen = (size_t)g;
        h->msg_name = to;
        h->msg_namelen = to ? to_len : 0;
        if (g > 1) {
            h->msg_control = c->out_cmsg[nmsg].buf;
            h->msg_controllen = sizeof(c->out_cmsg[nmsg].buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(h);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)seg;
            memcpy(CMSG_DATA(cm), &size, sizeof(size));
        }
        c->out_count[nmsg++] = g;
        k += g;
    }
    return nmsg;
}

/* Send out_iov[0..n) on fd (to the TURN server when fd is the TURN socket);
 * what cannot be sent is counted as dropped. */
static void send_all(struct ovl_fwd *c, int fd, int n, int *gso, uint64_t *done_count)
{
    union ovl_addr *to = fd == c->turn_fd ? &c->server : NULL;
    int nmsg = group(c, n, *gso, to, c->server_len);
    int done = 0, waited = 0;
    while (done < nmsg) {
        int r = sendmmsg(fd, c->out + done, (unsigned)(nmsg - done), MSG_DONTWAIT);
        if (r > 0) {
            for (int i = done; i < done + r; i++)
                *done_count += (uint64_t)c->out_count[i];
            done += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == ENOBUFS) && !waited) {
            /* the socket's send buffer is full: give it a moment, once per batch */
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 5);
            waited = 1;
            continue;
        }
        struct msghdr *h = &c->out[done].msg_hdr;
        if (c->out_count[done] > 1 && errno != EAGAIN && errno != ECONNREFUSED) {
            /* GSO refused (EINVAL, EIO, EMSGSIZE...): one datagram each, now and later */
            *gso = 0;
            for (size_t j = 0; j < h->msg_iovlen; j++) {
                if (sendto(fd, h->msg_iov[j].iov_base, h->msg_iov[j].iov_len, MSG_DONTWAIT,
                           h->msg_name, h->msg_namelen) >= 0)
                    (*done_count)++;
                else
                    c->dropped++;
            }
        } else {
            c->dropped += (uint64_t)c->out_count[done]; /* e.g. ECONNREFUSED: skip it */
        }
        done++;
    }
}

static void out_add(struct ovl_fwd *c, int i, void *base, size_t len)
{
    c->out_iov[i].iov_base = base;
    c->out_iov[i].iov_len = len;
}

/* Whether a payload is a STUN Binding indication (a peer's keepalive; a
 * WireGuard message never starts with a zero byte). */
static int keepalive(const unsigned char *d, size_t len)
{
    return len >= 20 && d[0] == 0x00 && d[1] == 0x11 && d[4] == 0x21 && d[5] == 0x12 &&
           d[6] == 0xA4 && d[7] == 0x42;
}

/* The peer whose relayed address `a` is, or -1: the last one matched (a
 * bulk transfer comes from one peer), else a binary search of relay_order. */
static int relay_peer(struct ovl_fwd *c, const union ovl_addr *a)
{
    int last = c->last_relay;
    if (a->sa.sa_family != AF_INET && a->sa.sa_family != AF_INET6)
        return -1;
    if (last < c->npeers && !cmp_addr(&c->peer_relay[last], a))
        return last;
    int lo = 0, hi = c->nrelay - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, i = c->relay_order[mid];
        int order = cmp_addr(&c->peer_relay[i], a);
        if (!order) {
            c->last_relay = i;
            return i;
        }
        if (order < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* Forward the pending TURN datagrams; stop at one that Python must see. */
static int turn_pending(struct ovl_fwd *c, unsigned char *buf, size_t cap, int *out_len,
                        int *out_fd)
{
    struct ovl_batch *b = &c->in_turn;
    int run_fd = -1, nout = 0;
    while (c->pend_next < c->pend_count) {
        int i = c->pend_next;
        unsigned char *d = b->data + (size_t)i * OVL_SLOT;
        size_t len = b->msg[i].msg_len;
        if (b->msg[i].msg_hdr.msg_flags & MSG_TRUNC) {
            c->dropped++;
            c->pend_next++;
            continue;
        }
        int fd, code = OVL_TURN;
        unsigned char *payload = d;
        size_t length = len;
        if (!cmp_addr(&b->from[i], &c->server)) {
            unsigned channel = len >= 4 ? ((unsigned)d[0] << 8 | d[1]) - OVL_CHANNEL_MIN : 0;
            fd = len >= 4 && channel < OVL_CHANNELS ? c->chan_fd[channel] : -1;
            if (fd != -1) { /* ChannelData for a channel in the table */
                length = (size_t)d[2] << 8 | d[3];
                payload = d + 4;
                if (length > len - 4 || keepalive(payload, length))
                    fd = -2; /* cut short, or a keepalive: not delivered */
            }
        } else {
            /* not the server: a peer sending through its own allocation */
            int p = relay_peer(c, &b->from[i]);
            fd = p < 0 || !c->peer_raw[p] ? -2 : c->peer_raw[p] == 1 ? c->peer_fd[p] : -1;
            if (fd == -1) {
                code = OVL_RAW; /* the first from that address: Python marks it seen */
                *out_fd = c->peer_fd[p];
            }
        }
        if (fd != -1) {
            c->pend_next++;
            if (fd < 0)
                continue;
            if (fd != run_fd && nout) {
                send_all(c, run_fd, nout, &c->gso_peer, &c->received);
                nout = 0;
            }
            run_fd = fd;
            out_add(c, nout++, payload, length);
            continue;
        }
        if (nout)
            send_all(c, run_fd, nout, &c->gso_peer, &c->received);
        memcpy(buf, d, len < cap ? len : cap);
        *out_len = (int)len;
        c->pend_next++;
        return code;
    }
    if (nout)
        send_all(c, run_fd, nout, &c->gso_peer, &c->received);
    c->pend_next = c->pend_count = 0;
    return -1;
}

/* Wrap a batch from peer i in ChannelData and send it on the TURN socket. */
static void from_peer(struct ovl_fwd *c, int i)
{
    struct ovl_batch *b = &c->in_peer;
    int n = recvmmsg(c->peer_fd[i], b->msg, OVL_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return; /* nothing, or an ICMP error from WireGuard's port: nothing to do */
    uint16_t channel = c->peer_channel[i];
    int nout = 0;
    for (int k = 0; k < n; k++) {
        unsigned char *d = b->data + (size_t)k * OVL_SLOT;
        size_t len = b->msg[k].msg_len;
        if ((b->msg[k].msg_hdr.msg_flags & MSG_TRUNC) || len > 0xFFFF) {
            c->dropped++;
            continue;
        }
        d[0] = (unsigned char)(channel >> 8);
        d[1] = (unsigned char)channel;
        d[2] = (unsigned char)(len >> 8);
        d[3] = (unsigned char)len;
        out_add(c, nout++, d, len + 4);
    }
    send_all(c, c->turn_fd, nout, &c->gso_turn, &c->sent);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Forward until something needs Python or timeout_ms have passed.
 * Returns an OVL_* code, or -errno when epoll fails. */
int ovl_fwd_run(struct ovl_fwd *c, int timeout_ms, unsigned char *buf, size_t cap, int *out_len,
                int *out_fd)
{
    int64_t deadline = now_ms() + timeout_ms;
    struct epoll_event ev[16];
    *out_len = 0;
    *out_fd = -1;
    if (c->epfd < 0)
        return -EBADF;
    for (;;) {
        if (c->pend_next < c->pend_count) {
            int r = turn_pending(c, buf, cap, out_len, out_fd);
            if (r >= 0)
                return r;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return OVL_DEADLINE;
        int n = epoll_wait(c->epfd, ev, 16, (int)left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (int k = 0; k < n; k++) {
            uint64_t tag = ev[k].data.u64;
            if (tag == OVL_TAG_WAKE)
                return OVL_WAKE;
            if (tag == OVL_TAG_TURN) {
                if (c->pend_next < c->pend_count)
                    continue; /* finish the batch in hand first */
                for (int i = 0; i < OVL_BATCH; i++)
                    c->in_turn.msg[i].msg_hdr.msg_namelen = sizeof(union ovl_addr);
                int got = recvmmsg(c->turn_fd, c->in_turn.msg, OVL_BATCH, MSG_DONTWAIT, NULL);
                if (got <= 0)
                    continue;
                c->pend_next = 0;
                c->pend_count = got;
                int r = turn_pending(c, buf, cap, out_len, out_fd);
                if (r >= 0)
                    return r;
                continue;
            }
            if (tag >= (uint64_t)c->npeers)
                continue;
            int i = (int)tag;
            if (c->peer_channel[i] == 0) {
                ssize_t got = recv(c->peer_fd[i], buf, cap, MSG_DONTWAIT | MSG_TRUNC);
                if (got < 0)
                    continue;
                *out_len = (int)got;
                *out_fd = c->peer_fd[i];
                return OVL_PEER;
            }
            from_peer(c, i);
        }
    }
}
