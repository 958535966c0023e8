//! Page-locked memory the library can promise: before anything is pinned, the caller
//! (the parameter swapper's pool, its partitioned staging space, the optimizer-state
//! swapper's ring, `swapper_alloc_aligned`) lists what it will page-lock as [`Demand`]s and
//! [`check`]s them against what this process can have:
//!
//! - the memory cgroups that hold it (v1 and v2, the tightest ancestor; [`cgroup`]) and
//!   MemAvailable ([`proc`]): locked pages cannot be reclaimed, so a demand above either
//!   is refused at once with `OutOfMemory` and a message that says how much was asked,
//!   how much fits and which setting to lower, instead of the OOM killer later;
//! - RLIMIT_MEMLOCK (unless the process holds CAP_IPC_LOCK), less what it has locked
//!   already: above it, the memory still fits, so the [`Plan`] says to allocate without
//!   locking, and a warning says so.
//!
//! Sizes are exact: each allocation's length rounded up to whole pages, as the kernel
//! counts locked and charged memory ([`crate::sys::alloc::mapped_len`]).

pub mod cgroup;
pub mod proc;

use std::path::Path;

use crate::status::{Error, Result, Status};
use crate::sys::alloc::mapped_len;
use crate::sys::limits;
use cgroup::CgroupRoom;

/// One allocation to page-lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    /// What it is, for messages: "the buffer pool (5 buffers of 200000000 bytes)".
    pub what: String,
    /// The setting(s) that size it, named as the caller sets them: "buffer_count or
    /// buffer_numel (DeepSpeed offload_param.buffer_count / buffer_size)".
    pub setting: String,
    /// Bytes asked of the allocator ([`crate::sys::alloc::AlignedBuf::new`]'s `len`).
    pub bytes: u64,
}

impl Demand {
    /// A demand of `bytes` (the allocation's length) for `what`, sized by `setting`.
    pub fn new(what: impl Into<String>, setting: impl Into<String>, bytes: u64) -> Demand {
        Demand {
            what: what.into(),
            setting: setting.into(),
            bytes,
        }
    }

    /// The bytes the kernel will count for it: whole pages.
    pub fn locked_bytes(&self) -> Result<u64> {
        usize::try_from(self.bytes)
            .ok()
            .and_then(mapped_len)
            .map(|b| b as u64)
            .ok_or_else(|| {
                Error::new(
                    Status::OutOfMemory,
                    format!(
                        "{} asks for {} bytes, more than this machine can address; lower {}",
                        self.what, self.bytes, self.setting
                    ),
                )
            })
    }
}

/// What [`check`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Bytes the demands page-lock together, as the kernel counts them.
    pub bytes: u64,
    /// Whether to lock them: false when RLIMIT_MEMLOCK refuses (the memory fits, so
    /// the allocation works unlocked).
    pub lock: bool,
    /// Why not, when `lock` is false (logged as a warning by [`check`]).
    pub notice: Option<String>,
}

/// RLIMIT_MEMLOCK as it applies to this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memlock {
    /// The soft limit in bytes.
    pub limit: u64,
    /// Bytes this process has locked already (VmLck).
    pub locked: u64,
}

/// What this process can page-lock, read from the system at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    /// MemAvailable, if `/proc/meminfo` says.
    pub mem_available: Option<u64>,
    /// The memory cgroups with a limit that hold the process, its own first.
    pub cgroups: Vec<CgroupRoom>,
    /// `None`: no limit (unlimited, or CAP_IPC_LOCK).
    pub memlock: Option<Memlock>,
}

impl Limits {
    /// Reads `/proc/meminfo`, `/proc/thread-self/status` (capabilities are the calling
    /// thread's, as mlock checks them; VmLck is the process's), the memory cgroups and
    /// RLIMIT_MEMLOCK.
    pub fn current() -> Limits {
        let status = limits::read_text(Path::new("/proc/thread-self/status")).unwrap_or_default();
        let memlock = match limits::memlock_limit() {
            Some(limit) if !proc::has_ipc_lock(&status) => Some(Memlock {
                limit,
                locked: proc::locked_bytes(&status).unwrap_or(0),
            }),
            _ => None,
        };
        Limits {
            mem_available: limits::read_text(Path::new("/proc/meminfo"))
                .and_then(|t| proc::mem_available(&t)),
            cgroups: cgroup::rooms(limits::read_text),
            memlock,
        }
    }
}

