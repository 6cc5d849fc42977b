/*
 * overlayd-cni: the compiled front end of overlayd's CNI plugin.
 *
 * A container runtime execs the CNI plugin once per container and operation.
 * Starting a Python interpreter costs more than the whole reference plugin
 * (docs/design-notes.rst, "CNI plugin start-up"), so this small program
 * stands in for it: it reads the network configuration from standard input,
 * collects the CNI_* environment, and sends both to the daemon in one
 * `cni_exec` request (docs/protocol.rst). The daemon runs the Python plugin's
 * own logic (overlayd_cni.main.execute) and answers with what the plugin
 * would have printed and its exit status, which this program prints and
 * exits with.
 *
 * Whenever that fast path cannot be taken, it execs the Python plugin
 * (OVERLAYD_CNI_FALLBACK, baked in by `overlayd-cni install --native`) with
 * the same arguments, environment and standard input, so every case the
 * daemon cannot answer behaves exactly as the Python plugin does:
 *
 *   - CNI_COMMAND is not ADD, DEL, GC, STATUS or VERSION (CHECK reads the
 *     container's namespace from inside; a missing or unknown command is the
 *     plugin's error or its command-line tool);
 *   - standard input is larger than MAX_STDIN, not a JSON object this scan
 *     can read, not UTF-8, or has a top-level key with an escape in it;
 *   - "socket" is not a plain string (the plugin reports the error);
 *   - the daemon cannot be reached, breaks the connection, does not answer
 *     in time, or answers anything but `cni_result` (for example `err` when
 *     the overlayd-cni distribution is not installed beside it).
 *
 * The daemon's operations are idempotent by the attachment's identity, so
 * running the Python plugin after a request whose answer was lost is what
 * a runtime's retry would do anyway.
 *
 * Plain C99 with POSIX sockets; memfd_create (Linux) when available, else
 * tmpfile(), holds standard input for the fallback. Build:
 *
 *   cc -O2 -DOVERLAYD_CNI_FALLBACK='"/opt/cni/bin/overlayd-cni-py"' \
 *      -o overlayd-cni overlayd-cni.c
 */

#define _GNU_SOURCE /* memfd_create, MSG_NOSIGNAL */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef OVERLAYD_CNI_FALLBACK
#error "define OVERLAYD_CNI_FALLBACK: the Python plugin to exec when the daemon cannot answer"
#endif
#ifndef OVERLAYD_DEFAULT_SOCKET
/* The plugin's default "socket" (overlayd.rawclient.DEFAULT_SOCKET). */
#define OVERLAYD_DEFAULT_SOCKET "/var/run/zlayer-overlayd.sock"
#endif

#define MAX_STDIN (1u << 20)    /* larger configurations go to the Python plugin */
#define MAX_FRAME (8u << 20)    /* the protocol's frame limit (overlayd.protocol) */
#define MAX_DEPTH 64            /* nesting the scan follows */
#define DEFAULT_TIMEOUT 30.0    /* the plugin's default "timeout" (seconds) */

static char **saved_argv;
static char *input;             /* standard input as read so far */
static size_t input_len;
static int input_read;          /* 1: fd 0 was (partly) consumed */
static int input_truncated;     /* 1: more than MAX_STDIN waits on fd 0 */
static int out_of_memory;       /* a buffer could not grow */

/* -- output buffer --------------------------------------------------------- */

struct buf {
    char *data;
    size_t len, cap;
};

