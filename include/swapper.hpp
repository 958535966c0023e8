/*
 * libswapper for C++: a header-only RAII wrapper over swapper.h (C++17).
 *
 * Owners are move-only (swapper::Io, swapper::Swapper, swapper::AlignedBuffer) and free
 * their handle in the destructor; every failing call throws swapper::Error with the
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
    SwapperStatus status() const noexcept { return status_; }
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
inline std::string version() { return swapper_version(); }

/** The O_DIRECT alignment in bytes (4096). */
inline std::uint64_t alignment() noexcept { return swapper_io_alignment(); }

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

    void *data() const noexcept { return ptr_; }
    template <typename T> T *as() const noexcept { return static_cast<T *>(ptr_); }
    std::uint64_t size() const noexcept { return size_; }
    /** Whether the pages are locked in RAM. */
    bool locked() const noexcept { return swapper_is_locked(ptr_); }

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
    SwapperIoConfig config() const {
        SwapperIoConfig c;
        check(swapper_io_get_config(h_, &c));
        return c;
    }
    std::uint64_t block_size() const noexcept { return swapper_io_block_size(h_); }
    std::uint32_t queue_depth() const noexcept { return swapper_io_queue_depth(h_); }
    std::uint32_t thread_count() const noexcept { return swapper_io_thread_count(h_); }
    bool single_submit() const noexcept { return swapper_io_single_submit(h_); }
    bool overlap_events() const noexcept { return swapper_io_overlap_events(h_); }
    SwapperBackend backend() const noexcept { return swapper_io_backend(h_); }
    SwapperDirectIo direct_io() const noexcept { return swapper_io_direct_io(h_); }
    std::uint64_t pending() const noexcept { return swapper_io_pending(h_); }

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
    void *get_buffer(std::uint64_t id, std::uint64_t numel) {
        void *p = nullptr;
        check(swapper_get_buffer(h_, id, numel, &p));
        return p;
    }
    template <typename T> T *get_buffer(std::uint64_t id, std::uint64_t numel) {
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

    SwapperParamStatus param_status(std::uint64_t id) const {
        SwapperParamStatus s;
        check(swapper_param_status(h_, id, &s));
        return s;
    }
    template <typename T = void> ParamBuffer<T> param_buffer(std::uint64_t id) const {
        void *p = nullptr;
        std::uint64_t n = 0;
        check(swapper_param_buffer(h_, id, &p, &n));
        return {static_cast<T *>(p), n};
    }

    std::uint64_t available_buffers() const noexcept { return swapper_available_buffers(h_); }
    /** Takes every free buffer out of the pool (each holds buffer_numel elements). */
    std::vector<void *> reserve_available_buffers() {
        std::vector<void *> out(stats().total_buffers);
        std::size_t n = 0;
        check(swapper_reserve_available_buffers(h_, out.data(), out.size(), &n));
        out.resize(n);
        return out;
    }
    void release_reserved_buffers() { check(swapper_release_reserved_buffers(h_)); }

    bool swappable(std::uint64_t numel) const noexcept { return swapper_swappable(h_, numel); }
    /** `numel` rounded up to a multiple of 4096 bytes (swapper_aligned_numel). */
    std::uint64_t aligned_numel(std::uint64_t numel) const noexcept { return swapper_aligned_numel(h_, numel); }
    /** Deprecated (removed in the next release): the old name of aligned_numel. */
    [[deprecated("use aligned_numel")]] std::uint64_t io_aligned_numel(std::uint64_t numel) const noexcept {
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

    SwapperStats stats() const {
        SwapperStats s;
        check(swapper_stats(h_, &s));
        return s;
    }
    std::uint32_t element_size() const noexcept { return swapper_element_size(h_); }
    std::string dump() const {
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

}  // namespace swapper

#endif  // SWAPPER_HPP
