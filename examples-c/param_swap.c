/*
 * param_swap: a miniature training loop over the parameter swapper.
 *
 * 32 params of a few MiB each live on NVMe; the pool has 4 buffers. Each step prefetches
 * the next layer asynchronously while "computing" on the current one (verifying its
 * data), then releases it. Also exercises the errors a runtime meets. Exit 0 when all
 * holds.
 *
 * usage: param_swap FOLDER
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "swapper.h"

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "param_swap: %s:%d: ", __FILE__, __LINE__);        \
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

enum { PARAMS = 32, BUFFERS = 4 };

static uint64_t numel_of(uint64_t id) { return (1u << 20) + id * 4099; } /* ~2 MiB of fp16 */

static uint16_t value(uint64_t id, uint64_t i) { return (uint16_t)(id * 7919u + i * 31u); }

static void fill(uint16_t *p, uint64_t id) {
    for (uint64_t i = 0; i < numel_of(id); i++) p[i] = value(id, i);
}

static void verify(const uint16_t *p, uint64_t id) {
    for (uint64_t i = 0; i < numel_of(id); i++)
        CHECK(p[i] == value(id, i), "param %llu differs at element %llu", (unsigned long long)id,
              (unsigned long long)i);
}

/* A caller's allocator for the pool (a runtime would use cudaHostAlloc): counts its calls. */
struct alloc_stats {
    int allocs, frees;
    uint64_t bytes;
};

static void *my_alloc(uint64_t nbytes, uint64_t alignment, void *user) {
    struct alloc_stats *st = user;
    st->allocs++;
    st->bytes = nbytes;
    return aligned_alloc((size_t)alignment, (size_t)((nbytes + alignment - 1) / alignment * alignment));
}

