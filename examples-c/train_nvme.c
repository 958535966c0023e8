/*
 * train_nvme: linear regression trained with Adam, its bf16 params on NVMe (parameter
 * swapper) and its optimizer state (fp32 master weights, both moments, gradients) on
 * NVMe (optimizer swapper), checked bit for bit against the same training in memory.
 *
 * Per step: forward and backward read the bf16 params from NVMe; the gradients go out in
 * fragments at offsets (as during backward); the optimizer step visits the sub-groups
 * in a rotating order, runs Adam in place in the swapper's ring, writes the new bf16
 * params straight from the ring (swapper_optimizer_swap_out_params) and hands each
 * sub-group back for its write-behind. Exit 0 when every loss and every final byte agree.
 *
 * usage: train_nvme FOLDER
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "swapper.h"

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "train_nvme: %s:%d: ", __FILE__, __LINE__);        \
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

enum { GROUPS = 3, SAMPLES = 48, STEPS = 5, TENSORS = 4 };
static const uint64_t SIZE[GROUPS] = {5000, 3001, 7000}; /* one param per sub-group */
#define FEATURES (5000 + 3001 + 7000)

static float X[SAMPLES][FEATURES], Y[SAMPLES];

/* The in-memory twin: fp32 master weights, moments, bf16 params. */
static float ref_w[FEATURES], ref_m[FEATURES], ref_v[FEATURES];
static uint16_t ref_p[FEATURES];

static uint64_t offset_of(int g) {
    uint64_t o = 0;
    for (int k = 0; k < g; k++) o += SIZE[k];
    return o;
}

/* fp32 to bf16, round to nearest even (the library's conversion, for finite values). */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void adam(int step, float *w, float *m, float *v, const float *g, uint64_t n) {
    const float lr = 1e-4f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);
    for (uint64_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        w[i] -= lr * (m[i] / c1) / (sqrtf(v[i] / c2) + eps);
    }
}

