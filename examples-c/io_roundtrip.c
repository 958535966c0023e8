/*
 * io_roundtrip: the I/O engine from C.
 *
 * Writes a buffer of 8 MiB + 123 bytes to a file in four asynchronous pieces, waits
 * once, reads it back synchronously (from an aligned and from a misaligned buffer),
 * checks every byte, and checks the errors a caller meets: a missing file, a read past
 * the end, NULL arguments. Exit status 0 when everything holds.
 *
 * usage: io_roundtrip FOLDER
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "swapper.h"

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "io_roundtrip: %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, " (last error: %s)\n", swapper_last_error());      \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static void fill(unsigned char *p, size_t n, unsigned seed) {
    unsigned x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/io_roundtrip.bin", argv[1]);

    SwapperIoConfig config;
    swapper_io_config_default(&config);
    CHECK(config.block_size == 1048576 && config.queue_depth == 8 && config.thread_count == 1,
          "unexpected defaults");
    config.thread_count = 3; /* the size below is not a multiple of 3: no matter */

    SwapperIo *io = NULL;
    SwapperStatus st = swapper_io_create(&config, &io);
    CHECK(st == SWAPPER_STATUS_OK, "create: %s", swapper_status_name(st));
    CHECK(swapper_io_thread_count(io) == 3, "thread count getter");
    CHECK(swapper_io_backend(io) != SWAPPER_BACKEND_AUTO, "backend must be resolved");

    const uint64_t size = 8u * 1024 * 1024 + 123;
    void *src = NULL;
    st = swapper_alloc_aligned(size, true, &src);
    CHECK(st == SWAPPER_STATUS_OK, "alloc: %s", swapper_status_name(st));
    CHECK(((uintptr_t)src % swapper_io_alignment()) == 0, "allocation is not aligned");
    fill(src, size, 42);

    /* Four asynchronous writes of uneven pieces, then one wait. */
    const uint64_t cuts[5] = {0, 1000, 3u * 1024 * 1024 + 1, 6u * 1024 * 1024, size};
    for (int i = 0; i < 4; i++) {
        st = swapper_io_pwrite(io, (const unsigned char *)src + cuts[i], cuts[i + 1] - cuts[i], path,
                               cuts[i], true);
        CHECK(st == SWAPPER_STATUS_OK, "async write %d: %s", i, swapper_status_name(st));
    }
    uint64_t done = 0;
    st = swapper_io_wait(io, &done);
    CHECK(st == SWAPPER_STATUS_OK && done == 4, "wait: %s, %llu done", swapper_status_name(st),
          (unsigned long long)done);

    /* Synchronous read into an aligned buffer. */
    void *dst = NULL;
    CHECK(swapper_alloc_aligned(size, false, &dst) == SWAPPER_STATUS_OK, "alloc dst");
    st = swapper_io_pread(io, dst, size, path, 0, false);
    CHECK(st == SWAPPER_STATUS_OK, "read: %s", swapper_status_name(st));
    CHECK(memcmp(src, dst, size) == 0, "aligned read-back differs");

    /* Asynchronous read into a misaligned heap buffer, at an odd offset. */
    unsigned char *heap = malloc(size + 1);
    CHECK(heap != NULL, "malloc");
    st = swapper_io_pread(io, heap + 1, size - 777, path, 777, true);
    CHECK(st == SWAPPER_STATUS_OK, "async read: %s", swapper_status_name(st));
    CHECK(swapper_io_wait(io, &done) == SWAPPER_STATUS_OK && done == 1, "wait read");
    CHECK(memcmp((unsigned char *)src + 777, heap + 1, size - 777) == 0, "misaligned read-back differs");

    /* Errors: a status and a message, never a crash. */
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/does-not-exist", argv[1]);
    st = swapper_io_pread(io, dst, 4096, missing, 0, false);
    CHECK(st == SWAPPER_STATUS_NOT_FOUND, "missing file gave %s", swapper_status_name(st));
    CHECK(strstr(swapper_last_error(), "does-not-exist") != NULL, "message must name the path");
    st = swapper_io_pread(io, dst, size, path, 4096, false);
    CHECK(st == SWAPPER_STATUS_IO_ERROR, "read past end gave %s", swapper_status_name(st));
    CHECK(strstr(swapper_last_error(), "past end of file") != NULL, "message must say past end");
    CHECK(swapper_io_pread(NULL, dst, 1, path, 0, false) == SWAPPER_STATUS_NULL_POINTER, "NULL io");
    CHECK(swapper_io_pread(io, NULL, 1, path, 0, false) == SWAPPER_STATUS_NULL_POINTER, "NULL buffer");
    CHECK(swapper_io_pread(io, dst, 1, NULL, 0, false) == SWAPPER_STATUS_NULL_POINTER, "NULL path");
    SwapperIo *none = io; /* after a failure every out-parameter is neutral: NULL here */
    CHECK(swapper_io_create(NULL, &none) == SWAPPER_STATUS_NULL_POINTER && none == NULL, "NULL config");
    config.block_size = 3000;
    SwapperIo *bad = NULL;
    CHECK(swapper_io_create(&config, &bad) == SWAPPER_STATUS_INVALID_ARGUMENT && bad == NULL,
          "block size 3000 must be refused");
    CHECK(swapper_io_wait(io, &done) == SWAPPER_STATUS_OK && done == 0, "empty wait is a no-op");
    CHECK(strcmp(swapper_status_name(SWAPPER_STATUS_CORRUPT_DATA), "SWAPPER_STATUS_CORRUPT_DATA") == 0,
          "status name");
    CHECK(strcmp(swapper_status_name((SwapperStatus)99), "SWAPPER_STATUS_UNKNOWN") == 0, "unknown name");

    free(heap);
    swapper_free_aligned(dst);
    swapper_free_aligned(src);
    swapper_io_destroy(io);
    /* A destroyed handle is reported, not dereferenced. */
    CHECK(swapper_io_pread(io, NULL, 0, path, 0, false) == SWAPPER_STATUS_INVALID_ARGUMENT, "dead handle");
    CHECK(swapper_io_live_handles() == 0, "handles leaked");
    printf("io_roundtrip: ok (libswapper %s)\n", swapper_version());
    return 0;
}
