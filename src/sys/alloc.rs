//! Page-aligned memory from mmap, optionally locked in RAM with mlock.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use std::sync::LazyLock;

use crate::status::{Error, Result, Status};

/// A live mapping made by [`AlignedBuf::new`].
struct Mapping {
    /// Bytes asked for (the allocation proper).
    len: usize,
    /// Mapped bytes (a whole number of pages).
    map_len: usize,
    /// Whether mlock succeeded.
    locked: bool,
    /// Outstanding [`retain`] calls: the mapping outlives its `AlignedBuf` while any.
    retained: usize,
    /// The `AlignedBuf` was dropped while retained: the last [`release`] unmaps.
    orphaned: bool,
}

/// Every live mapping of the process, by first byte. Lets a caller ask whether any byte
/// range (a tensor sliced from the middle of a buffer, say) lies inside memory
/// libswapper allocated, and keep such memory mapped past its owner's end (language
/// bindings whose views of a pool cannot be revoked). The lock is held for one insertion,
/// removal or lookup (and the munmap of a mapping being removed).
static LIVE: LazyLock<Mutex<BTreeMap<usize, Mapping>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn live() -> std::sync::MutexGuard<'static, BTreeMap<usize, Mapping>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first byte of the mapping holding all of `[addr, addr + len)`, if one does. An
/// empty range is inside a mapping when its address is.
fn containing(map: &BTreeMap<usize, Mapping>, addr: usize, len: usize) -> Option<usize> {
    let end = addr.checked_add(len)?;
    let (&start, m) = map.range(..=addr).next_back()?;
    let map_end = start + m.map_len;
    (addr < map_end && end <= map_end).then_some(start)
}

/// Whether `[addr, addr + len)` lies inside one live libswapper allocation
/// ([`AlignedBuf`]: buffer pools, staging space, `swapper_alloc_aligned`): `None` if not,
/// else `Some(locked)` telling whether that allocation's pages are locked in RAM. An
/// empty range (`len` 0) is inside an allocation when its address is. Thread-safe.
pub fn find_allocation(addr: usize, len: usize) -> Option<bool> {
    let map = live();
    let start = containing(&map, addr, len)?;
    let m = map.get(&start)?;
    // Inside the bytes asked for, not only the page-rounded mapping (as DeepSpeed's own
    // pinned-tensor manager checks).
    (addr + len <= start + m.len.max(1)).then_some(m.locked)
}

/// Keeps the allocation holding all of `[addr, addr + len)` mapped until a matching
/// [`release`], even if its owner (a swapper's pool, say) is dropped first: the memory
/// then stays readable and writable but belongs to nobody. Each call needs one
/// `release`. `NotFound` if the range is not inside one live allocation. Thread-safe.
pub fn retain(addr: usize, len: usize) -> Result<()> {
    let mut map = live();
    let start = containing(&map, addr, len).ok_or_else(|| {
        Error::new(
            Status::NotFound,
            format!("{len} bytes at {addr:#x} are not inside memory allocated by libswapper"),
        )
    })?;
    if let Some(m) = map.get_mut(&start) {
        m.retained += 1;
    }
    Ok(())
}

/// Ends one [`retain`] of the allocation holding `addr` (any address inside it); the
/// last one of an allocation whose owner is gone unmaps it. `InvalidArgument` if `addr`
/// is in no allocation or its allocation is not retained. Thread-safe.
pub fn release(addr: usize) -> Result<()> {
    let mut map = live();
    let not_retained = || Error::invalid(format!("{addr:#x} is not inside retained libswapper memory"));
    let start = containing(&map, addr, 0).ok_or_else(not_retained)?;
    let m = map.get_mut(&start).ok_or_else(not_retained)?;
    if m.retained == 0 {
        return Err(not_retained());
    }
    m.retained -= 1;
    if m.retained == 0 && m.orphaned {
        if let Some(m) = map.remove(&start) {
            // SAFETY: the mapping's owner is gone and this was its last retain: nothing
            // refers to the range any more.
            unsafe { unmap(start as *mut u8, m.map_len, m.locked) };
        }
    }
    Ok(())
}

/// Unlocks (when `locked`) and unmaps a mapping of [`map_anonymous`].
///
/// # Safety
/// `ptr`/`map_len` must be one whole mapping from `AlignedBuf::new` that nothing uses.
unsafe fn unmap(ptr: *mut u8, map_len: usize, locked: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        if locked {
            libc::munlock(ptr as *const libc::c_void, map_len);
        }
        libc::munmap(ptr as *mut libc::c_void, map_len);
    }
}