static int put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL) {
            out_of_memory = 1;
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static int puts_(struct buf *b, const char *s) { return put(b, s, strlen(s)); }

/* -- fallback: exec the Python plugin ----------------------------------- */

enum io_kind { IO_READ, IO_WRITE, IO_SEND };

/* Move all n bytes between p and fd: read, write, or send without SIGPIPE (the
 * daemon may have gone), going on after EINTR; -1 on an error, or when the
 * stream ends (or takes nothing) before all n went. */
static int io_all(int fd, enum io_kind kind, char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = kind == IO_READ   ? read(fd, p, n)
                    : kind == IO_SEND ? send(fd, p, n, MSG_NOSIGNAL)
                                      : write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Put what was read of standard input (and the unread rest) back on fd 0. */
static int restore_stdin(void)
{
    int fd = -1;
#ifdef MFD_CLOEXEC
    fd = memfd_create("overlayd-cni-stdin", MFD_CLOEXEC);
#endif
    if (fd < 0) {
        FILE *f = tmpfile(); /* deleted on close; the descriptor is dup'ed below */
        if (f == NULL)
            return -1;
        fd = dup(fileno(f));
        fclose(f);
        if (fd < 0)
            return -1;
    }
    if (io_all(fd, IO_WRITE, input, input_len) != 0)
        return -1;
    if (input_truncated) {
        char chunk[65536];
        for (;;) {
            ssize_t r = read(0, chunk, sizeof chunk);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            if (io_all(fd, IO_WRITE, chunk, (size_t)r) != 0)
                return -1;
        }
    }
    if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0)
        return -1;
    close(fd);
    return 0;
}

static void json_string(struct buf *b, const char *s, size_t n);

/* Exec the Python plugin; when even that fails, print a CNI error object. */
static void fallback(void)
{
    const char *step = "cannot hand standard input over";
    if (!input_read || restore_stdin() == 0) {
        saved_argv[0] = (char *)OVERLAYD_CNI_FALLBACK;
        execv(OVERLAYD_CNI_FALLBACK, saved_argv);
        step = "cannot exec " OVERLAYD_CNI_FALLBACK;
    }
    const char *why = strerror(errno);
    struct buf out = {0};
    puts_(&out, "{\"cniVersion\":\"1.0.0\",\"code\":999,"
                "\"msg\":\"overlayd-cni cannot run its Python plugin\",\"details\":");
    char details[1024];
    snprintf(details, sizeof details, "%s: %s (run overlayd-cni install again)", step, why);
    json_string(&out, details, strlen(details));
    puts_(&out, "}\n");
    if (out.data != NULL)
        io_all(1, IO_WRITE, out.data, out.len);
    exit(1);
}

/* -- JSON ---------------------------------------------------------------- */

/* Well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF),
   which is what the daemon's frame decoder accepts. */
static int utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned min, cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return 0;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Append s as a JSON string: quotes, backslashes and control characters escaped. */
static void json_string(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(b, s + start, i - start);
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(b, esc, 2);
        } else {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(b, esc, 6);
        }
        start = i + 1;
    }
    put(b, s + start, n - start);
    put(b, "\"", 1);
}

static const char *ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at '"': the position after the closing quote, or NULL. *escaped says
   whether a backslash occurred inside. */
static const char *skip_string(const char *p, const char *e, int *escaped)
{
    *escaped = 0;
    for (p++; p < e; p++) {
        if (*p == '"')
            return p + 1;
        if (*p == '\\') {
            *escaped = 1;
            p++;
        }
    }
    return NULL;
}

/* The position after the JSON value at p, or NULL if it is malformed. Scalars
   are skipped leniently: the daemon parses the configuration properly. */