static void my_free(void *ptr, uint64_t nbytes, void *user) {
    struct alloc_stats *st = user;
    CHECK(nbytes == st->bytes, "free_fn got %llu bytes, alloc_fn gave %llu", (unsigned long long)nbytes,
          (unsigned long long)st->bytes);
    st->frees++;
    free(ptr);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    SwapperConfig cfg;
    swapper_config_default(&cfg);
    cfg.nvme_path = argv[1];
    cfg.dtype = SWAPPER_DTYPE_FP16;
    cfg.buffer_count = BUFFERS;
    cfg.buffer_numel = 2u << 20;
    cfg.pin_memory = true;
    cfg.verify_checksums = true; /* a crc32c of every param, checked on every read */
    Swapper *s = NULL;
    OK(swapper_create(&cfg, &s));
    CHECK(swapper_element_size(s) == 2, "element size");

    /* A second swapper on the same folder is refused while the first lives. */
    Swapper *second = NULL;
    CHECK(swapper_create(&cfg, &second) == SWAPPER_STATUS_BUSY && second == NULL, "second swapper must be busy");

    /* Park every param on NVMe: fill a buffer, swap out and release. */
    for (uint64_t id = 0; id < PARAMS; id++) {
        void *buf = NULL;
        OK(swapper_get_buffer(s, id, numel_of(id), &buf));
        fill(buf, id);
        OK(swapper_swap_out_and_release(s, &id, 1, true, true));
        if (id % BUFFERS == BUFFERS - 1) OK(swapper_wait_writes(s));
    }
    OK(swapper_wait_writes(s));
    CHECK(swapper_available_buffers(s) == BUFFERS, "all buffers free after parking");

    /* Three epochs of forward passes: prefetch layer i+1 while computing on layer i. */
    for (int epoch = 0; epoch < 3; epoch++) {
        uint64_t first = 0;
        OK(swapper_swap_in(s, &first, 1, true, NULL));
        for (uint64_t id = 0; id < PARAMS; id++) {
            if (epoch == 2)
                OK(swapper_wait_params(s, &id, 1)); /* only this layer: the prefetch stays in flight */
            else
                OK(swapper_wait_reads(s));
            if (id + 1 < PARAMS) {
                uint64_t next = id + 1;
                OK(swapper_swap_in(s, &next, 1, true, NULL)); /* prefetch */
                SwapperParamStatus ps;
                OK(swapper_param_status(s, next, &ps));
                CHECK(ps == SWAPPER_PARAM_STATUS_INFLIGHT || ps == SWAPPER_PARAM_STATUS_AVAILABLE, "prefetch state");
            }
            void *buf = NULL;
            uint64_t n = 0;
            OK(swapper_param_buffer(s, id, &buf, &n));
            CHECK(n == numel_of(id), "numel");
            verify(buf, id); /* "compute" */
            OK(swapper_release(s, &id, 1));
        }
        OK(swapper_wait_reads(s));
    }

    SwapperStats st;
    OK(swapper_stats(s, &st));
    CHECK(st.free_buffers == BUFFERS && st.pending_reads == 0 && st.pending_writes == 0, "stats at rest");
    CHECK(st.bytes_read >= 3ull * PARAMS * (2u << 20), "bytes read counted");

    /* Misuse: a status and a message, and nothing changes. */
    uint64_t bad[2] = {3, 999};
    CHECK(swapper_swap_in(s, bad, 2, true, NULL) == SWAPPER_STATUS_NOT_FOUND, "unknown id");
    CHECK(strstr(swapper_last_error(), "999") != NULL, "message names the id");
    SwapperParamStatus ps;
    OK(swapper_param_status(s, 3, &ps));
    CHECK(ps == SWAPPER_PARAM_STATUS_NOT_AVAILABLE, "a failed batch changes nothing");
    uint64_t dup[2] = {4, 4};
    CHECK(swapper_swap_in(s, dup, 2, false, NULL) == SWAPPER_STATUS_INVALID_ARGUMENT, "duplicate id");
    uint64_t five[5] = {0, 1, 2, 3, 4};
    CHECK(swapper_swap_in(s, five, 5, false, NULL) == SWAPPER_STATUS_NO_BUFFER, "not enough buffers");
    CHECK(swapper_release(s, five, 1) == SWAPPER_STATUS_OK, "release of what holds nothing: a no-op, as in DeepSpeed");
    uint64_t unknown = 999;
    CHECK(swapper_release(s, &unknown, 1) == SWAPPER_STATUS_OK, "release of an unknown id: a no-op, as in DeepSpeed");
    void *big = NULL;
    CHECK(swapper_get_buffer(s, 77, cfg.buffer_numel + 1, &big) == SWAPPER_STATUS_NO_BUFFER, "too large");
    CHECK(swapper_wait_reads(s) == SWAPPER_STATUS_OK, "wait with nothing pending is a no-op");
    CHECK(swapper_swap_out(s, NULL, 3, false) == SWAPPER_STATUS_NULL_POINTER, "NULL ids");
    CHECK(swapper_swap_out_and_release(s, five, 1, true, false) != SWAPPER_STATUS_OK, "async release unforced");

    /* Read one param straight into a caller buffer, misaligned on purpose. */
    uint16_t *mine = malloc(numel_of(9) * 2 + 2);
    CHECK(mine != NULL, "malloc");
    OK(swapper_swap_into_buffer(s, 9, (char *)mine + 2, numel_of(9)));
    verify((uint16_t *)((char *)mine + 2), 9);
    free(mine);

    size_t len = 0;
    OK(swapper_dump(s, NULL, 0, &len));
    CHECK(len > 100, "dump has content");

    swapper_destroy(s);
    CHECK(swapper_live_handles() == 0, "handle leaked");
    /* The folder is free again; this time the pool comes from the caller's allocator. */
    struct alloc_stats as = {0, 0, 0};
    cfg.alloc_fn = my_alloc;
    cfg.free_fn = my_free;
    cfg.allocator_user_data = &as;
    OK(swapper_create(&cfg, &s));
    CHECK(as.allocs == 1 && as.bytes >= (uint64_t)BUFFERS * cfg.buffer_numel * 2, "alloc_fn used for the pool");
    uint64_t id0 = 0;
    void *b0 = NULL;
    OK(swapper_get_buffer(s, id0, numel_of(0), &b0));
    fill(b0, 0);
    OK(swapper_swap_out_and_release(s, &id0, 1, false, false));
    OK(swapper_swap_in(s, &id0, 1, false, NULL));
    OK(swapper_param_buffer(s, id0, &b0, NULL));
    verify(b0, 0);
    swapper_destroy(s);
    CHECK(as.frees == 1, "free_fn called once at destroy");
    cfg.free_fn = NULL;
    CHECK(swapper_create(&cfg, &s) == SWAPPER_STATUS_INVALID_ARGUMENT, "alloc_fn without free_fn");
    printf("param_swap: ok (%d params, %d buffers, 3 epochs)\n", PARAMS, BUFFERS);
    return 0;
}