/// Size of a transparent huge page on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Maps `len` (a multiple of the page size) zero-filled bytes. A mapping of 2 MiB or more
/// starts on a 2 MiB boundary and asks for transparent huge pages (MADV_HUGEPAGE): with
/// 4 KiB pages a 1 MiB request is 256 scatter-gather segments, more than virtio and many
/// NVMe queues take in one command, so the kernel splits every request in two; with
/// 2 MiB pages it is one segment, and the CPU spent pinning pages falls several times.
/// Where huge pages are unavailable the advice is ignored and nothing else changes.
fn map_anonymous(len: usize) -> std::result::Result<*mut u8, i32> {
    let huge = len >= HUGE_PAGE;
    let span = if huge { len + HUGE_PAGE } else { len };
    // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOMEM));
    }
    let base = base as usize;
    if !huge {
        return Ok(base as *mut u8);
    }
    let start = base.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    // SAFETY: both ranges lie inside the mapping just made and are not used: the slack
    // before the aligned start and after its end are given back.
    unsafe {
        if start > base {
            libc::munmap(base as *mut libc::c_void, start - base);
        }
        let end = start + len;
        if base + span > end {
            libc::munmap(end as *mut libc::c_void, base + span - end);
        }
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(start as *mut u8)
}

/// A zero-filled, page-aligned allocation, unmapped on drop.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
    locked: bool,
}

// SAFETY: the mapping is owned by this value alone; access goes through &self / &mut self.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out shared slices.
unsafe impl Sync for AlignedBuf {}

/// The page size, the alignment of every [`AlignedBuf`].
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The bytes an [`AlignedBuf`] of `len` bytes maps, and so locks when it is page-locked,
/// as the kernel counts them (VmLck, the memory cgroup): `len` rounded up to whole pages,
/// one page for 0. `None` when that overflows.
pub fn mapped_len(len: usize) -> Option<usize> {
    let page = page_size();
    len.max(1).checked_add(page - 1).map(|v| v / page * page)
}

/// Total physical memory in bytes (0 if unknown).
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        0
    }
}

impl AlignedBuf {
    /// Maps `len` bytes (at least one page), zero-filled and page-aligned. With `lock`, tries
    /// to lock the pages in RAM; when the limit refuses, the memory stays unlocked and a
    /// warning is logged ([`AlignedBuf::is_locked`] tells). A request larger than the
    /// machine's memory fails with `OutOfMemory` instead of being overcommitted.
    pub fn new(len: usize, lock: bool) -> Result<AlignedBuf> {
        let map_len = mapped_len(len)
            .ok_or_else(|| Error::new(Status::OutOfMemory, format!("cannot allocate {len} bytes")))?;
        let phys = physical_memory();
        if phys > 0 && map_len as u64 > phys {
            return Err(Error::new(
                Status::OutOfMemory,
                format!("cannot allocate {len} bytes: the machine has {phys} bytes of memory"),
            ));
        }
        let ptr = map_anonymous(map_len).map_err(|errno| {
            Error::new(
                Status::OutOfMemory,
                format!(
                    "cannot allocate {len} bytes: {}",
                    crate::status::errno_text(errno)
                ),
            )
        })?;
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::new(Status::OutOfMemory, "mmap returned NULL"))?;
        let mut buf = AlignedBuf {
            ptr,
            len,
            map_len,
            locked: false,
        };
        if lock {
            // SAFETY: the range is the mapping just created.
            let rc = unsafe { libc::mlock(buf.ptr.as_ptr() as *const libc::c_void, map_len) };
            if rc == 0 {
                buf.locked = true;
            } else {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                crate::log!(
                    Warn,
                    "could not page-lock {map_len} bytes ({}); the buffer stays unlocked (raise RLIMIT_MEMLOCK, `ulimit -l`)",
                    crate::status::errno_text(errno)
                );
            }
        }
        live().insert(
            buf.ptr.as_ptr() as usize,
            Mapping {
                len,
                map_len,
                locked: buf.locked,
                retained: 0,
                orphaned: false,
            },
        );
        Ok(buf)
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first byte, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The address as a [`super::RawBuf`] for I/O. Writing through it needs the
    /// caller to hold the buffer exclusively, as the `unsafe` I/O functions state.
    pub fn raw(&self) -> super::RawBuf {
        super::RawBuf(self.ptr.as_ptr())
    }

