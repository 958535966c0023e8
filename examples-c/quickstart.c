/* The README's C quick start: write 64 MiB asynchronously, wait, read them back.
 * Usage: quickstart FOLDER (a folder on the disk to swap to). */
#include <stdio.h>
#include <string.h>
#include "swapper.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/x.swp", argv[1]);

    SwapperIoConfig cfg;
    swapper_io_config_default(&cfg);          /* block 1 MiB, queue depth 8, 1 thread */
    SwapperIo *io;
    if (swapper_io_create(&cfg, &io) != SWAPPER_STATUS_OK) {
        fprintf(stderr, "%s\n", swapper_last_error());
        return 1;
    }
    void *buf;                                /* NULL after a failure, as every out-parameter */
    SwapperStatus st = swapper_alloc_aligned(64 << 20, /*lock=*/true, &buf);
    if (st == SWAPPER_STATUS_OK) {
        memset(buf, 0x5a, 64 << 20);
        st = swapper_io_pwrite(io, buf, 64 << 20, path, 0, /*async_op=*/true);
    }
    uint64_t done;
    if (st == SWAPPER_STATUS_OK) {
        st = swapper_io_wait(io, &done);      /* first failure, all listed in swapper_last_error() */
    }
    if (st == SWAPPER_STATUS_OK) {
        memset(buf, 0, 64 << 20);
        st = swapper_io_pread(io, buf, 64 << 20, path, 0, /*async_op=*/false);
    }
    if (st != SWAPPER_STATUS_OK) {
        fprintf(stderr, "%s\n", swapper_last_error());
    } else if (((unsigned char *)buf)[(64 << 20) - 1] != 0x5a) {
        fprintf(stderr, "read back the wrong bytes\n");
        st = SWAPPER_STATUS_CORRUPT_DATA;
    } else {
        printf("libswapper %s: wrote and read back 64 MiB in %s: ok\n", swapper_version(), path);
    }
    swapper_free_aligned(buf);                /* NULL is a no-op */
    swapper_io_destroy(io);                   /* waits for anything in flight */
    return st == SWAPPER_STATUS_OK ? 0 : 1;
}
