//! What the kernel says about this process's memory: the RLIMIT_MEMLOCK soft limit, and
//! the small text files under `/proc` and the cgroup file systems that describe memory
//! (read whole; parsed above this layer, in [`crate::memory_budget`]).

use std::path::Path;

/// The soft RLIMIT_MEMLOCK in bytes: how much this process may page-lock without
/// CAP_IPC_LOCK. `None` when unlimited (or when the limit cannot be read: then the
/// kernel's mlock stays the judge, as it always is).
pub fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// The whole text of a small file (`/proc/meminfo`, a cgroup's `memory.max`); `None`
/// when it does not exist or cannot be read (a controller that is not mounted, a
/// folder a container hides): the caller then has no constraint from it.
pub fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_limit_and_proc_files() {
        // The test process's own limit, as the shell would print it.
        if let Some(limit) = memlock_limit() {
            assert!(limit < u64::MAX);
        }
        let meminfo = read_text(Path::new("/proc/meminfo")).unwrap();
        assert!(meminfo.contains("MemTotal:"));
        assert_eq!(read_text(Path::new("/proc/self/no-such-file")), None);
    }
}
