// SPDX-License-Identifier: Apache-2.0
/*
 * cniwarden-shim: the CNI plugin executable cniwarden installs on nodes, under the names
 * cniwarden-bridge and cniwarden-host-local (the CNI `type` is argv[0]'s basename).
 *
 * It forwards one CNI invocation (the CNI_* environment and stdin) to the resident
 * `cniwarden cni-server` over a Unix socket, prints the reply and exits with its code, so
 * the node pays for neither a Python interpreter nor pyroute2's import on every pod.
 * Built static (`gcc -static`) because node images often have no usable libc or Python.
 *
 * Wire protocol and failure behaviour: shim/PROTOCOL.md. In short, with the server down:
 * VERSION is answered here, ADD/CHECK/GC fail with code 11, STATUS with 50, and DEL is
 * written durably to the DEL queue (replayed by the server when it is back) and succeeds.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "versions.h"

#define DEFAULT_SOCKET "/run/cniwarden/cni.sock"
#define DEFAULT_DEL_QUEUE "/var/lib/cniwarden/del-queue"
#define DEFAULT_TIMEOUT_MS 30000
#define MAGIC "CNW1"
#define MAX_PLUGIN 255u
#define MAX_ENV (64u << 10)
#define MAX_STDIN (4u << 20)
#define MAX_STDOUT (16u << 20)
#define MAX_STDERR (1u << 20)
#define CONNECT_RETRY_MS 5

/* CNI error codes (SPEC.md "Error codes"). */
#define CNI_ERR_ENV 4
#define CNI_ERR_IO 5
#define CNI_ERR_CONFIG 7
#define CNI_ERR_TRY_AGAIN 11
#define CNI_ERR_NOT_AVAILABLE 50

extern char **environ;

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

static void die_oom(void)
{
	static const char msg[] = "cniwarden-shim: out of memory\n";
	(void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
	_exit(1);
}

static void buf_reserve(struct buf *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + extra)
		cap *= 2;
	char *data = realloc(b->data, cap);
	if (!data)
		die_oom();
	b->data = data;
	b->cap = cap;
}

static void buf_put(struct buf *b, const void *data, size_t len)
{
	buf_reserve(b, len);
	memcpy(b->data + b->len, data, len);
	b->len += len;
}

static void buf_puts(struct buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_u32(struct buf *b, uint32_t v)
{
	unsigned char be[4] = {v >> 24, v >> 16, v >> 8, v};
	buf_put(b, be, 4);
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for `events` or the deadline passes (errno = ETIMEDOUT). */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd p = {.fd = fd, .events = events};
		int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static void log_msg(const char *plugin, const char *fmt, const char *a, const char *b)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "%s (cniwarden shim): ", plugin);
	if (n < 0 || (size_t)n >= sizeof(line))
		return;
	int m = snprintf(line + n, sizeof(line) - (size_t)n, fmt, a, b);
	if (m < 0)
		return;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	(void)write_all(STDERR_FILENO, line, len);
}

/* ---- reading two fields of a JSON object without a JSON library -------------------- */

/* Finds the value of a top-level key of a JSON object: a string's contents (escapes not
 * supported) or a bare token such as a number. Only needs to be right for well-formed
 * input; anything odd yields NULL. */
static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static int is_token(char c) { return (c >= '0' && c <= '9') || (c && strchr("-+.eE", c)); }

static const char *top_level(const char *p, size_t len, const char *want, size_t *out_len)
{
	const char *end = p + len, *key = NULL;
	size_t key_len = 0, want_len = strlen(want);
	int depth = 0;
	for (; p < end; p++) {
		char c = *p;
		if (c == '"') {
			const char *s = ++p;
			while (p < end && *p != '"') {
				if (*p == '\\')
					p++;
				p++;
			}
			if (p >= end)
				return NULL;
			const char *q = p + 1;
			while (q < end && is_space(*q))
				q++;
			if (depth == 1 && q < end && *q == ':') {
				key = s;
				key_len = (size_t)(p - s);
				if (key_len == want_len && memcmp(key, want, want_len) == 0) {
					for (q++; q < end && is_space(*q); q++)
						;
					if (q < end && *q != '"') { /* a bare token */
						const char *t = q;
						while (t < end && is_token(*t))
							t++;
						*out_len = (size_t)(t - q);
						return *out_len ? q : NULL;
					}
				}
			} else if (depth == 1 && key && key_len == want_len &&
				   memcmp(key, want, want_len) == 0) {
				if (memchr(s, '\\', (size_t)(p - s)))
					return NULL;
				*out_len = (size_t)(p - s);
				return s;
			}
		} else if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == ',') {
			key = NULL;
		}
	}
	return NULL;
}

