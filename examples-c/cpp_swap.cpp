/*
 * cpp_swap: the C++ wrapper (include/swapper.hpp).
 *
 * A small swap loop: ten fp32 params of uneven sizes go through a pool of three buffers
 * (fill, swap out and release, swap back in batches, verify every element), then the
 * errors a caller meets arrive as swapper::Error with their status, and the RAII owners
 * leave no handle behind. Exit status 0 when everything holds.
 *
 * usage: cpp_swap FOLDER
 */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "swapper.hpp"

#define CHECK(cond, what)                                                                     \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            std::fprintf(stderr, "cpp_swap: %s:%d: %s\n", __FILE__, __LINE__, what);          \
            std::exit(1);                                                                     \
        }                                                                                     \
    } while (0)

static float value(std::uint64_t id, std::uint64_t i) { return static_cast<float>(id * 1000003u + i % 9973u); }

template <typename F> static SwapperStatus status_of(F &&f) {
    try {
        f();
    } catch (const swapper::Error &e) {
        CHECK(!e.message().empty() && std::strstr(e.what(), e.status_name()) != nullptr, "error text");
        return e.status();
    }
    return SWAPPER_STATUS_OK;
}

static void swap_loop(const char *folder) {
    SwapperConfig config = swapper::Swapper::default_config(folder);
    config.dtype = SWAPPER_DTYPE_FP32;
    config.buffer_count = 3;
    config.buffer_numel = 1 << 16;
    config.io.block_size = 1 << 16;
    config.io.thread_count = 2;
    CHECK(swapper::Swapper::page_locked_bytes(config) == 0, "an unpinned pool locks nothing");
    config.pin_memory = 1;
    /* 3 buffers of 2^16 fp32 elements: 768 KiB, whole pages. */
    CHECK(swapper::Swapper::page_locked_bytes(config) == 3 * (1 << 18), "a pinned pool's bytes");
    config.pin_memory = 0;
    config.buffer_count = 0;
    CHECK(status_of([&] { (void)swapper::Swapper::page_locked_bytes(config); }) == SWAPPER_STATUS_INVALID_ARGUMENT,
          "an invalid config throws");
    config.buffer_count = 3;
    swapper::Swapper s(config);
    CHECK(s.element_size() == 4, "element size");

    const std::uint64_t params = 10;
    auto numel = [](std::uint64_t id) { return 1000 + id * 5000; };
    for (std::uint64_t id = 0; id < params; id++) {
        float *p = s.get_buffer<float>(id, numel(id));
        for (std::uint64_t i = 0; i < numel(id); i++) p[i] = value(id, i);
        s.swap_out_and_release({id}, /*async_op=*/id % 2 == 1, /*force_buffer_release=*/true);
        if (s.available_buffers() == 0) s.wait_writes();
    }
    s.wait_writes();
    CHECK(s.available_buffers() == 3, "all buffers back");

    for (std::uint64_t id = 0; id + 1 < params; id += 2) {
        s.swap_in({id, id + 1}, /*async_op=*/true);
        s.wait_params({id});
        s.wait_reads();
        for (std::uint64_t k = id; k < id + 2; k++) {
            CHECK(s.param_status(k) == SWAPPER_PARAM_STATUS_AVAILABLE, "available after wait");
            auto buf = s.param_buffer<float>(k);
            CHECK(buf.numel == numel(k), "numel");
            for (std::uint64_t i = 0; i < buf.numel; i++) CHECK(buf.data[i] == value(k, i), "data differs");
        }
        s.release({id, id + 1});
    }

    // A caller buffer as destination (unchecked), and a read that uses no buffer at all.
    std::vector<float> mine(numel(3));
    s.swap_in_buffers_unchecked({3}, {mine.data()});
    CHECK(mine[17] == value(3, 17), "caller buffer");
    s.release({3});
    // With sizes, checked by the library: one element short is refused before any I/O.
    try {
        s.swap_in_buffers({3}, {mine.data()}, {numel(3) - 1});
        CHECK(false, "a short destination must be refused");
    } catch (const swapper::Error &e) {
        CHECK(e.status() == SWAPPER_STATUS_NO_BUFFER, "short destination status");
    }
    s.swap_in_buffers({3}, {mine.data()}, {numel(3)});
    s.release({3});
    std::vector<float> copy(numel(4));
    s.swap_into_buffer(4, copy.data(), copy.size());
    CHECK(copy.back() == value(4, copy.size() - 1), "swap_into_buffer");

    // Errors are exceptions with their status.
    CHECK(status_of([&] { (void)s.param_status(12345); }) == SWAPPER_STATUS_NOT_FOUND, "not found");
    CHECK(status_of([&] { s.swap_out({1}); }) == SWAPPER_STATUS_BAD_STATE, "bad state"); // NOT_AVAILABLE
    CHECK(status_of([&] { (void)s.get_buffer(100, (1 << 16) + 1); }) == SWAPPER_STATUS_NO_BUFFER, "no buffer");
    CHECK(status_of([&] { s.swap_out({1, 1}); }) == SWAPPER_STATUS_INVALID_ARGUMENT, "duplicate");
    CHECK(status_of([&] { swapper::Swapper again(config); }) == SWAPPER_STATUS_BUSY, "folder busy");

    // Partitioned swap-out of fp32 sources, then read back.
    s.reserve_partitioned_swap_space({numel(5)});
    std::vector<float> src(numel(5), 0.25f);
    s.swap_out_partitioned({5}, {src.data()}, {src.size()});
    std::vector<float> back(numel(5));
    s.swap_into_buffer(5, back.data(), back.size());
    CHECK(back[0] == 0.25f && back[numel(5) - 1] == 0.25f, "partitioned");

    CHECK(s.stats().params == params && !s.dump().empty(), "stats and dump");
    std::vector<void *> reserved = s.reserve_available_buffers();
    CHECK(reserved.size() == 3 && s.available_buffers() == 0, "reserve");
    s.release_reserved_buffers();

    swapper::Swapper moved(std::move(s));  // ownership moves, the handle stays one
    CHECK(!s && moved && swapper::Swapper::live_handles() == 1, "move");
}