    /// Bytes asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether zero bytes were asked for.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pages are locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping holds at least `len` initialised (zero-filled) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let start = self.ptr.as_ptr() as usize;
        let mut map = live();
        if let Some(m) = map.get_mut(&start) {
            if m.retained > 0 {
                // Someone still holds views of it: the last `release` unmaps.
                m.orphaned = true;
                return;
            }
        }
        // Out of the registry before the unmap, so no lookup reports a dead range.
        map.remove(&start);
        // SAFETY: the mapping was created in `new` with this length, is not retained and
        // is not used after drop.
        unsafe { unmap(self.ptr.as_ptr(), self.map_len, self.locked) };
    }
}

/// A C allocator for the buffer pool: `alloc(nbytes, alignment, user_data)` returns memory
/// aligned to `alignment` or NULL; `free(ptr, nbytes, user_data)` gives it back.
#[derive(Clone, Copy, Debug)]
pub struct ExternalAllocator {
    /// Allocates.
    pub alloc: extern "C" fn(nbytes: u64, alignment: u64, user_data: *mut libc::c_void) -> *mut libc::c_void,
    /// Frees.
    pub free: extern "C" fn(ptr: *mut libc::c_void, nbytes: u64, user_data: *mut libc::c_void),
    /// Passed back to both, never touched.
    pub user_data: usize,
}

/// Memory for a buffer pool: ours (mmap) or the caller's allocator's.
pub enum Memory {
    /// From [`AlignedBuf`].
    Own(AlignedBuf),
    /// From an [`ExternalAllocator`], given back to it on drop.
    External {
        /// The first byte.
        ptr: std::ptr::NonNull<u8>,
        /// Bytes.
        len: usize,
        /// Who frees it.
        allocator: ExternalAllocator,
    },
}

// SAFETY: the memory is owned by this value; the external allocator's callbacks are
// documented as callable from any thread.
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Memory {
    /// `len` bytes, page-aligned, zero-filled, from `allocator` if given (checked for
    /// alignment) or from mmap (locked when `lock`).
    pub fn allocate(len: usize, lock: bool, allocator: Option<ExternalAllocator>) -> Result<Memory> {
        let Some(allocator) = allocator else {
            return AlignedBuf::new(len, lock).map(Memory::Own);
        };
        let align = page_size() as u64;
        let raw = (allocator.alloc)(len as u64, align, allocator.user_data as *mut libc::c_void);
        let Some(ptr) = std::ptr::NonNull::new(raw as *mut u8) else {
            return Err(Error::new(
                Status::OutOfMemory,
                format!("the caller's allocator returned NULL for {len} bytes"),
            ));
        };
        if ptr.as_ptr() as u64 % align != 0 {
            (allocator.free)(raw, len as u64, allocator.user_data as *mut libc::c_void);
            return Err(Error::invalid(format!(
                "the caller's allocator returned {raw:p}, which is not aligned to {align} bytes"
            )));
        }
        // SAFETY: the allocator returned `len` writable bytes at `ptr`.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Ok(Memory::External { ptr, len, allocator })
    }

    /// The first byte, for I/O.
    pub fn raw(&self) -> super::RawBuf {
        match self {
            Memory::Own(b) => b.raw(),
            Memory::External { ptr, .. } => super::RawBuf(ptr.as_ptr()),
        }
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        match self {
            Memory::Own(b) => b.len(),
            Memory::External { len, .. } => *len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the pages are locked in RAM: ours as mlock left them; external memory
    /// only when it lies inside a locked libswapper allocation (a caller's allocator
    /// that hands out `swapper_alloc_aligned` memory), else false.
    pub fn is_locked(&self) -> bool {
        match self {
            Memory::Own(b) => b.is_locked(),
            Memory::External { ptr, len, .. } => find_allocation(ptr.as_ptr() as usize, *len) == Some(true),
        }
    }

    /// `len` bytes at `offset`, for reading.
    ///
    /// # Safety
    /// No I/O may be writing to that range while the slice lives.
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len()));
        // SAFETY: in bounds (checked); the caller's contract covers concurrent writes.
        unsafe { std::slice::from_raw_parts(self.raw().0.add(offset), len) }
    }

    /// `len` bytes at `offset`, for writing.
    ///
    /// # Safety
    /// No I/O may be reading or writing that range, and no other slice of it may live,
    /// while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len()));
        // SAFETY: in bounds (checked); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.raw().0.add(offset), len) }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        if let Memory::External { ptr, len, allocator } = self {
            (allocator.free)(
                ptr.as_ptr() as *mut libc::c_void,
                *len as u64,
                allocator.user_data as *mut libc::c_void,
            );
        }
    }
}