/// Bytes and MiB, for messages.
fn size(bytes: u64) -> String {
    format!("{bytes} bytes ({:.1} MiB)", bytes as f64 / (1u64 << 20) as f64)
}

/// The demands' total as the kernel counts it.
pub fn locked_bytes(demands: &[Demand]) -> Result<u64> {
    demands.iter().try_fold(0u64, |sum, d| {
        sum.checked_add(d.locked_bytes()?).ok_or_else(|| {
            Error::new(
                Status::OutOfMemory,
                "the page-locked allocations are too large together",
            )
        })
    })
}

/// Checks `demands` against the system's limits as they are now ([`Limits::current`]);
/// see [`decide`]. A plan that does not lock is logged as a warning.
pub fn check(demands: &[Demand]) -> Result<Plan> {
    let plan = decide(demands, &Limits::current())?;
    if let Some(notice) = &plan.notice {
        crate::log!(Warn, "{notice}");
    }
    Ok(plan)
}

/// The decision, for given limits: `OutOfMemory` when the demands together do not fit
/// MemAvailable or a memory cgroup's room (the tightest one is named); a plan without
/// locking when only RLIMIT_MEMLOCK refuses; else a plan that locks.
pub fn decide(demands: &[Demand], limits: &Limits) -> Result<Plan> {
    let bytes = locked_bytes(demands)?;
    let whats: Vec<&str> = demands.iter().map(|d| d.what.as_str()).collect();
    let what = whats.join(" and ");
    let needs = if demands.len() > 1 {
        let parts: Vec<String> = demands
            .iter()
            .map(|d| format!("{} bytes", d.locked_bytes().unwrap_or(d.bytes)))
            .collect();
        format!("{} in all ({})", size(bytes), parts.join(" + "))
    } else {
        size(bytes)
    };
    let mut tightest: Option<(u64, String)> = limits
        .mem_available
        .map(|a| (a, format!("MemAvailable in /proc/meminfo is {}", size(a))));
    for g in &limits.cgroups {
        if tightest.as_ref().is_none_or(|(room, _)| g.room() < *room) {
            tightest = Some((
                g.room(),
                format!(
                    "the memory cgroup {} has a limit of {} with {} in use",
                    g.folder.display(),
                    size(g.limit),
                    size(g.in_use)
                ),
            ));
        }
    }
    if let Some((room, why)) = tightest.filter(|(room, _)| bytes > *room) {
        let mut settings: Vec<&str> = Vec::new();
        for d in demands {
            if !settings.contains(&d.setting.as_str()) {
                settings.push(&d.setting);
            }
        }
        return Err(Error::new(
            Status::OutOfMemory,
            format!(
                "cannot page-lock {what}: it needs {needs}, but only {} fit ({why}); \
                 lower {} to fit, or make room",
                size(room),
                settings.join(", or ")
            ),
        ));
    }
    if let Some(m) = limits.memlock {
        if m.locked.saturating_add(bytes) > m.limit {
            return Ok(Plan {
                bytes,
                lock: false,
                notice: Some(format!(
                    "{what} is not page-locked: it needs {needs} locked, and RLIMIT_MEMLOCK \
                     allows {} of which {} are locked already; the memory fits, so it works \
                     unlocked (raise `ulimit -l`, or grant CAP_IPC_LOCK, to pin it)",
                    size(m.limit),
                    size(m.locked)
                )),
            });
        }
    }
    Ok(Plan {
        bytes,
        lock: true,
        notice: None,
    })
}

#[cfg(test)]
mod tests {
    use super::cgroup::Version;
    use super::*;
    use crate::sys::alloc::page_size;

    const GIB: u64 = 1 << 30;

    fn pool() -> Demand {
        Demand::new(
            "the buffer pool (5 buffers of 200000000 bytes)",
            "buffer_count or buffer_numel",
            1_000_000_000,
        )
    }

    fn roomy() -> Limits {
        Limits {
            mem_available: Some(20 * GIB),
            cgroups: Vec::new(),
            memlock: None,
        }
    }

