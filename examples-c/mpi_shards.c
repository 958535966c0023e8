/*
 * mpi_shards: libswapper under an MPI launcher, one swapper per rank.
 *
 * Every rank creates its swapper on the same nvme_path with its MPI rank (so each gets
 * its own rank folder), parks its own shard of params on NVMe (asynchronous swap-out
 * through a small pool), then reads them back prefetching one param ahead, and checks
 * every byte. Each value encodes the rank, the param and the element, so a param read
 * from another rank's folder or another param's file is caught. The ranks agree on the
 * result with MPI_Allreduce of their error counts: every rank exits 1 if any rank saw a
 * mismatch or a failed call, 0 otherwise.
 *
 * Rank 0 prints the aggregate bandwidth of the swap-out and swap-in phases: the bytes
 * moved by all ranks divided by the wall time between two barriers (MPI_Wtime), so the
 * program doubles as a benchmark of several ranks sharing one disk (compare -np 4 with
 * -np 1 at the same --mib and --params). The timed phases include filling and checking
 * the values (a few GB/s per core), as a training step's compute would.
 *
 * usage: mpirun -np 4 mpi_shards FOLDER [--params N] [--mib M] [--corrupt-rank R]
 *   --params N        params per rank (default 8)
 *   --mib M           MiB per param (default 1)
 *   --corrupt-rank R  self-test of the check: rank R overwrites the first 8 bytes of
 *                     one of its own swap files after parking, behind the swapper's
 *                     back; the run must then fail on every rank.
 */
#define _POSIX_C_SOURCE 200809L /* pwrite, opendir */
#include <dirent.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "swapper.h"

enum { BUFFERS = 4 };

static int rank_, ranks_;
static long errors_; /* this rank's failed calls and wrong values */

/* Counts a failed call (a message names it); the rank carries on so that it still meets
 * the others at every barrier and at the reduction. */
static int ok(SwapperStatus st, const char *what, uint64_t id) {
    if (st == SWAPPER_STATUS_OK) return 1;
    fprintf(stderr, "mpi_shards: rank %d: %s (param %llu) -> %s: %s\n", rank_, what,
            (unsigned long long)id, swapper_status_name(st), swapper_last_error());
    errors_++;
    return 0;
}

/* Elements of param `id` (fp16): not a multiple of the block size, so every file has a
 * partial last block. */
static uint64_t numel_of(uint64_t base, uint64_t id) { return base - id * 3; }

/* The 8-byte word at index i of param id on this rank. */
static uint64_t word(uint64_t id, uint64_t i) {
    return ((uint64_t)rank_ << 56) ^ (id << 40) ^ (i * 0x9E3779B97F4A7C15ull);
}

static void fill(unsigned char *p, uint64_t nbytes, uint64_t id) {
    uint64_t words = nbytes / 8;
    for (uint64_t i = 0; i < words; i++) {
        uint64_t w = word(id, i);
        memcpy(p + i * 8, &w, 8);
    }
    for (uint64_t i = words * 8; i < nbytes; i++) p[i] = (unsigned char)(id + i);
}

/* Counts the param's wrong words (and tail bytes); reports the first. */
static long verify(const unsigned char *p, uint64_t nbytes, uint64_t id) {
    long bad = 0;
    uint64_t words = nbytes / 8;
    for (uint64_t i = 0; i < words; i++) {
        uint64_t w;
        memcpy(&w, p + i * 8, 8);
        if (w != word(id, i) && bad++ == 0)
            fprintf(stderr, "mpi_shards: rank %d: param %llu differs at byte %llu\n", rank_,
                    (unsigned long long)id, (unsigned long long)(i * 8));
    }
    for (uint64_t i = words * 8; i < nbytes; i++)
        if (p[i] != (unsigned char)(id + i) && bad++ == 0)
            fprintf(stderr, "mpi_shards: rank %d: param %llu differs at byte %llu\n", rank_,
                    (unsigned long long)id, (unsigned long long)i);
    return bad;
}

/* Overwrites the first 8 bytes of one swap file in this rank's folder (the layout is the
 * documented <nvme_path>/zero_stage_3/float16params/rank<R>/). */
static void corrupt_one_file(const char *folder) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/zero_stage_3/float16params/rank%d", folder, rank_);
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "mpi_shards: rank %d: cannot open %s\n", rank_, dir);
        errors_++;
        return;
    }
    struct dirent *e;
    int done = 0;
    while (!done && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_WRONLY);
        if (fd < 0) continue;
        static const char junk[] = "CORRUPT!";
        done = pwrite(fd, junk, 8, 0) == 8;
        close(fd);
        if (done) fprintf(stderr, "mpi_shards: rank %d: corrupted %s on purpose\n", rank_, path);
    }
    closedir(d);
    if (!done) {
        fprintf(stderr, "mpi_shards: rank %d: found no swap file to corrupt in %s\n", rank_, dir);
        errors_++;
    }
}