/// Reads `len` bytes at `buf` as a slice.
///
/// # Safety
/// `buf` must be valid for reading `len` bytes, and nothing may write them while the slice lives.
pub unsafe fn borrow<'a>(buf: super::RawBuf, len: usize) -> &'a [u8] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(buf.0, len) }
}

/// Reads `len` f32 values at `ptr` as a slice.
///
/// # Safety
/// `ptr` must be valid, aligned for f32, for reading `len` values, and not written while the slice lives.
pub unsafe fn borrow_f32<'a>(ptr: *const f32, len: usize) -> &'a [f32] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        for len in [0usize, 1, 4095, 4096, 1 << 20] {
            let mut b = AlignedBuf::new(len, false).unwrap();
            assert_eq!(b.as_ptr() as usize % 4096, 0);
            assert_eq!(b.len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice().fill(7);
            assert!(b.as_slice().iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn large_buffers_start_on_a_huge_page_boundary() {
        let mut b = AlignedBuf::new(5 << 20, false).unwrap();
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        b.as_mut_slice()[(5 << 20) - 1] = 1; // the whole length is mapped
        let small = AlignedBuf::new(8192, false).unwrap();
        assert_eq!(small.as_ptr() as usize % 4096, 0);
    }

    #[test]
    fn lock_is_reported() {
        // The kernel's count of this process's locked memory, in KiB.
        fn locked_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let before = locked_kib();
        let b = AlignedBuf::new(1 << 20, true).unwrap();
        let during = locked_kib();
        // Locking may be refused by the limit: is_locked says which happened. (Other
        // tests lock memory at the same time, so only the direction is checked.)
        if b.is_locked() {
            assert!(
                during >= 1024,
                "is_locked, yet the kernel counts {during} KiB locked"
            );
        } else {
            assert!(
                during < before + 1024,
                "not is_locked, yet {before} -> {during} KiB locked"
            );
        }
        let u = AlignedBuf::new(1 << 16, false).unwrap();
        assert!(!u.is_locked());
    }

    #[test]
    fn any_range_inside_an_allocation_is_found() {
        let b = AlignedBuf::new(3 * 4096, false).unwrap();
        let start = b.as_ptr() as usize;
        assert_eq!(find_allocation(start, 3 * 4096), Some(false));
        assert_eq!(find_allocation(start + 5000, 100), Some(false)); // from the middle
        assert_eq!(find_allocation(start + 3 * 4096 - 1, 1), Some(false));
        assert_eq!(find_allocation(start + 100, 0), Some(false));
        assert_eq!(find_allocation(start + 4096, 3 * 4096), None); // runs past the end
        let odd = AlignedBuf::new(5000, false).unwrap();
        let o = odd.as_ptr() as usize;
        assert_eq!(find_allocation(o + 4000, 1000), Some(false));
        assert_eq!(find_allocation(o + 4000, 1001), None); // into the page-rounding tail
        assert_eq!(find_allocation(usize::MAX - 1, 10), None);
        let outside = [0u8; 64];
        assert_eq!(find_allocation(outside.as_ptr() as usize, 64), None);
    }

    #[test]
    fn retained_memory_outlives_its_owner() {
        let mut b = AlignedBuf::new(2 * 4096, false).unwrap();
        b.as_mut_slice()[5000] = 9;
        let start = b.as_ptr() as usize;
        assert_eq!(retain(start + 4096, 100).map_err(|e| e.status()), Ok(()));
        assert_eq!(retain(start, 3 * 4096).unwrap_err().status(), Status::NotFound);
        drop(b);
        // Still mapped and still registered: the byte written before the drop is there.
        assert_eq!(find_allocation(start + 5000, 1), Some(false));
        // SAFETY: the retain above keeps the range mapped.
        assert_eq!(unsafe { *((start + 5000) as *const u8) }, 9);
        release(start + 10).unwrap();
        assert_eq!(release(start + 10).unwrap_err().status(), Status::InvalidArgument);
        let outside = [0u8; 8];
        assert_eq!(
            release(outside.as_ptr() as usize).unwrap_err().status(),
            Status::InvalidArgument
        );
    }

    #[test]
    fn mapped_length_is_whole_pages() {
        let page = page_size();
        assert_eq!(mapped_len(0), Some(page));
        assert_eq!(mapped_len(1), Some(page));
        assert_eq!(mapped_len(page), Some(page));
        assert_eq!(mapped_len(page + 1), Some(2 * page));
        assert_eq!(mapped_len(usize::MAX), None);
    }

    #[test]
    fn larger_than_memory_is_refused() {
        let e = AlignedBuf::new(usize::MAX / 2, false).err().unwrap();
        assert_eq!(e.status(), Status::OutOfMemory);
    }
}