    #[test]
    fn sizes_are_whole_pages_and_not_powers_of_two() {
        let page = page_size() as u64;
        let d = Demand::new("x", "s", 1_000_000_000);
        assert_eq!(d.locked_bytes().unwrap(), 1_000_000_000u64.div_ceil(page) * page);
        let plan = decide(&[d, Demand::new("y", "t", 1)], &roomy()).unwrap();
        assert_eq!(plan.bytes, 1_000_000_000u64.div_ceil(page) * page + page);
        assert!(plan.lock && plan.notice.is_none());
        assert_eq!(decide(&[], &roomy()).unwrap().bytes, 0);
        let e = decide(&[Demand::new("x", "s", u64::MAX)], &roomy()).unwrap_err();
        assert_eq!(e.status(), Status::OutOfMemory);
    }

    #[test]
    fn the_tightest_cgroup_refuses_with_sizes_and_the_setting() {
        let limits = Limits {
            cgroups: vec![
                CgroupRoom {
                    folder: "/sys/fs/cgroup/memory/job/inner".into(),
                    version: Version::V1,
                    limit: 4 * GIB,
                    in_use: 0,
                },
                CgroupRoom {
                    folder: "/sys/fs/cgroup/memory/job".into(),
                    version: Version::V1,
                    limit: 512 << 20,
                    in_use: 12 << 20,
                },
            ],
            ..roomy()
        };
        let e = decide(&[pool()], &limits).unwrap_err();
        assert_eq!(e.status(), Status::OutOfMemory);
        let m = e.message();
        assert!(
            m.contains("the buffer pool (5 buffers of 200000000 bytes)"),
            "{m}"
        );
        assert!(
            m.contains(&format!("needs {} bytes", pool().locked_bytes().unwrap())),
            "{m}"
        );
        assert!(m.contains("only 524288000 bytes (500.0 MiB) fit"), "{m}");
        assert!(m.contains("/sys/fs/cgroup/memory/job has a limit"), "{m}");
        assert!(m.contains("lower buffer_count or buffer_numel"), "{m}");
        // A pool that fits the room is locked.
        let small = Demand::new("p", "s", 400 << 20);
        assert!(decide(&[small], &limits).unwrap().lock);
    }

    #[test]
    fn mem_available_refuses() {
        let limits = Limits {
            mem_available: Some(GIB / 2),
            ..roomy()
        };
        let ring = Demand::new("the optimizer ring", "the ring budget", GIB / 4);
        let e = decide(&[pool(), ring], &limits).unwrap_err();
        let m = e.message();
        assert!(
            m.contains("the buffer pool (5 buffers of 200000000 bytes) and the optimizer ring"),
            "{m}"
        );
        assert!(
            m.contains("MemAvailable in /proc/meminfo is 536870912 bytes"),
            "{m}"
        );
        assert!(m.contains(" in all ("), "{m}");
        assert!(
            m.contains("lower buffer_count or buffer_numel, or the ring budget"),
            "{m}"
        );
    }

    #[test]
    fn only_the_memlock_limit_refusing_means_unlocked() {
        let limits = Limits {
            memlock: Some(Memlock {
                limit: 8 << 20,
                locked: 1 << 20,
            }),
            ..roomy()
        };
        let plan = decide(&[Demand::new("p", "s", 7 << 20)], &limits).unwrap();
        assert!(plan.lock, "1 + 7 MiB fit an 8 MiB limit");
        let plan = decide(&[pool()], &limits).unwrap();
        assert!(!plan.lock);
        let n = plan.notice.unwrap();
        assert!(n.contains("RLIMIT_MEMLOCK allows 8388608 bytes"), "{n}");
        assert!(n.contains("1048576 bytes (1.0 MiB) are locked already"), "{n}");
        assert!(n.contains("works unlocked") && n.contains("ulimit -l"), "{n}");
        // Memory that does not fit is refused even when the limit would also refuse.
        let tight = Limits {
            mem_available: Some(GIB / 2),
            ..limits
        };
        assert_eq!(
            decide(&[pool()], &tight).unwrap_err().status(),
            Status::OutOfMemory
        );
    }

    #[test]
    fn this_process_limits_are_read() {
        let l = Limits::current();
        assert!(l.mem_available.is_some_and(|a| a > 0), "{l:?}");
    }
}