static const char *skip_value(const char *p, const char *e, int depth)
{
    int escaped;
    p = ws(p, e);
    if (p >= e || depth > MAX_DEPTH)
        return NULL;
    if (*p == '"')
        return skip_string(p, e, &escaped);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1, e);
        if (p < e && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= e || *p != '"' || (p = skip_string(p, e, &escaped)) == NULL)
                    return NULL;
                p = ws(p, e);
                if (p >= e || *p++ != ':')
                    return NULL;
            }
            if ((p = skip_value(p, e, depth + 1)) == NULL)
                return NULL;
            p = ws(p, e);
            if (p < e && *p == ',') {
                p = ws(p + 1, e);
                continue;
            }
            return p < e && *p == close ? p + 1 : NULL;
        }
    }
    const char *start = p;
    while (p < e && (strchr("+-.0123456789eE", *p) != NULL ||
                     (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        p++;
    return p > start ? p : NULL;
}

/* The value of member `key` of the object at p (the last one, as Python's
   json keeps), NULL when absent. *bad is set for a malformed object or a
   key with an escape (which could spell `key`). */
static const char *member(const char *p, const char *e, const char *key, int *bad)
{
    const char *found = NULL;
    size_t klen = strlen(key);
    int escaped;
    *bad = 1;
    p = ws(p, e);
    if (p >= e || *p != '{')
        return NULL;
    p = ws(p + 1, e);
    if (p < e && *p == '}') {
        *bad = 0;
        return NULL;
    }
    for (;;) {
        if (p >= e || *p != '"')
            return NULL;
        const char *name = p + 1, *after = skip_string(p, e, &escaped);
        if (after == NULL || escaped)
            return NULL;
        size_t nlen = (size_t)(after - 1 - name);
        p = ws(after, e);
        if (p >= e || *p++ != ':')
            return NULL;
        p = ws(p, e);
        if (nlen == klen && memcmp(name, key, klen) == 0)
            found = p;
        if ((p = skip_value(p, e, 1)) == NULL)
            return NULL;
        p = ws(p, e);
        if (p < e && *p == ',') {
            p = ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}') {
            *bad = 0;
            return found;
        }
        return NULL;
    }
}

static int hex4(const char *p, const char *e, unsigned *out)
{
    unsigned v = 0;
    if (e - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Decode the JSON string at p into out (UTF-8). -1 if it is not a valid string. */
static int decode_string(const char *p, const char *e, struct buf *out)
{
    if (p >= e || *p != '"')
        return -1;
    out->len = 0;
    put(out, "", 0);
    for (p++; p < e; p++) {
        const char *run = p;
        while (p < e && *p != '"' && *p != '\\')
            p++;
        put(out, run, (size_t)(p - run));
        if (p >= e)
            return -1;
        if (*p == '"')
            return 0;
        if (++p >= e)
            return -1;
        char c = *p, ch[4];
        unsigned cp;
        switch (c) {
        case '"': case '\\': case '/': put(out, &c, 1); continue;
        case 'b': put(out, "\b", 1); continue;
        case 'f': put(out, "\f", 1); continue;
        case 'n': put(out, "\n", 1); continue;
        case 'r': put(out, "\r", 1); continue;
        case 't': put(out, "\t", 1); continue;
        case 'u': break;
        default: return -1;
        }
        if (hex4(p + 1, e, &cp) != 0)
            return -1;
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
            unsigned lo;
            if (e - p < 7 || p[1] != '\\' || p[2] != 'u' || hex4(p + 3, e, &lo) != 0 ||
                lo < 0xDC00 || lo > 0xDFFF)
                return -1;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return -1;
        }
        size_t n;
        if (cp < 0x80) {
            ch[0] = (char)cp, n = 1;
        } else if (cp < 0x800) {
            ch[0] = (char)(0xC0 | cp >> 6), ch[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
        } else if (cp < 0x10000) {
            ch[0] = (char)(0xE0 | cp >> 12), ch[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
            ch[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
        } else {
            ch[0] = (char)(0xF0 | cp >> 18), ch[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
            ch[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), ch[3] = (char)(0x80 | (cp & 0x3F));
            n = 4;
        }
        put(out, ch, n);
    }
    return -1;
}

/* -- the daemon ---------------------------------------------------------- */

/* Connect to the daemon's Unix socket; -1 on any failure. */
static int connect_daemon(const char *path, double timeout)
{
    struct sockaddr_un addr;
    if (strlen(path) >= sizeof addr.sun_path)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    /* Answers wait for the daemon's work: each of the plugin's requests may
       take "timeout" seconds (an ADD makes up to three), plus some slack. */
    struct timeval tv;
    double wait = timeout * 4 + 5;
    if (wait > 3600)
        wait = 3600;
    tv.tv_sec = (time_t)wait;
    tv.tv_usec = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Append `"name":"value"` for environment variable var when it is set. */
static int env_member(struct buf *b, const char *name, const char *var)
{
    const char *value = getenv(var);
    if (value == NULL)
        return 0;
    if (!utf8_ok((const unsigned char *)value, strlen(value)))
        return -1;
    puts_(b, ",\"");
    puts_(b, name);
    puts_(b, "\":");
    json_string(b, value, strlen(value));
    return 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    saved_argv = argv;
    const char *command = getenv("CNI_COMMAND");
    if (command == NULL || (strcmp(command, "ADD") != 0 && strcmp(command, "DEL") != 0 &&
                            strcmp(command, "GC") != 0 && strcmp(command, "STATUS") != 0 &&
                            strcmp(command, "VERSION") != 0))
        fallback(); /* CHECK, a bad command, or a person running it: Python */

    /* Standard input, up to MAX_STDIN bytes (one more tells it is larger). */
    input = malloc(MAX_STDIN + 1);
    if (input == NULL)
        fallback();
    input_read = 1;
    while (input_len <= MAX_STDIN) {
        ssize_t r = read(0, input + input_len, MAX_STDIN + 1 - input_len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fallback(); /* the plugin reports the I/O failure */
        if (r == 0)
            break;
        input_len += (size_t)r;
    }
    if (input_len > MAX_STDIN) {
        input_truncated = 1;
        fallback();
    }
    const char *end = input + input_len;
    if (!utf8_ok((const unsigned char *)input, input_len))
        fallback();

    /* The daemon's socket and the plugin's timeout from the configuration. */
    int bad;
    const char *value = member(input, end, "socket", &bad);
    if (bad)
        fallback();
    struct buf sock = {0};
    if (value == NULL)
        puts_(&sock, OVERLAYD_DEFAULT_SOCKET);
    else if (decode_string(value, end, &sock) != 0 || sock.len == 0 ||
             strlen(sock.data) != sock.len)
        fallback(); /* not a non-empty string: the plugin's error */
    double timeout = DEFAULT_TIMEOUT;
    value = member(input, end, "timeout", &bad);
    if (value != NULL && ((*value >= '0' && *value <= '9') || *value == '.')) {
        double t = strtod(value, NULL);
        if (t > 0)
            timeout = t;
    }

    /* The request frame. */
    struct buf req = {0};
    put(&req, "\0\0\0\0", 4); /* the length, filled in below */
    puts_(&req, "{\"frame\":\"request\",\"id\":1,\"request\":{\"op\":\"cni_exec\",\"command\":");
    json_string(&req, command, strlen(command));
    if (env_member(&req, "container_id", "CNI_CONTAINERID") != 0 ||
        env_member(&req, "netns", "CNI_NETNS") != 0 ||
        env_member(&req, "ifname", "CNI_IFNAME") != 0 ||
        env_member(&req, "args", "CNI_ARGS") != 0 ||
        env_member(&req, "path", "CNI_PATH") != 0)
        fallback(); /* not UTF-8: the plugin decides */
    puts_(&req, ",\"stdin\":");
    json_string(&req, input, input_len);
    puts_(&req, "}}");
    if (out_of_memory || req.len - 4 > MAX_FRAME)
        fallback();
    uint32_t n = (uint32_t)(req.len - 4);
    for (int i = 0; i < 4; i++)
        req.data[i] = (char)((n >> (8 * i)) & 0xFF); /* little-endian */

    int fd = connect_daemon(sock.data, timeout);
    if (fd < 0 || io_all(fd, IO_SEND, req.data, req.len) != 0)
        fallback();

    /* The response frame (event frames are only sent to subscribers). */
    unsigned char hdr[4];
    if (io_all(fd, IO_READ, (char *)hdr, 4) != 0)
        fallback();
    uint32_t len = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24;
    char *body = len <= MAX_FRAME ? malloc((size_t)len + 1) : NULL;
    if (body == NULL || io_all(fd, IO_READ, body, len) != 0)
        fallback();
    close(fd);
    const char *bend = body + len;
    const char *resp = member(body, bend, "response", &bad);
    if (bad || resp == NULL)
        fallback();
    const char *result = member(resp, bend, "result", &bad);
    if (bad || result == NULL || bend - result < 12 || memcmp(result, "\"cni_result\"", 12) != 0)
        fallback(); /* err (e.g. not installed) or anything unexpected */
    const char *code_at = member(resp, bend, "exit_code", &bad);
    const char *out_at = member(resp, bend, "stdout", &bad);
    const char *err_at = member(resp, bend, "stderr", &bad);
    if (code_at == NULL || *code_at < '0' || *code_at > '9' || out_at == NULL)
        fallback();
    long code = strtol(code_at, NULL, 10);
    struct buf out = {0}, err = {0};
    if (code < 0 || code > 255 || decode_string(out_at, bend, &out) != 0 ||
        (err_at != NULL && decode_string(err_at, bend, &err) != 0) || out_of_memory)
        fallback();
    if (err.len > 0)
        io_all(2, IO_WRITE, err.data, err.len);
    if (out.len > 0 && io_all(1, IO_WRITE, out.data, out.len) != 0)
        return 1;
    return (int)code;
}
