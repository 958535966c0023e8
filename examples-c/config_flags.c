/*
 * config_flags: the yes/no settings of SwapperIoConfig and SwapperConfig are bytes, 0 for
 * false and any other value for true, so a struct filled by memset or by hand is well
 * defined. Each flag is set to a byte other than 0 and 1 and must act as true; libswapper
 * reports it back as 1. Built under the undefined-behaviour sanitizer by
 * tests/c_flags.rs, and plainly (and under valgrind) by tests/c_examples.rs.
 *
 * usage: config_flags FOLDER
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "swapper.h"

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "config_flags: %s:%d: %s is false (last error: %s)\n",   \
                    __FILE__, __LINE__, #cond, swapper_last_error());                \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

/* Stores `byte` in a flag field whatever its C type. */
#define SET_BYTE(field, byte) memset(&(field), (byte), sizeof(field))

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: config_flags FOLDER\n");
        return 2;
    }

    /* The engine: 2 and 0xFF are true; reported back as 1. */
    SwapperIoConfig io_cfg;
    swapper_io_config_default(&io_cfg);
    SET_BYTE(io_cfg.single_submit, 2);
    SET_BYTE(io_cfg.overlap_events, 0xFF);
    SwapperIo *io = NULL;
    CHECK(swapper_io_create(&io_cfg, &io) == SWAPPER_STATUS_OK);
    CHECK(swapper_io_single_submit(io));
    CHECK(swapper_io_overlap_events(io));
    SwapperIoConfig got;
    SET_BYTE(got, 0x55);
    CHECK(swapper_io_get_config(io, &got) == SWAPPER_STATUS_OK);
    uint8_t byte;
    memcpy(&byte, &got.single_submit, 1);
    CHECK(byte == 1);
    memcpy(&byte, &got.overlap_events, 1);
    CHECK(byte == 1);
    swapper_io_destroy(io);

    /* 0 is false. */
    SET_BYTE(io_cfg.single_submit, 0);
    SET_BYTE(io_cfg.overlap_events, 0);
    CHECK(swapper_io_create(&io_cfg, &io) == SWAPPER_STATUS_OK);
    CHECK(!swapper_io_single_submit(io));
    CHECK(!swapper_io_overlap_events(io));
    swapper_io_destroy(io);

    /* The swapper: verify_checksums = 0x80 turns checksums on, which a corrupted swap
     * file then proves; pin_memory = 2 asks for a page-locked pool. */
    SwapperConfig cfg;
    swapper_config_default(&cfg);
    cfg.nvme_path = argv[1];
    cfg.dtype = SWAPPER_DTYPE_FP16;
    cfg.buffer_count = 1;
    cfg.buffer_numel = 4096;
    SET_BYTE(cfg.pin_memory, 2);
    SET_BYTE(cfg.verify_checksums, 0x80);
    Swapper *s = NULL;
    CHECK(swapper_create(&cfg, &s) == SWAPPER_STATUS_OK);
    char dump[4096];
    size_t len = 0;
    CHECK(swapper_dump(s, dump, sizeof dump, &len) == SWAPPER_STATUS_OK);
    CHECK(strstr(dump, "checksums true") != NULL);
    void *buf = NULL;
    uint64_t id = 7;
    CHECK(swapper_get_buffer(s, id, 4096, &buf) == SWAPPER_STATUS_OK);
    memset(buf, 0x3C, 4096 * 2);
    CHECK(swapper_swap_out_and_release(s, &id, 1, false, false) == SWAPPER_STATUS_OK);
    /* The dump's first line is "swapper FOLDER". */
    CHECK(strncmp(dump, "swapper ", 8) == 0);
    char *eol = strchr(dump, '\n');
    CHECK(eol != NULL);
    *eol = '\0';
    char path[8192];
    /* Param 7 is the swapper's only one: the first bytes of its first extent file. */
    snprintf(path, sizeof path, "%s/extent-0.swp", dump + 8);
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, "x", 1, 100) == 1);
    close(fd);
    CHECK(swapper_swap_in(s, &id, 1, false, NULL) == SWAPPER_STATUS_CORRUPT_DATA);
    swapper_destroy(s);

    printf("config_flags: ok\n");
    return 0;
}
