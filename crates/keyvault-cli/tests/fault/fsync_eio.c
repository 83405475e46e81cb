/* Test-only LD_PRELOAD library: failures of the database file's writes and syncs, as Linux reports them.
 *
 * Once the file named by $KV_FAULT_TRIGGER exists, the next fsync() or fdatasync() of each open descriptor of
 * a file named vault.db fails with EIO, once; later syncs of the same descriptor succeed (since Linux 4.13 a
 * write-back error is reported once per open file, then forgotten). With $KV_FAULT_WRITES set instead, every
 * pwrite() to vault.db fails at once with EDQUOT while the trigger exists (a quota: refused before anything is
 * written). Each failure is appended as a line to the trigger file's path + ".log". Used by
 * crates/keyvault-cli/tests/serve.rs. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_FD 65536
static unsigned char reported[MAX_FD];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int names_database(int fd) {
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 9) return 0;
    target[n] = 0;
    return strcmp(target + n - 9, "/vault.db") == 0;
}

/* Whether this sync is the one that reports the failure to its descriptor. */
static int fails_now(int fd) {
    const char *trigger = getenv("KV_FAULT_TRIGGER");
    if (!trigger || getenv("KV_FAULT_WRITES") || fd < 0 || fd >= MAX_FD || access(trigger, F_OK) != 0 || !names_database(fd)) return 0;
    pthread_mutex_lock(&lock);
    int first = !reported[fd];
    reported[fd] = 1;
    pthread_mutex_unlock(&lock);
    if (first) {
        char log[4200];
        snprintf(log, sizeof log, "%s.log", trigger);
        FILE *f = fopen(log, "a");
        if (f) { fprintf(f, "sync of fd %d failed with EIO\n", fd); fclose(f); }
    }
    return first;
}

/* Whether writes to `fd` are refused now. */
static int refuses_writes(int fd) {
    const char *trigger = getenv("KV_FAULT_TRIGGER");
    if (!trigger || !getenv("KV_FAULT_WRITES") || access(trigger, F_OK) != 0 || !names_database(fd)) return 0;
    char log[4200];
    snprintf(log, sizeof log, "%s.log", trigger);
    FILE *f = fopen(log, "a");
    if (f) { fprintf(f, "write to fd %d failed with EDQUOT\n", fd); fclose(f); }
    return 1;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    if (refuses_writes(fd)) { errno = EDQUOT; return -1; }
    return real(fd, buf, n, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    if (refuses_writes(fd)) { errno = EDQUOT; return -1; }
    return real(fd, buf, n, offset);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (fails_now(fd)) { errno = EIO; return -1; }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (fails_now(fd)) { errno = EIO; return -1; }
    return real(fd);
}
