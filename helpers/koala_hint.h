/* koala helper hints for C and C++: tell koala which request a thread works for.
 *
 *   #include "koala_hint.h"
 *   koala_hint_delegate(request_id);   // before each send made for that request
 *   koala_hint_shutdown();             // this thread's request is complete
 *
 * Hints are UDP datagrams to 127.127.127.127:127, consumed by libkoala.so;
 * without it they go to an address nobody listens on. The number travels in
 * the body (sendto flags stay 0). Header-only, no dependencies, thread-safe,
 * errno preserved: a hint never disturbs the caller.
 */
#ifndef KOALA_HINT_H
#define KOALA_HINT_H

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define KOALA_HINT_DELEGATE "to-koala!set-delegated-from-thread-id"
#define KOALA_HINT_SHUTDOWN "to-koala!thread-shutdown"

/* One UDP socket per translation unit, created on first use. */
static inline int koala_hint_socket_(void) {
    static int shared = -1;
    int fd = __atomic_load_n(&shared, __ATOMIC_ACQUIRE);
    if (fd >= 0) return fd;
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int expected = -1;
    if (!__atomic_compare_exchange_n(&shared, &expected, fd, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        close(fd); /* another thread won the race */
        return expected;
    }
    return fd;
}

static inline void koala_hint_send_(const char *command, unsigned long long number, int has_number) {
    int saved_errno = errno;
    char payload[96];
    int len = has_number ? snprintf(payload, sizeof payload, "%s\n%llu", command, number)
                         : snprintf(payload, sizeof payload, "%s\n", command);
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(127);
    to.sin_addr.s_addr = htonl(0x7f7f7f7fu); /* 127.127.127.127 */
    int fd = koala_hint_socket_();
    if (fd >= 0 && len > 0)
        (void)sendto(fd, payload, (size_t)len, 0, (const struct sockaddr *)&to, sizeof to);
    errno = saved_errno;
}

/* From now on, this thread's sends belong to request `virtual_id` (0: none). */
static inline void koala_hint_delegate(unsigned long long virtual_id) {
    koala_hint_send_(KOALA_HINT_DELEGATE, virtual_id, 1);
}

/* End and record this thread's current request now (one-way protocols). */
static inline void koala_hint_shutdown(void) {
    koala_hint_send_(KOALA_HINT_SHUTDOWN, 0, 0);
}

/* End and record the request of virtual thread `virtual_id` now. */
static inline void koala_hint_shutdown_virtual(unsigned long long virtual_id) {
    koala_hint_send_(KOALA_HINT_SHUTDOWN, virtual_id, 1);
}

#endif /* KOALA_HINT_H */