static int parse_count(const char *s, long max, long *out) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > max) return 0;
    *out = v;
    return 1;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks_);

    long params = 8, mib = 1, corrupt_rank = -1;
    int usage = argc < 2;
    for (int i = 2; i < argc && !usage; i += 2) {
        long *dst = strcmp(argv[i], "--params") == 0         ? &params
                    : strcmp(argv[i], "--mib") == 0          ? &mib
                    : strcmp(argv[i], "--corrupt-rank") == 0 ? &corrupt_rank
                                                             : NULL;
        usage = dst == NULL || i + 1 >= argc || !parse_count(argv[i + 1], 1L << 20, dst);
    }
    if (usage || params < 1 || mib < 1) {
        if (rank_ == 0)
            fprintf(stderr, "usage: mpirun -np N %s FOLDER [--params N] [--mib M] [--corrupt-rank R]\n",
                    argv[0]);
        MPI_Finalize();
        return 2;
    }
    const char *folder = argv[1];
    const uint64_t base = (uint64_t)mib << 19; /* fp16 elements in M MiB */

    SwapperConfig cfg;
    swapper_config_default(&cfg);
    cfg.nvme_path = folder;
    cfg.rank = (uint32_t)rank_;
    cfg.dtype = SWAPPER_DTYPE_FP16;
    cfg.buffer_count = BUFFERS;
    cfg.buffer_numel = base;
    Swapper *s = NULL;
    int live = ok(swapper_create(&cfg, &s), "swapper_create", 0);

    /* Park the shard: fill a pool buffer, queue its write, release it when written. */
    uint64_t bytes_out = 0, bytes_in = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (uint64_t id = 0; live && id < (uint64_t)params; id++) {
        void *buf = NULL;
        uint64_t n = numel_of(base, id);
        if (!ok(swapper_get_buffer(s, id, n, &buf), "swapper_get_buffer", id)) break;
        fill(buf, n * 2, id);
        if (!ok(swapper_swap_out_and_release(s, &id, 1, true, true), "swapper_swap_out_and_release", id))
            break;
        bytes_out += n * 2;
        if (id % BUFFERS == BUFFERS - 1 && !ok(swapper_wait_writes(s), "swapper_wait_writes", id)) break;
    }
    if (live) ok(swapper_wait_writes(s), "swapper_wait_writes", 0);
    MPI_Barrier(MPI_COMM_WORLD);
    double t1 = MPI_Wtime();

    if (corrupt_rank == rank_) corrupt_one_file(folder);
    MPI_Barrier(MPI_COMM_WORLD);

    /* Read the shard back, one param ahead of the one being checked. */
    double t2 = MPI_Wtime();
    uint64_t first = 0;
    int reading = live && errors_ == 0 && ok(swapper_swap_in(s, &first, 1, true, NULL), "swapper_swap_in", 0);
    for (uint64_t id = 0; reading && id < (uint64_t)params; id++) {
        if (!ok(swapper_wait_params(s, &id, 1), "swapper_wait_params", id)) break;
        uint64_t next = id + 1;
        if (next < (uint64_t)params && !ok(swapper_swap_in(s, &next, 1, true, NULL), "swapper_swap_in", next))
            break;
        void *buf = NULL;
        uint64_t n = 0;
        if (!ok(swapper_param_buffer(s, id, &buf, &n), "swapper_param_buffer", id)) break;
        if (n != numel_of(base, id)) {
            fprintf(stderr, "mpi_shards: rank %d: param %llu has %llu elements\n", rank_,
                    (unsigned long long)id, (unsigned long long)n);
            errors_++;
        } else {
            errors_ += verify(buf, n * 2, id);
        }
        bytes_in += n * 2;
        if (!ok(swapper_release(s, &id, 1), "swapper_release", id)) break;
    }
    if (live) ok(swapper_wait_reads(s), "swapper_wait_reads", 0);
    MPI_Barrier(MPI_COMM_WORLD);
    double t3 = MPI_Wtime();
    if (live) swapper_destroy(s);

    long total_errors = 0;
    unsigned long long mine[2] = {bytes_out, bytes_in}, all[2] = {0, 0};
    MPI_Allreduce(&errors_, &total_errors, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(mine, all, 2, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0) {
        printf("mpi_shards: %d ranks, %ld params of %ld MiB each per rank\n", ranks_, params, mib);
        printf("mpi_shards: swap-out %.1f MiB in %.3f s: %.1f MiB/s aggregate\n", all[0] / 1048576.0,
               t1 - t0, all[0] / 1048576.0 / (t1 - t0));
        printf("mpi_shards: swap-in  %.1f MiB in %.3f s: %.1f MiB/s aggregate\n", all[1] / 1048576.0,
               t3 - t2, all[1] / 1048576.0 / (t3 - t2));
        if (total_errors == 0)
            printf("mpi_shards: ok (%d ranks agree: every byte verified)\n", ranks_);
        else
            printf("mpi_shards: FAILED: %ld errors over %d ranks\n", total_errors, ranks_);
    }
    MPI_Finalize();
    return total_errors == 0 ? 0 : 1;
}
