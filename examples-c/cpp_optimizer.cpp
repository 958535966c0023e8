/*
 * cpp_optimizer: the optimizer swapper through the C++ wrapper (include/swapper.hpp).
 *
 * Three sub-groups of SGD with momentum on NVMe: gradients out at offsets, a step per
 * sub-group in place in the ring, the new state written behind; a visit destroyed
 * without hand_back() is discarded (the files keep the previous state); misuse arrives as
 * swapper::Error with its status. Checked against the same arithmetic in memory. Every
 * end_step flushes (flush_at_end_step), so a new optimizer created with adopt finds the
 * last step's state; the same through DeepSpeed JSON's libswapper_* keys.
 * Exit status 0 when everything holds.
 *
 * usage: cpp_optimizer FOLDER
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
            std::fprintf(stderr, "cpp_optimizer: %s:%d: %s\n", __FILE__, __LINE__, what);     \
            std::exit(1);                                                                     \
        }                                                                                     \
    } while (0)

static const std::uint64_t SIZES[3] = {4000, 1025, 9000};

static void sgd(float *w, float *m, const float *g, std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; i++) {
        m[i] = 0.9f * m[i] + g[i];
        w[i] -= 0.01f * m[i];
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    {
        SwapperOptimizerConfig c = swapper::Optimizer::default_config(argv[1]);
        c.ring_bytes = 1 << 20;
        c.verify_checksums = 1;
        c.flush_at_end_step = 1;
        swapper::Optimizer opt(c);
        std::vector<std::vector<float>> w(3), m(3);
        for (std::uint32_t g = 0; g < 3; g++) {
            opt.register_subgroup(g, {{"param", SIZES[g]}, {"momentum", SIZES[g]},
                                      {"grad", SIZES[g], SWAPPER_TENSOR_KIND_GRADIENT}});
            w[g].assign(SIZES[g], 0.0f);
            m[g].assign(SIZES[g], 0.0f);
        }
        for (int step = 1; step <= 3; step++) {
            std::vector<std::vector<float>> grads(3);
            for (std::uint32_t g = 0; g < 3; g++) {
                for (std::uint64_t i = 0; i < SIZES[g]; i++)
                    grads[g].push_back(static_cast<float>((i * 7 + g + step) % 13) - 6.0f);
                std::uint64_t h = SIZES[g] / 2;
                opt.swap_out_gradients(g, 2, {0, h}, {grads[g].data(), grads[g].data() + h}, {h, SIZES[g] - h});
                sgd(w[g].data(), m[g].data(), grads[g].data(), SIZES[g]);
            }
            opt.begin_step({2, 0, 1});
            while (auto v = opt.next_ready()) {
                std::uint32_t g = v->subgroup();
                CHECK(v->size() == 3 && v->numel(0) == SIZES[g], "tensors");
                CHECK(std::memcmp(v->tensor(2), grads[g].data(), SIZES[g] * 4) == 0, "gradient read back");
                sgd(v->tensor(0), v->tensor(1), v->tensor(2), SIZES[g]);
                v->hand_back();
            }
            opt.end_step();
        }
        // A visit dropped without hand_back is discarded: the state stays the last step's.
        opt.begin_step({1});
        {
            auto v = opt.next_ready();
            CHECK(v.has_value(), "a visit");
            v->tensor(0)[0] = 1e9f;
        }
        opt.end_step();
        opt.begin_step({0, 1, 2});
        while (auto v = opt.next_ready()) {
            std::uint32_t g = v->subgroup();
            CHECK(std::memcmp(v->tensor(0), w[g].data(), SIZES[g] * 4) == 0, "params as in memory");
            CHECK(std::memcmp(v->tensor(1), m[g].data(), SIZES[g] * 4) == 0, "momentum as in memory");
            v->discard();
        }
        opt.end_step();
        SwapperStatus st = SWAPPER_STATUS_OK;
        try {
            opt.begin_step({7});
        } catch (const swapper::Error &e) {
            st = e.status();
            CHECK(e.message().find("sub-group 7") != std::string::npos, "the message names the sub-group");
        }
        CHECK(st == SWAPPER_STATUS_NOT_FOUND, "unknown sub-group");
        CHECK(opt.stats().steps == 5, "steps counted");
        // Resume: nothing but end_step flushed; an adopting optimizer finds the last step.
        c.adopt = 1;
        c.flush_at_end_step = 0;
        opt = swapper::Optimizer(nullptr);  // destroyed: the rank folder is free
        swapper::Optimizer resumed(c);
        for (std::uint32_t g = 0; g < 3; g++)
            resumed.register_subgroup(g, {{"param", SIZES[g]}, {"momentum", SIZES[g]},
                                          {"grad", SIZES[g], SWAPPER_TENSOR_KIND_GRADIENT}});
        resumed.begin_step({1, 2, 0});
        while (auto v = resumed.next_ready()) {
            std::uint32_t g = v->subgroup();
            CHECK(std::memcmp(v->tensor(0), w[g].data(), SIZES[g] * 4) == 0, "adopted params");
            CHECK(std::memcmp(v->tensor(1), m[g].data(), SIZES[g] * 4) == 0, "adopted momentum");
            v->discard();
        }
        resumed.end_step();
    }
    {
        // From DeepSpeed's JSON: the ring is buffer_count tensors of the largest numel.
        std::string json = std::string("{\"zero_optimization\": {\"offload_optimizer\": {\"device\": \"nvme\", "
                                       "\"nvme_path\": [\"") + argv[1] + "\"], \"buffer_count\": 6, "
                                       "\"pipeline_read\": true}}, \"aio\": {\"block_size\": 65536}}";
        swapper::Optimizer opt = swapper::Optimizer::from_json(json, 1, 2000);
        CHECK(opt.stats().ring_bytes == 6 * 8192, "ring from buffer_count");
        opt.register_subgroup(0, {{"fp32", 2000}, {"exp_avg", 2000}});
        opt.begin_step({0});
        while (auto v = opt.next_ready()) v->hand_back();
        opt.end_step();
        // libswapper's keys: flush at every end_step, then adopt what it made durable.
        std::string flushing = json;
        flushing.replace(flushing.find("\"pipeline_read\""), 0, "\"libswapper_flush_at_end_step\": true, ");
        std::string adopting = json;
        adopting.replace(adopting.find("\"pipeline_read\""), 0, "\"libswapper_adopt\": true, ");
        opt = swapper::Optimizer(nullptr);
        opt = swapper::Optimizer::from_json(flushing, 1, 2000);
        opt.register_subgroup(0, {{"fp32", 2000}, {"exp_avg", 2000}});
        opt.begin_step({0});
        while (auto v = opt.next_ready()) {
            v->tensor(1)[1999] = 43.0f;
            v->hand_back();
        }
        opt.end_step();
        opt = swapper::Optimizer(nullptr);
        opt = swapper::Optimizer::from_json(adopting, 1, 2000);
        opt.register_subgroup(0, {{"fp32", 2000}, {"exp_avg", 2000}});
        opt.begin_step({0});
        while (auto v = opt.next_ready()) {
            CHECK(v->tensor(1)[1999] == 43.0f, "adopted through libswapper_adopt");
            v->discard();
        }
        opt.end_step();
        SwapperStatus st = SWAPPER_STATUS_OK;
        try {
            (void)swapper::Optimizer::from_json("{\"zero_optimization\": {}}");
        } catch (const swapper::Error &e) {
            st = e.status();
            CHECK(e.message().find("offload_optimizer") != std::string::npos, "the message names the block");
        }
        CHECK(st == SWAPPER_STATUS_INVALID_ARGUMENT, "no offload_optimizer block");
    }
    CHECK(swapper_optimizer_live_handles() == 0, "the RAII owner destroyed its handle");
    std::printf("cpp_optimizer: 3 steps of SGD with momentum on NVMe through swapper.hpp: ok\n");
    return 0;
}
