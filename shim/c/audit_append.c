/* The audit writer's locked section in one call, so Python crosses into C
 * once per record instead of once per syscall (flock, lseek, write, flock).
 * Appends ``data`` (one complete record line built by shim/audit/writer.py)
 * only if the file still has ``expected_size`` bytes, i.e. nobody else
 * appended since this process's last record.  Returns the new size; -2 if the
 * size differs (the writer then takes its Python path, which re-reads the
 * tail); -3 if ``SC4_APPEND_NOWAIT`` is set and another process holds the
 * lock; -1 with errno set on an I/O error, after cutting any partial line of
 * ours.
 *
 * ``SC4_APPEND_NOWAIT`` is for a caller that keeps the GIL across the call
 * (shim/runtime.py): it must never sleep holding it, so it asks for the lock
 * without waiting and, on -3, calls again through cffi, which releases the
 * GIL and waits.  Without the flag the call may block on the lock and on
 * ``SC4_APPEND_SYNC``'s fdatasync. */
#include <errno.h>
#include <sys/file.h>
#include <unistd.h>
#include "core.h"

long long sc4_audit_append(int fd, long long expected_size, const char *data, size_t len, int flags)
{
    off_t size;
    size_t done = 0;
    int err;

    if (flock(fd, LOCK_EX | ((flags & SC4_APPEND_NOWAIT) ? LOCK_NB : 0)) != 0)
        return errno == EWOULDBLOCK && (flags & SC4_APPEND_NOWAIT) ? -3 : -1;
    size = lseek(fd, 0, SEEK_END);
    if (size < 0 || (long long)size != expected_size) {
        err = errno;
        flock(fd, LOCK_UN);
        errno = err;
        return size < 0 ? -1 : -2;
    }
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n <= 0) {
            err = n < 0 ? errno : EIO;
            if (done && ftruncate(fd, size) != 0) {
                /* the next writer's recovery record covers the torn line */
            }
            flock(fd, LOCK_UN);
            errno = err;
            return -1;
        }
        done += (size_t)n;
    }
    if ((flags & SC4_APPEND_SYNC) && fdatasync(fd) != 0) {
        err = errno;
        flock(fd, LOCK_UN);
        errno = err;
        return -1;
    }
    flock(fd, LOCK_UN);
    return (long long)size + (long long)len;
}
