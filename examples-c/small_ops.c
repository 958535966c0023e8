/*
 * small_ops: the caller-side cost of many small swap-ins with one I/O thread.
 *
 * ZeRO-3 parks every param in its own file and models have many small ones. For params
 * of 64 KiB and of 8 KiB this program parks COUNT params (default 4096, one file each),
 * then swaps them all in with ONE asynchronous batch (swapper_swap_in_buffers into
 * caller buffers) and waits, with aio thread_count 1, so the lookups, locking, path
 * formatting and opens of the submitting thread are on the critical path. It prints
 * the time of the submitting call alone, the batch's ops per second and MiB/s, checks
 * every byte, and prints the fio command line that does the same reads (one file per
 * op, --nrfiles COUNT, same block size, queue depth and O_DIRECT) for a side-by-side
 * comparison. Exit 0 when every byte came back.
 *
 * It is a benchmark, not a test: the test suite runs it with a small COUNT only to see
 * that it works. Run the real measurement on an otherwise idle machine.
 *
 * usage: small_ops FOLDER [COUNT]
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "swapper.h"

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "small_ops: %s:%d: ", __FILE__, __LINE__);         \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, " (last error: %s)\n", swapper_last_error());      \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define OK(call)                                                               \
    do {                                                                       \
        SwapperStatus st_ = (call);                                            \
        CHECK(st_ == SWAPPER_STATUS_OK, "%s -> %s", #call, swapper_status_name(st_)); \
    } while (0)

enum { PARK_BUFFERS = 64 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned char byte_of(uint64_t id, uint64_t i) { return (unsigned char)(id * 131u + i * 7u + (i >> 12)); }

static void run(const char *folder, uint64_t count, uint64_t kib) {
    const uint64_t nbytes = kib * 1024, numel = nbytes / 2;
    SwapperConfig cfg;
    swapper_config_default(&cfg);
    cfg.nvme_path = folder;
    cfg.dtype = SWAPPER_DTYPE_FP16;
    cfg.buffer_count = PARK_BUFFERS;
    cfg.buffer_numel = numel;
    cfg.io.thread_count = 1;
    Swapper *s = NULL;
    OK(swapper_create(&cfg, &s));

    /* Park: PARK_BUFFERS params at a time through the pool. */
    for (uint64_t id = 0; id < count; id++) {
        void *buf = NULL;
        OK(swapper_get_buffer(s, id, numel, &buf));
        for (uint64_t i = 0; i < nbytes; i++) ((unsigned char *)buf)[i] = byte_of(id, i);
        OK(swapper_swap_out_and_release(s, &id, 1, true, true));
        if (id % PARK_BUFFERS == PARK_BUFFERS - 1) OK(swapper_wait_writes(s));
    }
    OK(swapper_wait_writes(s));

    /* One batch of COUNT swap-ins into caller memory. */
    void *mem = NULL;
    OK(swapper_alloc_aligned(count * nbytes, false, &mem));
    uint64_t *ids = malloc(count * sizeof *ids);
    uint64_t *numels = malloc(count * sizeof *numels);
    void **bufs = malloc(count * sizeof *bufs);
    CHECK(ids != NULL && numels != NULL && bufs != NULL, "malloc");
    for (uint64_t i = 0; i < count; i++) {
        ids[i] = i;
        numels[i] = numel;
        bufs[i] = (unsigned char *)mem + i * nbytes;
    }
    memset(mem, 0, count * nbytes); /* fault the pages in before the clock starts */
    double t0 = now();
    OK(swapper_swap_in_buffers(s, ids, count, true, bufs, numels));
    double t1 = now();
    OK(swapper_wait_reads(s));
    double t2 = now();

    for (uint64_t id = 0; id < count; id++) {
        const unsigned char *p = bufs[id];
        for (uint64_t i = 0; i < nbytes; i++)
            CHECK(p[i] == byte_of(id, i), "param %llu differs at byte %llu", (unsigned long long)id,
                  (unsigned long long)i);
    }
    OK(swapper_release(s, ids, count));

    SwapperIoConfig io;
    io = cfg.io;
    printf("small_ops: %llu swap-ins of %llu KiB, thread_count 1, queue_depth %u: submit %.1f us/op, "
           "batch %.0f ops/s, %.1f MiB/s\n",
           (unsigned long long)count, (unsigned long long)kib, io.queue_depth, (t1 - t0) * 1e6 / (double)count,
           (double)count / (t2 - t0), (double)(count * nbytes) / 1048576.0 / (t2 - t0));
    printf("small_ops: fio equivalent: fio --name=small_ops_%llukib --directory=%s/fio-%llukib "
           "--nrfiles=%llu --filesize=%llu --bs=%llu --rw=read --direct=1 --ioengine=io_uring "
           "--iodepth=%u --numjobs=1 --file_service_type=sequential --openfiles=%u --group_reporting\n",
           (unsigned long long)kib, folder, (unsigned long long)kib, (unsigned long long)count,
           (unsigned long long)nbytes, (unsigned long long)nbytes, io.queue_depth, io.queue_depth);

    free(bufs);
    free(numels);
    free(ids);
    swapper_free_aligned(mem);
    swapper_destroy(s);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s FOLDER [COUNT]\n", argv[0]);
        return 2;
    }
    uint64_t count = 4096;
    if (argc == 3) {
        char *end = NULL;
        unsigned long long v = strtoull(argv[2], &end, 10);
        CHECK(end != argv[2] && *end == '\0' && v >= 1 && v <= (1u << 20), "COUNT must be 1 to 1048576");
        count = v;
    }
    run(argv[1], count, 64);
    run(argv[1], count, 8);
    CHECK(swapper_live_handles() == 0, "handle leaked");
    printf("small_ops: ok (%llu params of 64 KiB and of 8 KiB)\n", (unsigned long long)count);
    return 0;
}