/* The config's cniVersion, for our own error replies. */
static const char *config_version(const struct buf *in, char *out, size_t out_size)
{
	size_t n;
	const char *v = top_level(in->data, in->len, "cniVersion", &n);
	if (!v || n == 0 || n >= out_size || strspn(v, "0123456789.") < n)
		return NULL;
	memcpy(out, v, n);
	out[n] = '\0';
	return out;
}

/* The CNI error code of a plugin's error reply (plugins exit 1 whatever the code). */
static long error_code(const struct buf *out)
{
	size_t n;
	const char *v = top_level(out->data, out->len, "code", &n);
	if (!v || n == 0 || n > 9)
		return -1;
	char num[12];
	memcpy(num, v, n);
	num[n] = '\0';
	return strtol(num, NULL, 10);
}

static void json_escape(struct buf *b, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};
			buf_put(b, esc, 2);
		} else if (c < 0x20) {
			char esc[8];
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			buf_puts(b, esc);
		} else {
			buf_put(b, &c, 1);
		}
	}
}

/* Prints a CNI error object on stdout (where libcni reads it) and exits 1, as the
 * plugins do whatever the code. */
static _Noreturn void fail(const struct buf *in, int code, const char *msg, const char *details)
{
	char version[32];
	const char *v = in ? config_version(in, version, sizeof(version)) : NULL;
	struct buf out = {0};
	buf_puts(&out, "{\"cniVersion\":\"");
	buf_puts(&out, v ? v : CNIWARDEN_CURRENT_VERSION);
	buf_puts(&out, "\",\"code\":");
	char num[16];
	snprintf(num, sizeof(num), "%d", code);
	buf_puts(&out, num);
	buf_puts(&out, ",\"msg\":\"");
	json_escape(&out, msg);
	if (*details) {
		buf_puts(&out, "\",\"details\":\"");
		json_escape(&out, details);
	}
	buf_puts(&out, "\"}\n");
	(void)write_all(STDOUT_FILENO, out.data, out.len);
	exit(1);
}

/* ---- input ---------------------------------------------------------------------- */

static int read_stdin(struct buf *in, int64_t deadline)
{
	for (;;) {
		buf_reserve(in, 65536);
		/* A writer that never closes stdin must not hold us past the deadline. */
		if (wait_fd(STDIN_FILENO, POLLIN, deadline) < 0)
			return -1;
		ssize_t n = read(STDIN_FILENO, in->data + in->len, in->cap - in->len);
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		in->len += (size_t)n;
		if (in->len > MAX_STDIN) {
			errno = E2BIG;
			return -1;
		}
	}
}

static void build_request(struct buf *req, const char *plugin, const struct buf *in)
{
	buf_puts(req, MAGIC);
	buf_u32(req, (uint32_t)strlen(plugin));
	buf_puts(req, plugin);
	size_t len_at = req->len;
	buf_u32(req, 0);
	for (char **e = environ; *e; e++) {
		if (strncmp(*e, "CNI_", 4) == 0)
			buf_put(req, *e, strlen(*e) + 1);
	}
	size_t env_len = req->len - len_at - 4;
	if (env_len > MAX_ENV)
		fail(in, CNI_ERR_ENV, "the CNI_* environment is too large",
		     "more than 65536 bytes of CNI_* variables");
	unsigned char *p = (unsigned char *)req->data + len_at;
	p[0] = env_len >> 24, p[1] = env_len >> 16, p[2] = env_len >> 8, p[3] = env_len;
	buf_u32(req, (uint32_t)in->len);
	buf_put(req, in->data, in->len);
}

/* ---- talking to the server ------------------------------------------------------- */

enum outcome {
	OK,
	SERVER_DOWN,   /* could not connect */
	SERVER_GONE,   /* connection dropped before a complete reply */
	SERVER_SLOW,   /* deadline passed */
	SERVER_GARBLED /* reply not in the protocol */
};

struct reply {
	uint32_t code;
	struct buf out;
	struct buf err;
};

static int connect_server(const char *path, int64_t deadline)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	for (;;) {
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			return fd;
		/* A full listen backlog gives EAGAIN on a non-blocking Unix socket: retry. */
		if (errno != EAGAIN && errno != EINTR)
			break;
		if (now_ms() + CONNECT_RETRY_MS >= deadline) {
			errno = ETIMEDOUT;
			break;
		}
		struct timespec nap = {0, CONNECT_RETRY_MS * 1000000L};
		nanosleep(&nap, NULL);
	}
	int saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

