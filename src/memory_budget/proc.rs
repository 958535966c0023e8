//! What `/proc/meminfo` and `/proc/self/status` say about memory: MemAvailable, the
//! bytes this process has page-locked already (VmLck), and whether it holds
//! CAP_IPC_LOCK (which lifts RLIMIT_MEMLOCK).

/// The capability that lets a process page-lock past RLIMIT_MEMLOCK.
const CAP_IPC_LOCK: u32 = 14;

/// The value of a `Key:   N kB` line, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => n.checked_mul(1024),
            None => Some(n),
            Some(_) => None,
        }
    })
}

/// MemAvailable from the text of `/proc/meminfo`: the kernel's estimate of the memory
/// that can be had without swapping, reclaimable caches included.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable")
}

/// VmLck from the text of `/proc/self/status`: the bytes this process has page-locked,
/// the count RLIMIT_MEMLOCK is checked against.
pub fn locked_bytes(status: &str) -> Option<u64> {
    kib_field(status, "VmLck")
}

/// Whether CapEff in the text of `/proc/self/status` holds CAP_IPC_LOCK.
pub fn has_ipc_lock(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24683584 kB\nMemFree:        16110632 kB\n\
        MemAvailable:   23772824 kB\nBuffers:          181040 kB\nHugePages_Total:       0\n";

    const STATUS_ROOT: &str = "Name:\tcat\nVmPeak:\t    8520 kB\nVmLck:\t    2048 kB\n\
        CapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";

    const STATUS_USER: &str = "Name:\tcat\nVmLck:\t       0 kB\nCapEff:\t0000000000000000\n";

    #[test]
    fn reads_mem_available() {
        assert_eq!(mem_available(MEMINFO), Some(23_772_824 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        // A key that only starts like the one asked for is another key.
        assert_eq!(kib_field("MemAvailableX: 5 kB\n", "MemAvailable"), None);
        assert_eq!(kib_field(MEMINFO, "HugePages_Total"), Some(0));
    }

    #[test]
    fn reads_locked_bytes_and_the_capability() {
        assert_eq!(locked_bytes(STATUS_ROOT), Some(2048 * 1024));
        assert_eq!(locked_bytes(STATUS_USER), Some(0));
        assert!(has_ipc_lock(STATUS_ROOT));
        assert!(!has_ipc_lock(STATUS_USER));
        // Every capability but CAP_IPC_LOCK (bit 14).
        assert!(!has_ipc_lock("CapEff:\t000001ffffffbfff\n"));
        assert!(!has_ipc_lock("Name: x\n"));
    }
}
