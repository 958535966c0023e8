/*
 * libswapper for C++: a header-only RAII wrapper over swapper.h (C++17).
 *
 * Owners are move-only (swapper::Io, swapper::Swapper, swapper::Optimizer,
 * swapper::Optimizer::Visit, swapper::AlignedBuffer) and free their handle in the
 * destructor; every failing call throws swapper::Error with the
 * status and swapper_last_error()'s message. Batches are pointer + length or
 * std::vector.
 *
 *     swapper::Swapper s(swapper::Swapper::default_config("/nvme"));
 *     auto *p = s.get_buffer<float>(7, 1000);
 *     s.swap_out_and_release({7});
 *     s.swap_in({7});
 *     p = s.param_buffer<float>(7).data;
 */
#ifndef SWAPPER_HPP
#define SWAPPER_HPP

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "swapper.h"

namespace swapper {

/** A failed libswapper call: the status and the thread's last-error message. */
class Error : public std::runtime_error {
  public:
    Error(SwapperStatus status, const std::string &message)
        : std::runtime_error(std::string(swapper_status_name(status)) + ": " + message),
          status_(status), message_(message) {}
    /** The status the call returned. */
    [[nodiscard]] SwapperStatus status() const noexcept { return status_; }
    /** Its name as in swapper.h ("SWAPPER_STATUS_IO_ERROR"). */
    const char *status_name() const noexcept { return swapper_status_name(status_); }
    /** swapper_last_error() at the time of the failure. */
    const std::string &message() const noexcept { return message_; }