static int send_all(int fd, const char *data, size_t len, int64_t deadline)
{
	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN && wait_fd(fd, POLLOUT, deadline) == 0)
				continue;
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Sends the request with our network namespace attached (SCM_RIGHTS): the server does
 * the host-side work in the namespace the runtime exec'd us in, exactly as an exec'd
 * plugin would. Without /proc the request goes out alone and the server uses its own. */
static int send_request(int fd, const char *data, size_t len, int64_t deadline)
{
	int nsfd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (nsfd < 0)
		return send_all(fd, data, len, deadline);
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	memset(&control, 0, sizeof(control));
	struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			     .msg_controllen = sizeof(control.buf)};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &nsfd, sizeof(int));
	ssize_t n;
	for (;;) {
		n = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (n >= 0)
			break;
		if (errno == EINTR || (errno == EAGAIN && wait_fd(fd, POLLOUT, deadline) == 0))
			continue;
		int saved = errno;
		close(nsfd);
		errno = saved;
		return -1;
	}
	close(nsfd);
	return send_all(fd, data + n, len - (size_t)n, deadline);
}

/* Receives exactly len bytes; a closed connection sets errno = ECONNRESET. */
static int recv_exact(int fd, char *data, size_t len, int64_t deadline)
{
	while (len > 0) {
		ssize_t n = recv(fd, data, len, 0);
		if (n == 0) {
			errno = ECONNRESET;
			return -1;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN && wait_fd(fd, POLLIN, deadline) == 0)
				continue;
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static enum outcome recv_error(void)
{
	return errno == ETIMEDOUT ? SERVER_SLOW : SERVER_GONE;
}

static enum outcome recv_field(int fd, struct buf *b, uint32_t limit, int64_t deadline)
{
	unsigned char len_be[4];
	if (recv_exact(fd, (char *)len_be, 4, deadline) < 0)
		return recv_error();
	uint32_t len = get_u32(len_be);
	if (len > limit)
		return SERVER_GARBLED;
	buf_reserve(b, len + 1);
	if (recv_exact(fd, b->data, len, deadline) < 0)
		return recv_error();
	b->len = len;
	return OK;
}

static enum outcome exchange(const char *path, const struct buf *req, struct reply *rep,
			     int64_t deadline, int *err)
{
	int fd = connect_server(path, deadline);
	if (fd < 0) {
		*err = errno;
		return errno == ETIMEDOUT ? SERVER_SLOW : SERVER_DOWN;
	}
	/* A server that rejects the request may close before reading it all: still try to
	 * read its answer. */
	if (send_request(fd, req->data, req->len, deadline) < 0 && errno == ETIMEDOUT) {
		*err = errno;
		close(fd);
		return SERVER_SLOW;
	}
	shutdown(fd, SHUT_WR);
	enum outcome o = OK;
	unsigned char head[8];
	if (recv_exact(fd, (char *)head, sizeof(head), deadline) < 0) {
		*err = errno;
		o = recv_error();
	} else if (memcmp(head, MAGIC, 4) != 0 || get_u32(head + 4) > 255) {
		o = SERVER_GARBLED;
	} else {
		rep->code = get_u32(head + 4);
		o = recv_field(fd, &rep->out, MAX_STDOUT, deadline);
		if (o == OK)
			o = recv_field(fd, &rep->err, MAX_STDERR, deadline);
		*err = errno;
	}
	close(fd);
	return o;
}

/* ---- the DEL queue ---------------------------------------------------------------- */

static int mkdir_parents(const char *path)
{
	char tmp[4096];
	if (strlen(path) >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(tmp, path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

/* Writes the request as one queue entry: complete and fsync'ed, or absent. */
static int enqueue_del(const char *dir, const struct buf *req, char *name, size_t name_size)
{
	if (mkdir_parents(dir) < 0)
		return -1;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	unsigned long long ns = (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;
	char tmp[4200], final[4200];
	snprintf(tmp, sizeof(tmp), "%s/.tmp-%d-%llu", dir, (int)getpid(), ns);
	snprintf(final, sizeof(final), "%s/del-%020llu-%d.req", dir, ns, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (write_all(fd, req->data, req->len) < 0 || fsync(fd) < 0) {
		int saved = errno;
		close(fd);
		unlink(tmp);
		errno = saved;
		return -1;
	}
	if (close(fd) < 0 || rename(tmp, final) < 0) {
		int saved = errno;
		unlink(tmp);
		errno = saved;
		return -1;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		if (dfd >= 0)
			close(dfd);
		return -1;
	}
	close(dfd);
	snprintf(name, name_size, "%s", final);
	return 0;
}

/* ---- main --------------------------------------------------------------------------- */

static const char *env_or(const char *name, const char *fallback)
{
	const char *v = getenv(name);
	return v && *v ? v : fallback;
}

static int64_t timeout_ms(void)
{
	const char *v = getenv("CNIWARDEN_TIMEOUT_MS");
	if (!v || !*v)
		return DEFAULT_TIMEOUT_MS;
	char *end;
	long long ms = strtoll(v, &end, 10);
	if (*end || ms <= 0 || ms > 3600000)
		return DEFAULT_TIMEOUT_MS;
	return ms;
}

static const char *describe(enum outcome o)
{
	switch (o) {
	case OK:
		return "the cniwarden CNI server at %s could not take the request now: %s";
	case SERVER_DOWN:
		return "the cniwarden CNI server is down: cannot connect to %s: %s";
	case SERVER_GONE:
		return "the cniwarden CNI server at %s closed the connection before replying "
		       "(did it crash?): %s";
	case SERVER_SLOW:
		return "no reply from the cniwarden CNI server at %s in time: %s";
	default:
		return "unreadable reply from the cniwarden CNI server at %s: %s";
	}
}

int main(int argc, char **argv)
{
	(void)argc;
	signal(SIGPIPE, SIG_IGN);
	const char *slash = argv[0] ? strrchr(argv[0], '/') : NULL;
	const char *plugin = slash ? slash + 1 : (argv[0] ? argv[0] : "cniwarden-shim");
	if (strlen(plugin) > MAX_PLUGIN)
		plugin = "cniwarden-shim";
	const char *command = getenv("CNI_COMMAND");
	const char *sock = env_or("CNIWARDEN_SOCKET", DEFAULT_SOCKET);

	if (!command || !*command) {
		fprintf(stderr, CNIWARDEN_ABOUT_FORMAT, plugin);
		return 0;
	}
	if (strcmp(command, "VERSION") == 0) {
		static const char version[] = CNIWARDEN_VERSION_REPLY;
		return write_all(STDOUT_FILENO, version, sizeof(version) - 1) < 0 ? 1 : 0;
	}

	int64_t deadline = now_ms() + timeout_ms();
	struct buf in = {0};
	buf_reserve(&in, 1);
	if (read_stdin(&in, deadline) < 0) {
		if (errno == E2BIG)
			fail(&in, CNI_ERR_CONFIG, "network configuration on stdin is too large",
			     "more than 4 MiB");
		fail(&in, CNI_ERR_IO, "cannot read the network configuration from stdin",
		     strerror(errno));
	}
	struct buf req = {0};
	build_request(&req, plugin, &in);

	struct reply rep = {0};
	int err = 0;
	enum outcome o = exchange(sock, &req, &rep, deadline, &err);
	int is_del = strcmp(command, "DEL") == 0;
	int busy = o == OK && rep.code != 0 && error_code(&rep.out) == CNI_ERR_TRY_AGAIN;
	if (o == OK && !(is_del && busy)) {
		if (rep.err.len)
			(void)write_all(STDERR_FILENO, rep.err.data, rep.err.len);
		if (write_all(STDOUT_FILENO, rep.out.data, rep.out.len) < 0)
			return 1;
		return (int)rep.code;
	}

	char msg[600];
	const char *cause = o == OK		 ? "it answered code 11 (busy or timed out)"
			    : o == SERVER_GARBLED ? "protocol mismatch"
						  : strerror(err);
	snprintf(msg, sizeof(msg), describe(o), sock, cause);
	if (is_del) {
		char entry[4200];
		const char *queue = env_or("CNIWARDEN_DEL_QUEUE", DEFAULT_DEL_QUEUE);
		if (enqueue_del(queue, &req, entry, sizeof(entry)) == 0) {
			log_msg(plugin, "%s; DEL queued as %s for replay", msg, entry);
			return 0;
		}
		char details[600];
		snprintf(details, sizeof(details), "DEL queue %s: %s", queue, strerror(errno));
		fail(&in, CNI_ERR_TRY_AGAIN, msg, details);
	}
	if (strcmp(command, "STATUS") == 0)
		fail(&in, CNI_ERR_NOT_AVAILABLE, msg, "");
	fail(&in, CNI_ERR_TRY_AGAIN, msg, "");
}