/* Loss and gradient of the mean squared error for bf16 params `p` (all groups). */
static float loss_and_grad(const uint16_t *p, float *grad) {
    static float r[SAMPLES];
    float loss = 0.0f;
    for (int n = 0; n < SAMPLES; n++) {
        float yhat = 0.0f;
        for (int d = 0; d < FEATURES; d++) yhat += X[n][d] * from_bf16(p[d]);
        r[n] = yhat - Y[n];
        loss += r[n] * r[n] / SAMPLES;
    }
    for (int d = 0; d < FEATURES; d++) {
        float s = 0.0f;
        for (int n = 0; n < SAMPLES; n++) s += r[n] * X[n][d];
        grad[d] = 2.0f * s / SAMPLES;
    }
    return loss;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    uint64_t seed = 88172645463325252ull;
    for (int n = 0; n < SAMPLES; n++) {
        Y[n] = 0.0f;
        for (int d = 0; d < FEATURES; d++) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            X[n][d] = (float)(seed % 2001) / 1000.0f - 1.0f;
            Y[n] += X[n][d] * sinf((float)d * 0.01f) * 0.01f;
        }
    }

    /* The parameter swapper: bf16 params, one per sub-group. */
    SwapperConfig pc;
    swapper_config_default(&pc);
    pc.nvme_path = argv[1];
    pc.dtype = SWAPPER_DTYPE_BF16;
    pc.buffer_count = 2;
    pc.buffer_numel = 8192;
    pc.verify_checksums = true;
    Swapper *params = NULL;
    OK(swapper_create(&pc, &params));
    /* The optimizer swapper: a ring of two of the largest sub-group (4 tensors each). */
    SwapperOptimizerConfig oc;
    swapper_optimizer_config_default(&oc);
    oc.nvme_path = argv[1];
    oc.ring_bytes = 2 * TENSORS * ((7000 * 4 + 4095) / 4096 * 4096);
    oc.verify_checksums = true;
    SwapperOptimizer *opt = NULL;
    OK(swapper_optimizer_create(&oc, &opt));

    uint32_t order[GROUPS];
    for (int g = 0; g < GROUPS; g++) {
        SwapperTensorSpec t[TENSORS] = {
            {"param", SIZE[g], SWAPPER_TENSOR_KIND_STATE},
            {"exp_avg", SIZE[g], SWAPPER_TENSOR_KIND_STATE},
            {"exp_avg_sq", SIZE[g], SWAPPER_TENSOR_KIND_STATE},
            {"grad", SIZE[g], SWAPPER_TENSOR_KIND_GRADIENT},
        };
        OK(swapper_optimizer_register(opt, (uint32_t)g, t, TENSORS));
        order[g] = (uint32_t)g;
    }
    for (int d = 0; d < FEATURES; d++) {
        ref_w[d] = 0.001f * (float)((d % 17) - 8);
        ref_p[d] = to_bf16(ref_w[d]);
    }
    /* Step 0: the master weights go into the optimizer swapper (the moments read as zeros),
     * the bf16 params into the parameter swapper. */
    OK(swapper_optimizer_begin_step(opt, order, GROUPS));
    for (;;) {
        uint32_t g;
        float *t[TENSORS];
        size_t n;
        OK(swapper_optimizer_next_ready(opt, &g, t, TENSORS, &n));
        if (g == SWAPPER_OPTIMIZER_NONE) break;
        CHECK(n == TENSORS && t[1][0] == 0.0f && t[2][SIZE[g] - 1] == 0.0f, "fresh moments read as zeros");
        memcpy(t[0], ref_w + offset_of((int)g), SIZE[g] * sizeof(float));
        void *buf = NULL;
        uint64_t id = g;
        OK(swapper_get_buffer(params, id, SIZE[g], &buf));
        memcpy(buf, ref_p + offset_of((int)g), SIZE[g] * 2);
        OK(swapper_swap_out_and_release(params, &id, 1, false, false));
        OK(swapper_optimizer_hand_back(opt, g));
    }
    OK(swapper_optimizer_end_step(opt));
    OK(swapper_reserve_partitioned_swap_space(params, SIZE, GROUPS));

    static uint16_t p[FEATURES];
    static float grad[FEATURES], ref_grad[FEATURES];
    float first = 0.0f, last = 0.0f;
    for (int step = 1; step <= STEPS; step++) {
        /* Forward and backward on the params read from NVMe; the gradients out at offsets. */
        for (int g = 0; g < GROUPS; g++)
            OK(swapper_swap_into_buffer(params, (uint64_t)g, p + offset_of(g), SIZE[g]));
        float loss = loss_and_grad(p, grad);
        for (int g = 0; g < GROUPS; g++) {
            uint64_t half = SIZE[g] / 3, offsets[2] = {0, half}, numels[2] = {half, SIZE[g] - half};
            const float *data[2] = {grad + offset_of(g), grad + offset_of(g) + half};
            OK(swapper_optimizer_swap_out_gradients(opt, (uint32_t)g, 3, offsets, data, numels, 2));
        }
        /* The same in memory. */
        float ref_loss = loss_and_grad(ref_p, ref_grad);
        CHECK(memcmp(&loss, &ref_loss, sizeof loss) == 0, "step %d: loss %.9g on NVMe, %.9g in memory", step,
              loss, ref_loss);
        adam(step, ref_w, ref_m, ref_v, ref_grad, FEATURES);
        for (int d = 0; d < FEATURES; d++) ref_p[d] = to_bf16(ref_w[d]);

        /* The optimizer step, sub-groups in a rotating order. */
        for (int k = 0; k < GROUPS; k++) order[k] = (uint32_t)((k + step) % GROUPS);
        OK(swapper_optimizer_begin_step(opt, order, GROUPS));
        for (;;) {
            uint32_t g;
            float *t[TENSORS];
            size_t n;
            OK(swapper_optimizer_next_ready(opt, &g, t, TENSORS, &n));
            if (g == SWAPPER_OPTIMIZER_NONE) break;
            CHECK(memcmp(t[3], grad + offset_of((int)g), SIZE[g] * 4) == 0, "sub-group %u: gradient", g);
            adam(step, t[0], t[1], t[2], t[3], SIZE[g]);
            uint64_t id = g;
            OK(swapper_optimizer_swap_out_params(opt, g, 0, params, &id, &SIZE[g], 1));
            OK(swapper_optimizer_hand_back(opt, g));
        }
        OK(swapper_optimizer_end_step(opt));
        if (step == 1) first = loss;
        last = loss;
    }
    CHECK(last < first, "the loss fell (%g -> %g)", first, last);

    /* Every byte: the bf16 params, and the master weights and moments (a read-only step). */
    for (int g = 0; g < GROUPS; g++)
        OK(swapper_swap_into_buffer(params, (uint64_t)g, p + offset_of(g), SIZE[g]));
    CHECK(memcmp(p, ref_p, sizeof p) == 0, "bf16 params differ from the in-memory training");
    OK(swapper_optimizer_begin_step(opt, order, GROUPS));
    for (;;) {
        uint32_t g;
        float *t[TENSORS];
        size_t n;
        OK(swapper_optimizer_next_ready(opt, &g, t, TENSORS, &n));
        if (g == SWAPPER_OPTIMIZER_NONE) break;
        uint64_t o = offset_of((int)g), bytes = SIZE[g] * 4;
        CHECK(!memcmp(t[0], ref_w + o, bytes) && !memcmp(t[1], ref_m + o, bytes) && !memcmp(t[2], ref_v + o, bytes),
              "sub-group %u: optimizer state differs from the in-memory training", g);
        OK(swapper_optimizer_discard(opt, g));
    }
    OK(swapper_optimizer_end_step(opt));

    /* Misuse: a status and a message naming what is wrong. */
    CHECK(swapper_optimizer_hand_back(opt, 0) == SWAPPER_STATUS_BAD_STATE, "hand back outside a step");
    uint32_t unknown = 42;
    CHECK(swapper_optimizer_begin_step(opt, &unknown, 1) == SWAPPER_STATUS_NOT_FOUND &&
              strstr(swapper_last_error(), "sub-group 42") != NULL,
          "unknown sub-group");
    SwapperOptimizerStats st;
    OK(swapper_optimizer_stats(opt, &st));
    CHECK(st.subgroups == GROUPS && st.steps == STEPS + 2 && st.ring_in_use == 0 && st.ring_peak <= st.ring_bytes,
          "stats");

    swapper_optimizer_destroy(opt);
    swapper_destroy(params);
    printf("train_nvme: %d steps of Adam with params and optimizer state on NVMe, loss %.6g -> %.6g, "
           "bit for bit as in memory: ok\n",
           STEPS, first, last);
    return 0;
}
