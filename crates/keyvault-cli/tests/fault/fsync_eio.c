/* Test-only LD_PRELOAD library: a failed write-back of the database file, as Linux reports one.
 *
 * Once the file named by $KV_FAULT_TRIGGER exists, the next fsync() or fdatasync() of each open descriptor of
 * a file named vault.db fails with EIO, once; later syncs of the same descriptor succeed (since Linux 4.13 a
 * write-back error is reported once per open file, then forgotten). Each failure is appended as a line to the
 * trigger file's path + ".log". Used by crates/keyvault-cli/tests/serve.rs. */
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
    if (!trigger || fd < 0 || fd >= MAX_FD || access(trigger, F_OK) != 0 || !names_database(fd)) return 0;
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