  private:
    SwapperStatus status_;
    std::string message_;
};

/** Throws swapper::Error unless `status` is SWAPPER_STATUS_OK. */
inline void check(SwapperStatus status) {
    if (status != SWAPPER_STATUS_OK) {
        throw Error(status, swapper_last_error());
    }
}

/** The library's version, "MAJOR.MINOR.PATCH". */
[[nodiscard]] inline std::string version() { return swapper_version(); }

/** The O_DIRECT alignment in bytes (4096). */
[[nodiscard]] inline std::uint64_t alignment() noexcept { return swapper_io_alignment(); }

/** The engine defaults (DeepSpeed's). */
inline SwapperIoConfig default_io_config() noexcept {
    SwapperIoConfig c;
    swapper_io_config_default(&c);
    return c;
}

/** Move-only owner of memory from swapper_alloc_aligned (4096-aligned, zero-filled). */
class AlignedBuffer {
  public:
    AlignedBuffer() noexcept = default;
    explicit AlignedBuffer(std::uint64_t nbytes, bool lock = false) : size_(nbytes) {
        check(swapper_alloc_aligned(nbytes, lock, &ptr_));
    }
    ~AlignedBuffer() { swapper_free_aligned(ptr_); }
    AlignedBuffer(AlignedBuffer &&o) noexcept
        : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    AlignedBuffer &operator=(AlignedBuffer &&o) noexcept {
        if (this != &o) {
            swapper_free_aligned(ptr_);
            ptr_ = std::exchange(o.ptr_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    AlignedBuffer(const AlignedBuffer &) = delete;
    AlignedBuffer &operator=(const AlignedBuffer &) = delete;

    [[nodiscard]] void *data() const noexcept { return ptr_; }
    template <typename T> [[nodiscard]] T *as() const noexcept { return static_cast<T *>(ptr_); }
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
    /** Whether the pages are locked in RAM. */
    [[nodiscard]] bool locked() const noexcept { return swapper_is_locked(ptr_); }

  private:
    void *ptr_ = nullptr;
    std::uint64_t size_ = 0;
};

/** The I/O engine (SwapperIo). Thread-safe, move-only. */
class Io {
  public:
    Io() : Io(default_io_config()) {}
    explicit Io(const SwapperIoConfig &config) { check(swapper_io_create(&config, &h_)); }
    ~Io() { swapper_io_destroy(h_); }
    Io(Io &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Io &operator=(Io &&o) noexcept {
        if (this != &o) {
            swapper_io_destroy(h_);
            h_ = std::exchange(o.h_, nullptr);
        }
        return *this;
    }
    Io(const Io &) = delete;
    Io &operator=(const Io &) = delete;

    /** Reads `nbytes` at `offset` of `path`; with async_op, wait() reports it. */
    void pread(void *buffer, std::uint64_t nbytes, const std::string &path,
               std::uint64_t offset = 0, bool async_op = false) {
        check(swapper_io_pread(h_, buffer, nbytes, path.c_str(), offset, async_op));
    }
    /** Writes `nbytes` at `offset` of `path` (created 0600 if missing, never truncated). */
    void pwrite(const void *buffer, std::uint64_t nbytes, const std::string &path,
                std::uint64_t offset = 0, bool async_op = false) {
        check(swapper_io_pwrite(h_, buffer, nbytes, path.c_str(), offset, async_op));
    }
    /** Waits for every asynchronous operation submitted before; returns how many. */
    std::uint64_t wait() {
        std::uint64_t done = 0;
        check(swapper_io_wait(h_, &done));
        return done;
    }
    [[nodiscard]] SwapperIoConfig config() const {
        SwapperIoConfig c;
        check(swapper_io_get_config(h_, &c));
        return c;
    }
    [[nodiscard]] std::uint64_t block_size() const noexcept { return swapper_io_block_size(h_); }
    [[nodiscard]] std::uint32_t queue_depth() const noexcept { return swapper_io_queue_depth(h_); }
    [[nodiscard]] std::uint32_t thread_count() const noexcept { return swapper_io_thread_count(h_); }
    [[nodiscard]] bool single_submit() const noexcept { return swapper_io_single_submit(h_); }
    [[nodiscard]] bool overlap_events() const noexcept { return swapper_io_overlap_events(h_); }
    [[nodiscard]] SwapperBackend backend() const noexcept { return swapper_io_backend(h_); }
    [[nodiscard]] SwapperDirectIo direct_io() const noexcept { return swapper_io_direct_io(h_); }
    [[nodiscard]] std::uint64_t pending() const noexcept { return swapper_io_pending(h_); }

    SwapperIo *get() const noexcept { return h_; }
    /** Gives up ownership: the caller destroys the handle. */
    SwapperIo *release_handle() noexcept { return std::exchange(h_, nullptr); }
    explicit operator bool() const noexcept { return h_ != nullptr; }
    static std::uint64_t live_handles() noexcept { return swapper_io_live_handles(); }

  private:
    SwapperIo *h_ = nullptr;
};

/** A param's buffer and element count. */
template <typename T> struct ParamBuffer {
    T *data;
    std::uint64_t numel;
};

/** The parameter swapper (Swapper). Thread-safe, move-only. */
class Swapper {
  public:
    using Ids = std::vector<std::uint64_t>;

    /** swapper_config_default with `nvme_path` set (the string must outlive creation). */
    static SwapperConfig default_config(const char *nvme_path) noexcept {
        SwapperConfig c;
        swapper_config_default(&c);
        c.nvme_path = nvme_path;
        return c;
    }
    /** swapper_config_default with several drives (`nvme_paths`; the strings and the array
     * must outlive creation). */
    static SwapperConfig default_config(const std::vector<const char *> &nvme_paths) noexcept {
        SwapperConfig c;
        swapper_config_default(&c);
        c.nvme_paths = nvme_paths.data();
        c.nvme_path_count = nvme_paths.size();
        return c;
    }
    explicit Swapper(const SwapperConfig &config) { check(swapper_create(&config, &h_)); }
    /** Bytes a swapper created with `config` would page-lock for its pool, whole pages
     *  as the kernel counts them (0 when not pinned or with alloc_fn); creates nothing
     *  (swapper_config_page_locked_bytes). Throws swapper::Error for an invalid config. */
    static std::uint64_t page_locked_bytes(const SwapperConfig &config) {
        std::uint64_t n = 0;
        check(swapper_config_page_locked_bytes(&config, &n));
        return n;
    }
    /** From DeepSpeed JSON text (the aio block and zero_optimization.offload_param). */
    static Swapper from_json(const std::string &deepspeed_json, std::uint32_t rank = 0,
                             SwapperDtype dtype = SWAPPER_DTYPE_FP16) {
        ::Swapper *h = nullptr;
        check(swapper_create_from_json(deepspeed_json.c_str(), rank, dtype, &h));
        return Swapper(h);
    }
    /** Adopts a handle from the C API. */
    explicit Swapper(::Swapper *handle) noexcept : h_(handle) {}
    ~Swapper() { swapper_destroy(h_); }
    Swapper(Swapper &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Swapper &operator=(Swapper &&o) noexcept {
        if (this != &o) {
            swapper_destroy(h_);
            h_ = std::exchange(o.h_, nullptr);
        }
        return *this;
    }
    Swapper(const Swapper &) = delete;
    Swapper &operator=(const Swapper &) = delete;

    /** A free pool buffer for `numel` elements of param `id` (now AVAILABLE). */
    [[nodiscard]] void *get_buffer(std::uint64_t id, std::uint64_t numel) {
        void *p = nullptr;
        check(swapper_get_buffer(h_, id, numel, &p));
        return p;
    }
    template <typename T> [[nodiscard]] T *get_buffer(std::uint64_t id, std::uint64_t numel) {
        return static_cast<T *>(get_buffer(id, numel));
    }

    void swap_out(const std::uint64_t *ids, std::size_t count, bool async_op = false) {
        check(swapper_swap_out(h_, ids, count, async_op));
    }
    void swap_out(const Ids &ids, bool async_op = false) { swap_out(ids.data(), ids.size(), async_op); }

    void swap_out_and_release(const std::uint64_t *ids, std::size_t count, bool async_op = false,
                              bool force_buffer_release = false) {
        check(swapper_swap_out_and_release(h_, ids, count, async_op, force_buffer_release));
    }
    void swap_out_and_release(const Ids &ids, bool async_op = false, bool force_buffer_release = false) {
        swap_out_and_release(ids.data(), ids.size(), async_op, force_buffer_release);
    }

    /** Reads params back into pool buffers, or into `dest[i]` (caller memory kept
     * untouched until the param is released). */
    void swap_in(const std::uint64_t *ids, std::size_t count, bool async_op = false,
                 void *const *dest = nullptr) {
        check(swapper_swap_in(h_, ids, count, async_op, dest));
    }
    void swap_in(const Ids &ids, bool async_op = false) { swap_in(ids.data(), ids.size(), async_op); }
    /** swap_in into caller buffers, dest[i] for ids[i], with their sizes in elements,
     * checked by the library against each param before anything starts: the C call of
     * the same name, swapper_swap_in_buffers. (A separate name from swap_in: a braced
     * `{ptr}` would otherwise convert to the bool of the overload above.) */
    void swap_in_buffers(const Ids &ids, const std::vector<void *> &dest, const std::vector<std::uint64_t> &dest_numels,
                         bool async_op = false) {
        if (dest.size() != ids.size() || dest_numels.size() != ids.size()) {
            throw Error(SWAPPER_STATUS_INVALID_ARGUMENT, "swap_in_buffers: one buffer and one size per id are needed");
        }
        check(swapper_swap_in_buffers(h_, ids.data(), ids.size(), async_op, dest.data(), dest_numels.data()));
    }
    /** swap_in into caller buffers without their sizes (swapper_swap_in with dest): the
     * library cannot check that each buffer holds its param. Prefer swap_in_buffers. */
    void swap_in_buffers_unchecked(const Ids &ids, const std::vector<void *> &dest, bool async_op = false) {
        if (dest.size() != ids.size()) {
            throw Error(SWAPPER_STATUS_INVALID_ARGUMENT,
                        "swap_in_buffers_unchecked: as many destination buffers as ids are needed");
        }
        swap_in(ids.data(), ids.size(), async_op, dest.data());
    }
    /** Deprecated (removed in the next release): the old name of swap_in_buffers. */
    [[deprecated("use swap_in_buffers, the checked call")]] void swap_in_sized(
        const Ids &ids, const std::vector<void *> &dest, const std::vector<std::uint64_t> &dest_numels,
        bool async_op = false) {
        swap_in_buffers(ids, dest, dest_numels, async_op);
    }
    /** Waits for the reads and writes of these params only (swapper_wait_params). */
    void wait_params(const Ids &ids) { check(swapper_wait_params(h_, ids.data(), ids.size())); }

    /** Synchronous read of param `id` into `dest` (`dest_numel` elements). */
    void swap_into_buffer(std::uint64_t id, void *dest, std::uint64_t dest_numel) {
        check(swapper_swap_into_buffer(h_, id, dest, dest_numel));
    }
    void wait_reads() { check(swapper_wait_reads(h_)); }
    void wait_writes() { check(swapper_wait_writes(h_)); }
    /// Makes the swap folder resumable up to now (swapper_flush); a Swapper created with
    /// `config.adopt = 1` on the same folders finds every param as this flush left it.
    void flush() { check(swapper_flush(h_)); }
    /// Flushes, then records that state into `dest_folder` (swapper_snapshot: reflinks
    /// where the file system shares extents, copies otherwise).
    void snapshot(const std::string &dest_folder) { check(swapper_snapshot(h_, dest_folder.c_str())); }
    /// Puts a snapshot back into the rank folders `config` names (swapper_restore); then
    /// construct a Swapper from `config` with `adopt = 1`.
    static void restore(const std::string &snapshot_folder, const SwapperConfig &config) {
        check(swapper_restore(snapshot_folder.c_str(), &config));
    }

    void release(const std::uint64_t *ids, std::size_t count) { check(swapper_release(h_, ids, count)); }
    void release(const Ids &ids) { release(ids.data(), ids.size()); }

    [[nodiscard]] SwapperParamStatus param_status(std::uint64_t id) const {
        SwapperParamStatus s;
        check(swapper_param_status(h_, id, &s));
        return s;
    }
    template <typename T = void> [[nodiscard]] ParamBuffer<T> param_buffer(std::uint64_t id) const {
        void *p = nullptr;
        std::uint64_t n = 0;
        check(swapper_param_buffer(h_, id, &p, &n));
        return {static_cast<T *>(p), n};
    }

    [[nodiscard]] std::uint64_t available_buffers() const noexcept { return swapper_available_buffers(h_); }
    /** Takes every free buffer out of the pool (each holds buffer_numel elements). */
    [[nodiscard]] std::vector<void *> reserve_available_buffers() {
        std::vector<void *> out(stats().total_buffers);
        std::size_t n = 0;
        check(swapper_reserve_available_buffers(h_, out.data(), out.size(), &n));
        out.resize(n);
        return out;
    }
    void release_reserved_buffers() { check(swapper_release_reserved_buffers(h_)); }

    [[nodiscard]] bool swappable(std::uint64_t numel) const noexcept { return swapper_swappable(h_, numel); }
    /** `numel` rounded up to a multiple of 4096 bytes (swapper_aligned_numel). */
    [[nodiscard]] std::uint64_t aligned_numel(std::uint64_t numel) const noexcept { return swapper_aligned_numel(h_, numel); }
    /** Deprecated (removed in the next release): the old name of aligned_numel. */
    [[deprecated("use aligned_numel")]] [[nodiscard]] std::uint64_t io_aligned_numel(std::uint64_t numel) const noexcept {
        return aligned_numel(numel);
    }

    void reserve_partitioned_swap_space(const Ids &numels) {
        check(swapper_reserve_partitioned_swap_space(h_, numels.data(), numels.size()));
    }
    /** Converts each fp32 source to the swapper's dtype and writes it over the swap file
     * of the matching param (which is NOT_AVAILABLE). */
    void swap_out_partitioned(const Ids &ids, const std::vector<const float *> &src,
                              const Ids &numels) {
        if (src.size() != ids.size() || numels.size() != ids.size()) {
            throw Error(SWAPPER_STATUS_INVALID_ARGUMENT, "swap_out_partitioned: ids, sources and numels differ in length");
        }
        check(swapper_swap_out_partitioned(h_, ids.data(), src.data(), numels.data(), ids.size()));
    }

    [[nodiscard]] SwapperStats stats() const {
        SwapperStats s;
        check(swapper_stats(h_, &s));
        return s;
    }
    std::uint32_t element_size() const noexcept { return swapper_element_size(h_); }
    [[nodiscard]] std::string dump() const {
        std::size_t len = 0;
        check(swapper_dump(h_, nullptr, 0, &len));
        std::string out(len + 1, '\0');
        check(swapper_dump(h_, &out[0], out.size(), &len));
        out.resize(len < out.size() ? len : out.size() - 1);
        return out;
    }

    ::Swapper *get() const noexcept { return h_; }
    ::Swapper *release_handle() noexcept { return std::exchange(h_, nullptr); }
    explicit operator bool() const noexcept { return h_ != nullptr; }
    static std::uint64_t live_handles() noexcept { return swapper_live_handles(); }

  private:
    ::Swapper *h_ = nullptr;
};

/** The optimizer-state swapper (SwapperOptimizer): sub-groups of named fp32 tensors on
 * NVMe, stepped through a page-locked ring. Thread-safe, move-only.
 *
 *     swapper::Optimizer opt(swapper::Optimizer::default_config("/nvme"));
 *     opt.register_subgroup(0, {{"param", n}, {"exp_avg", n}, {"exp_avg_sq", n},
 *                               {"grad", n, SWAPPER_TENSOR_KIND_GRADIENT}});
 *     opt.begin_step({0});
 *     while (auto v = opt.next_ready()) { adam(v->tensor(0), ...); v->hand_back(); }
 *     opt.end_step();
 */
class Optimizer {
  public:
    /** One tensor of a sub-group. */
    struct Tensor {
        std::string name;
        std::uint64_t numel;
        SwapperTensorKind kind = SWAPPER_TENSOR_KIND_STATE;
    };

    /** A sub-group out with the caller: its tensors in the swapper's ring (zero-copy).
     * hand_back() queues its write-behind; destroyed without it, the visit is discarded
     * (no write: the files keep the previous step's state). Move-only. */
    class Visit {
      public:
        Visit(Visit &&o) noexcept
            : h_(std::exchange(o.h_, nullptr)), subgroup_(o.subgroup_), tensors_(std::move(o.tensors_)),
              numels_(std::move(o.numels_)) {}
        Visit &operator=(Visit &&o) noexcept {
            if (this != &o) {
                finish();
                h_ = std::exchange(o.h_, nullptr);
                subgroup_ = o.subgroup_;
                tensors_ = std::move(o.tensors_);
                numels_ = std::move(o.numels_);
            }
            return *this;
        }
        Visit(const Visit &) = delete;
        Visit &operator=(const Visit &) = delete;
        ~Visit() { finish(); }

        std::uint32_t subgroup() const noexcept { return subgroup_; }
        std::size_t size() const noexcept { return tensors_.size(); }
        /** Tensor `k` (registration order) and its element count. */
        float *tensor(std::size_t k) const { return tensors_.at(k); }
        std::uint64_t numel(std::size_t k) const { return numels_.at(k); }
        /** Writes tensor `k`'s first numels[0] elements as param ids[0], and so on, to the
         * parameter swapper `params` (converted to its dtype), straight from the ring. */
        void swap_out_params(std::size_t k, Swapper &params, const std::vector<std::uint64_t> &ids,
                             const std::vector<std::uint64_t> &numels) const {
            if (ids.size() != numels.size()) {
                throw Error(SWAPPER_STATUS_INVALID_ARGUMENT, "swap_out_params: one numel per id is needed");
            }
            check(swapper_optimizer_swap_out_params(h_, subgroup_, k, params.get(), ids.data(), numels.data(),
                                                    ids.size()));
        }
        /** Queues the write-behind and ends the visit. */
        void hand_back() {
            SwapperOptimizer *h = std::exchange(h_, nullptr);
            if (h != nullptr) check(swapper_optimizer_hand_back(h, subgroup_));
        }
        /** Ends the visit without writing. */
        void discard() {
            SwapperOptimizer *h = std::exchange(h_, nullptr);
            if (h != nullptr) check(swapper_optimizer_discard(h, subgroup_));
        }

      private:
        friend class Optimizer;
        Visit(SwapperOptimizer *h, std::uint32_t subgroup, std::vector<float *> tensors)
            : h_(h), subgroup_(subgroup), tensors_(std::move(tensors)) {
            for (std::size_t k = 0; k < tensors_.size(); k++) {
                float *p = nullptr;
                std::uint64_t n = 0;
                check(swapper_optimizer_tensor(h_, subgroup_, k, &p, &n));
                numels_.push_back(n);
            }
        }
        void finish() noexcept {
            if (h_ != nullptr) (void)swapper_optimizer_discard(std::exchange(h_, nullptr), subgroup_);
        }
        SwapperOptimizer *h_;
        std::uint32_t subgroup_;
        std::vector<float *> tensors_;
        std::vector<std::uint64_t> numels_;
    };

    /** swapper_optimizer_config_default with `nvme_path` set (it must outlive creation). */
    static SwapperOptimizerConfig default_config(const char *nvme_path) noexcept {
        SwapperOptimizerConfig c;
        swapper_optimizer_config_default(&c);
        c.nvme_path = nvme_path;
        return c;
    }
    explicit Optimizer(const SwapperOptimizerConfig &config) { check(swapper_optimizer_create(&config, &h_)); }
    /** From DeepSpeed JSON text (the aio block and zero_optimization.offload_optimizer);
     * `largest_numel`: the largest tensor of any sub-group (the ring is buffer_count of
     * them), 0 to take zero_optimization.sub_group_size. */
    static Optimizer from_json(const std::string &deepspeed_json, std::uint32_t rank = 0,
                               std::uint64_t largest_numel = 0) {
        SwapperOptimizer *h = nullptr;
        check(swapper_optimizer_create_from_json(deepspeed_json.c_str(), rank, largest_numel, &h));
        return Optimizer(h);
    }
    /** Adopts a handle from the C API. */
    explicit Optimizer(SwapperOptimizer *handle) noexcept : h_(handle) {}
    ~Optimizer() { swapper_optimizer_destroy(h_); }
    Optimizer(Optimizer &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Optimizer &operator=(Optimizer &&o) noexcept {
        if (this != &o) {
            swapper_optimizer_destroy(h_);
            h_ = std::exchange(o.h_, nullptr);
        }
        return *this;
    }
    Optimizer(const Optimizer &) = delete;
    Optimizer &operator=(const Optimizer &) = delete;

    /** Registers sub-group `index`; its tensors read back as zeros until written. */
    void register_subgroup(std::uint32_t index, const std::vector<Tensor> &tensors) {
        std::vector<SwapperTensorSpec> specs;
        for (const Tensor &t : tensors) specs.push_back({t.name.c_str(), t.numel, t.kind});
        check(swapper_optimizer_register(h_, index, specs.data(), specs.size()));
    }
    void purge() { check(swapper_optimizer_purge(h_)); }
    void begin_step(const std::vector<std::uint32_t> &order) {
        check(swapper_optimizer_begin_step(h_, order.data(), order.size()));
    }
    /** The next sub-group of the step once read, or nullopt when all were handed out. */
    std::optional<Visit> next_ready() {
        std::uint32_t g = SWAPPER_OPTIMIZER_NONE;
        std::size_t n = 0;
        std::vector<float *> tensors(16);
        check(swapper_optimizer_next_ready(h_, &g, tensors.data(), tensors.size(), &n));
        if (g == SWAPPER_OPTIMIZER_NONE) return std::nullopt;
        tensors.resize(n);
        for (std::size_t k = 16; k < n; k++) check(swapper_optimizer_tensor(h_, g, k, &tensors[k], nullptr));
        return Visit(h_, g, std::move(tensors));
    }
    /** Ends the step (swapper_optimizer_end_step); with config.flush_at_end_step it also
     * flushes, and a failed flush throws like the step's other failures (the step ends). */
    void end_step() { check(swapper_optimizer_end_step(h_)); }
    /// Makes the state resumable as of now (swapper_optimizer_flush): after end_step.
    void flush() { check(swapper_optimizer_flush(h_)); }
    /// Flushes, then records the state into `dest_folder` (swapper_optimizer_snapshot).
    void snapshot(const std::string &dest_folder) { check(swapper_optimizer_snapshot(h_, dest_folder.c_str())); }
    /// Puts a snapshot back into `config`'s rank folders (swapper_optimizer_restore); then
    /// construct an Optimizer from `config` with `adopt = 1`.
    static void restore(const std::string &snapshot_folder, const SwapperOptimizerConfig &config) {
        check(swapper_optimizer_restore(snapshot_folder.c_str(), &config));
    }
    /** Gradient fragments of tensor `tensor`: data[i] (numels[i] floats) at element offsets[i]. */
    void swap_out_gradients(std::uint32_t subgroup, std::size_t tensor, const std::vector<std::uint64_t> &offsets,
                            const std::vector<const float *> &data, const std::vector<std::uint64_t> &numels) {
        if (data.size() != offsets.size() || numels.size() != offsets.size()) {
            throw Error(SWAPPER_STATUS_INVALID_ARGUMENT, "swap_out_gradients: offsets, data and numels differ in length");
        }
        check(swapper_optimizer_swap_out_gradients(h_, subgroup, tensor, offsets.data(), data.data(), numels.data(),
                                                   offsets.size()));
    }
    void wait_gradients() { check(swapper_optimizer_wait_gradients(h_)); }
    SwapperOptimizerStats stats() const {
        SwapperOptimizerStats s;
        check(swapper_optimizer_stats(h_, &s));
        return s;
    }

    SwapperOptimizer *get() const noexcept { return h_; }
    explicit operator bool() const noexcept { return h_ != nullptr; }

  private:
    SwapperOptimizer *h_ = nullptr;
};

}  // namespace swapper

#endif  // SWAPPER_HPP