static void io_loop(const char *folder) {
    std::string path = std::string(folder) + "/cpp_io.bin";
    SwapperIoConfig cfg = swapper::default_io_config();
    cfg.queue_depth = 4;
    swapper::Io io(cfg);
    const std::uint64_t n = (1 << 20) + 5;
    swapper::AlignedBuffer a(n, /*lock=*/true), b(n);
    for (std::uint64_t i = 0; i < n; i++) a.as<unsigned char>()[i] = static_cast<unsigned char>(i * 7);
    io.pwrite(a.data(), n / 2, path, 0, true);
    io.pwrite(a.as<unsigned char>() + n / 2, n - n / 2, path, n / 2, true);
    CHECK(io.wait() == 2, "two writes");
    io.pread(b.data(), n, path);
    CHECK(std::memcmp(a.data(), b.data(), n) == 0, "io round trip");
    CHECK(status_of([&] { io.pread(b.data(), 10, path + ".missing"); }) == SWAPPER_STATUS_NOT_FOUND, "missing file");
    swapper::Io other = std::move(io);
    CHECK(!io && other.queue_depth() == 4, "moved io");
    cfg.block_size = 3000;
    CHECK(status_of([&] { swapper::Io bad(cfg); }) == SWAPPER_STATUS_INVALID_ARGUMENT, "bad config");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    try {
        swap_loop(argv[1]);
        io_loop(argv[1]);
    } catch (const swapper::Error &e) {
        std::fprintf(stderr, "cpp_swap: unexpected %s\n", e.what());
        return 1;
    }
    CHECK(swapper::Swapper::live_handles() == 0 && swapper::Io::live_handles() == 0, "handles leaked");
    std::printf("cpp_swap: ok (libswapper %s)\n", swapper::version().c_str());
    return 0;
}
