/*
 * bad_input: every exported function called with hostile or wrong input. Each call must
 * return the right non-zero status (or a neutral value) with a message, and never crash.
 * Exit 0 after checking all of them.
 *
 * usage: bad_input FOLDER
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "swapper.h"

static int checks = 0;

#define EXPECT(call, want)                                                           \
    do {                                                                             \
        SwapperStatus got_ = (call);                                                 \
        checks++;                                                                    \
        if (got_ != (want)) {                                                        \
            fprintf(stderr, "bad_input: %s:%d: %s gave %s, expected %s (%s)\n", __FILE__, \
                    __LINE__, #call, swapper_status_name(got_), swapper_status_name(want), \
                    swapper_last_error());                                           \
            exit(1);                                                                 \
        }                                                                            \
        if ((want) != SWAPPER_STATUS_OK && swapper_last_error()[0] == '\0') {        \
            fprintf(stderr, "bad_input: %s:%d: %s gave no message\n", __FILE__, __LINE__, #call); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

#define TRUE(cond)                                                                   \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            fprintf(stderr, "bad_input: %s:%d: %s is false\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char path[4096];
    uint64_t ids[3] = {1, 2, 3};
    uint64_t n = 0;
    size_t count = 0;
    void *p = NULL;

    /* Library-wide functions. */
    TRUE(swapper_version() != NULL && swapper_version()[0] != '\0');
    TRUE(strcmp(swapper_status_name((SwapperStatus)-1), "SWAPPER_STATUS_UNKNOWN") == 0);
    TRUE(strcmp(swapper_status_name((SwapperStatus)1000), "SWAPPER_STATUS_UNKNOWN") == 0);
    EXPECT(swapper_set_log_callback(NULL, NULL, (SwapperLogLevel)0), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_set_log_callback(NULL, NULL, (SwapperLogLevel)99), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_set_log_callback(NULL, NULL, SWAPPER_LOG_LEVEL_WARN), SWAPPER_STATUS_OK);

    /* Aligned memory. */
    EXPECT(swapper_alloc_aligned(4096, false, NULL), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_alloc_aligned(UINT64_MAX, false, &p), SWAPPER_STATUS_OUT_OF_MEMORY);
    EXPECT(swapper_alloc_aligned(UINT64_MAX / 4, true, &p), SWAPPER_STATUS_OUT_OF_MEMORY);
    swapper_free_aligned(NULL);
    int on_stack = 0;
    swapper_free_aligned(&on_stack); /* not ours: reported, not freed */
    TRUE(strstr(swapper_last_error(), "not allocated") != NULL);
    TRUE(!swapper_is_locked(NULL) && !swapper_is_locked(&on_stack));
    EXPECT(swapper_alloc_aligned(0, false, &p), SWAPPER_STATUS_OK);
    swapper_free_aligned(p);
    swapper_free_aligned(p); /* double free: reported, harmless */

    /* The engine: NULL and dead handles, absurd configurations. */
    SwapperIoConfig io_cfg;
    swapper_io_config_default(NULL);
    swapper_io_config_default(&io_cfg);
    SwapperIo *io = NULL;
    EXPECT(swapper_io_create(NULL, &io), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_io_create(&io_cfg, NULL), SWAPPER_STATUS_NULL_POINTER);
    SwapperIoConfig bad = io_cfg;
    bad.block_size = 0;
    EXPECT(swapper_io_create(&bad, &io), SWAPPER_STATUS_INVALID_ARGUMENT);
    bad.block_size = 3 << 20;
    EXPECT(swapper_io_create(&bad, &io), SWAPPER_STATUS_INVALID_ARGUMENT);
    bad = io_cfg;
    bad.queue_depth = 0;
    EXPECT(swapper_io_create(&bad, &io), SWAPPER_STATUS_INVALID_ARGUMENT);
    bad = io_cfg;
    bad.thread_count = 5000;
    EXPECT(swapper_io_create(&bad, &io), SWAPPER_STATUS_INVALID_ARGUMENT);
    bad = io_cfg;
    bad.backend = (SwapperBackend)42;
    EXPECT(swapper_io_create(&bad, &io), SWAPPER_STATUS_INVALID_ARGUMENT);
    bad = io_cfg;
    bad.direct_io = (SwapperDirectIo)-3;
    EXPECT(swapper_io_create(&bad, &io), SWAPPER_STATUS_INVALID_ARGUMENT);
    TRUE(io == NULL);
    SwapperIo *fake_io = (SwapperIo *)(uintptr_t)0x1234560;
    EXPECT(swapper_io_pread(NULL, &on_stack, 4, "/x", 0, false), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_io_pread(fake_io, &on_stack, 4, "/x", 0, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_io_wait(fake_io, &n), SWAPPER_STATUS_INVALID_ARGUMENT);
    SwapperIoConfig got;
    memset(&got, 0xab, sizeof got);
    EXPECT(swapper_io_get_config(NULL, &got), SWAPPER_STATUS_NULL_POINTER);
    TRUE(got.block_size == 0 && got.queue_depth == 0 && got.backend == 0); /* neutral after a failure */
    TRUE(swapper_io_block_size(NULL) == 0 && swapper_io_queue_depth(fake_io) == 0);
    TRUE(swapper_io_thread_count(NULL) == 0 && !swapper_io_single_submit(NULL) && !swapper_io_overlap_events(NULL));
    TRUE(swapper_io_backend(NULL) == SWAPPER_BACKEND_AUTO && swapper_io_direct_io(NULL) == SWAPPER_DIRECT_IO_AUTO);
    TRUE(swapper_io_pending(fake_io) == 0);
    swapper_io_destroy(NULL);
    swapper_io_destroy(fake_io);

    EXPECT(swapper_io_create(&io_cfg, &io), SWAPPER_STATUS_OK);
    snprintf(path, sizeof path, "%s/f", dir);
    EXPECT(swapper_io_pwrite(io, NULL, 10, path, 0, false), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_io_pwrite(io, &on_stack, 4, NULL, 0, false), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_io_pwrite(io, &on_stack, 4, "", 0, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_io_pwrite(io, &on_stack, UINT64_MAX, path, 0, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_io_pwrite(io, &on_stack, 4, path, UINT64_MAX - 1, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_io_pwrite(io, &on_stack, sizeof on_stack, path, 0, false), SWAPPER_STATUS_OK);
    EXPECT(swapper_io_pread(io, &on_stack, 4096, path, 0, false), SWAPPER_STATUS_IO_ERROR);
    snprintf(path, sizeof path, "%s/missing/f", dir);
    EXPECT(swapper_io_pwrite(io, &on_stack, 4, path, 0, true), SWAPPER_STATUS_NOT_FOUND);
    EXPECT(swapper_io_wait(io, NULL), SWAPPER_STATUS_OK);
    swapper_io_destroy(io);
    EXPECT(swapper_io_wait(io, &n), SWAPPER_STATUS_INVALID_ARGUMENT); /* destroyed */
    swapper_io_destroy(io);                                          /* twice: harmless */

    /* The swapper: configurations. */
    SwapperConfig cfg;
    swapper_config_default(NULL);
    swapper_config_default(&cfg);
    Swapper *s = NULL;
    EXPECT(swapper_create(&cfg, &s), SWAPPER_STATUS_NULL_POINTER); /* nvme_path NULL */
    EXPECT(swapper_create(NULL, &s), SWAPPER_STATUS_NULL_POINTER);
    cfg.nvme_path = dir;
    cfg.buffer_count = 2;
    cfg.buffer_numel = 1 << 20;
    EXPECT(swapper_create(&cfg, NULL), SWAPPER_STATUS_NULL_POINTER);
    SwapperConfig bc = cfg;
    bc.buffer_count = 0;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    bc = cfg;
    bc.dtype = (SwapperDtype)9;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    bc = cfg;
    bc.io.block_size = 12345;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    bc = cfg;
    bc.buffer_numel = UINT64_MAX / 2;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_OUT_OF_MEMORY);
    bc = cfg;
    bc.buffer_count = 1u << 30; /* a pool far larger than memory */
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_OUT_OF_MEMORY);
    snprintf(path, sizeof path, "%s/does-not-exist", dir);
    bc = cfg;
    bc.nvme_path = path;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_NOT_FOUND);
    snprintf(path, sizeof path, "%s/a-file", dir);
    FILE *f = fopen(path, "w");
    TRUE(f != NULL);
    fclose(f);
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    char link[4200];
    snprintf(link, sizeof link, "%s/a-link", dir);
    TRUE(symlink(dir, link) == 0);
    bc.nvme_path = link;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    bc.nvme_path = "/proc/self"; /* exists, not writable */
    TRUE(swapper_create(&bc, &s) != SWAPPER_STATUS_OK);
    TRUE(s == NULL);
    EXPECT(swapper_create_from_json(NULL, 0, SWAPPER_DTYPE_FP16, &s), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_create_from_json("{not json", 0, SWAPPER_DTYPE_FP16, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_create_from_json("{\"zero_optimization\": {\"offload_param\": {\"nvme_path\": 3}}}", 0,
                                    SWAPPER_DTYPE_FP16, &s),
           SWAPPER_STATUS_INVALID_ARGUMENT);
    TRUE(strstr(swapper_last_error(), "nvme_path") != NULL);
    EXPECT(swapper_create_from_json("{}", 0, (SwapperDtype)7, &s), SWAPPER_STATUS_INVALID_ARGUMENT);

    /* Several drives: nvme_paths. */
    char second[4200];
    snprintf(second, sizeof second, "%s/second-drive", dir);
    TRUE(mkdir(second, 0700) == 0);
    const char *drives[2] = {dir, second};
    bc = cfg;
    bc.nvme_path = NULL;
    bc.nvme_path_count = 2;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_NULL_POINTER); /* nvme_paths NULL */
    const char *with_null[2] = {dir, NULL};
    bc.nvme_paths = with_null;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_NULL_POINTER);
    TRUE(strstr(swapper_last_error(), "nvme_paths[1]") != NULL);
    const char *twice[2] = {dir, dir};
    bc.nvme_paths = twice;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    bc.nvme_paths = drives;
    bc.nvme_path = second; /* disagrees with nvme_paths[0] */
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_INVALID_ARGUMENT);
    bc.nvme_path = NULL;
    EXPECT(swapper_create(&bc, &s), SWAPPER_STATUS_OK);
    Swapper *again = NULL;
    bc.nvme_paths = drives + 1; /* the second drive alone: its rank folder is held */
    bc.nvme_path_count = 1;
    EXPECT(swapper_create(&bc, &again), SWAPPER_STATUS_BUSY);
    swapper_destroy(s);
    s = NULL;
    char json[9000];
    snprintf(json, sizeof json, "{\"zero_optimization\": {\"offload_param\": {\"nvme_path\": [\"%s\", \"%s\"]}}}",
             dir, second);
    EXPECT(swapper_create_from_json(json, 0, SWAPPER_DTYPE_FP16, &s), SWAPPER_STATUS_OK);
    swapper_destroy(s);
    s = NULL;

    /* The swapper: NULL, dead and fake handles. */
    Swapper *fake = (Swapper *)(uintptr_t)0xdeadbe00;
    EXPECT(swapper_get_buffer(NULL, 1, 1, &p), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_get_buffer(fake, 1, 1, &p), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_swap_out(fake, ids, 1, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_wait_reads(NULL), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_wait_writes(fake), SWAPPER_STATUS_INVALID_ARGUMENT);
    TRUE(swapper_available_buffers(fake) == 0 && !swapper_swappable(NULL, 1u << 30));
    TRUE(swapper_aligned_numel(NULL, 5) == 0 && swapper_io_aligned_numel(NULL, 5) == 0 && swapper_element_size(fake) == 0);
    swapper_destroy(NULL);
    swapper_destroy(fake);

    /* The swapper: wrong arguments on a live handle. */
    EXPECT(swapper_create(&cfg, &s), SWAPPER_STATUS_OK);
    EXPECT(swapper_get_buffer(s, 1, 0, &p), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_get_buffer(s, 1, cfg.buffer_numel + 1, &p), SWAPPER_STATUS_NO_BUFFER);
    EXPECT(swapper_get_buffer(s, 1, 100, NULL), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_get_buffer(s, 1, 100, &p), SWAPPER_STATUS_OK);
    EXPECT(swapper_get_buffer(s, 1, 100, &p), SWAPPER_STATUS_BAD_STATE);
    EXPECT(swapper_get_buffer(s, 2, 100, &p), SWAPPER_STATUS_OK);
    EXPECT(swapper_get_buffer(s, 3, 100, &p), SWAPPER_STATUS_NO_BUFFER);
    EXPECT(swapper_swap_out(s, NULL, 2, false), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_swap_out(s, ids, SIZE_MAX, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_swap_out(s, ids, 3, false), SWAPPER_STATUS_NOT_FOUND);
    uint64_t dup[2] = {1, 1};
    EXPECT(swapper_swap_out(s, dup, 2, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_swap_out(s, NULL, 0, false), SWAPPER_STATUS_OK); /* empty batch */
    EXPECT(swapper_swap_in(s, ids, 1, false, NULL), SWAPPER_STATUS_BAD_STATE); /* AVAILABLE */
    EXPECT(swapper_swap_out_and_release(s, ids, 2, true, false), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_swap_out_and_release(s, ids, 2, false, false), SWAPPER_STATUS_OK);
    EXPECT(swapper_release(s, ids, 1), SWAPPER_STATUS_OK); /* NOT_AVAILABLE: a no-op, as in DeepSpeed */
    EXPECT(swapper_release(s, NULL, 1), SWAPPER_STATUS_NULL_POINTER);
    void *const null_dest[2] = {NULL, NULL};
    EXPECT(swapper_swap_in(s, ids, 2, false, null_dest), SWAPPER_STATUS_NULL_POINTER);
    uint16_t *two[2] = {malloc(200), malloc(200)};
    uint64_t caps[2] = {100, 99};
    EXPECT(swapper_swap_in_buffers(s, ids, 2, false, (void *const *)two, caps), SWAPPER_STATUS_NO_BUFFER);
    EXPECT(swapper_swap_in_buffers(s, ids, 2, false, (void *const *)two, NULL), SWAPPER_STATUS_NULL_POINTER);
    caps[1] = 100;
    EXPECT(swapper_swap_in_buffers(s, ids, 2, false, (void *const *)two, caps), SWAPPER_STATUS_OK);
    EXPECT(swapper_release(s, ids, 2), SWAPPER_STATUS_OK);
    free(two[0]);
    free(two[1]);
    TRUE(swapper_buffer_numel(s) == cfg.buffer_numel && swapper_buffer_count(s) == 2);
    TRUE(swapper_buffer_numel(NULL) == 0 && swapper_buffer_count(fake) == 0);
    EXPECT(swapper_swap_into_buffer(s, 1, NULL, 100), SWAPPER_STATUS_NULL_POINTER);
    uint16_t small[10];
    EXPECT(swapper_swap_into_buffer(s, 1, small, 10), SWAPPER_STATUS_NO_BUFFER);
    EXPECT(swapper_swap_into_buffer(s, 99, small, 10), SWAPPER_STATUS_NOT_FOUND);
    SwapperParamStatus ps;
    EXPECT(swapper_param_status(s, 99, &ps), SWAPPER_STATUS_NOT_FOUND);
    EXPECT(swapper_param_status(s, 1, NULL), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_param_buffer(s, 1, &p, &n), SWAPPER_STATUS_BAD_STATE);
    EXPECT(swapper_reserve_available_buffers(s, NULL, 2, &count), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_reserve_available_buffers(s, &p, 1, NULL), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_reserve_partitioned_swap_space(s, NULL, 0), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_reserve_partitioned_swap_space(s, NULL, 3), SWAPPER_STATUS_NULL_POINTER);
    uint64_t huge = UINT64_MAX / 2;
    EXPECT(swapper_reserve_partitioned_swap_space(s, &huge, 1), SWAPPER_STATUS_OUT_OF_MEMORY);
    float src[100] = {0};
    const float *srcs[1] = {src};
    uint64_t numels[1] = {100};
    EXPECT(swapper_swap_out_partitioned(s, ids, srcs, numels, 1), SWAPPER_STATUS_BAD_STATE);
    EXPECT(swapper_reserve_partitioned_swap_space(s, numels, 1), SWAPPER_STATUS_OK);
    const float *null_srcs[1] = {NULL};
    EXPECT(swapper_swap_out_partitioned(s, ids, null_srcs, numels, 1), SWAPPER_STATUS_NULL_POINTER);
    const float *odd[1] = {(const float *)((const char *)src + 1)};
    EXPECT(swapper_swap_out_partitioned(s, ids, odd, numels, 1), SWAPPER_STATUS_INVALID_ARGUMENT);
    uint64_t wrong[1] = {50};
    EXPECT(swapper_swap_out_partitioned(s, ids, srcs, wrong, 1), SWAPPER_STATUS_INVALID_ARGUMENT);
    EXPECT(swapper_swap_out_partitioned(s, ids, srcs, numels, 1), SWAPPER_STATUS_OK);
    EXPECT(swapper_stats(s, NULL), SWAPPER_STATUS_NULL_POINTER);
    EXPECT(swapper_dump(s, NULL, 5, NULL), SWAPPER_STATUS_NULL_POINTER);
    char tiny[8];
    EXPECT(swapper_dump(s, tiny, sizeof tiny, NULL), SWAPPER_STATUS_OK);
    TRUE(strlen(tiny) == sizeof tiny - 1);
    swapper_destroy(s);
    EXPECT(swapper_wait_reads(s), SWAPPER_STATUS_INVALID_ARGUMENT);
    TRUE(swapper_live_handles() == 0 && swapper_io_live_handles() == 0);
    printf("bad_input: ok (%d checks)\n", checks);
    return 0;
}
