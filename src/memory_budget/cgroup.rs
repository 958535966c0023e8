//! The memory cgroups that hold this process and the room each leaves: cgroup v1
//! (`memory.limit_in_bytes`, `memory.usage_in_bytes`) and v2 (`memory.max`,
//! `memory.current`), found through `/proc/self/cgroup` and `/proc/self/mountinfo`, for
//! the process's own group and every ancestor up to the mount's root (in a nested
//! hierarchy an ancestor's limit binds its descendants).
//!
//! "In use" is the group's working set: its usage less its inactive file cache
//! (`total_inactive_file` in v1's `memory.stat`, `inactive_file` in v2's), which the kernel
//! reclaims before it kills anyone (the figure kubelet and cAdvisor use).

use std::path::{Path, PathBuf};

/// Which cgroup hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1, the `memory` controller's own hierarchy.
    V1,
    /// cgroup v2, the unified hierarchy.
    V2,
}

/// One memory cgroup with a limit, and what is in use in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRoom {
    /// Its folder (under the cgroup file system's mount point).
    pub folder: PathBuf,
    /// Which hierarchy.
    pub version: Version,
    /// The limit in bytes.
    pub limit: u64,
    /// The working set in bytes.
    pub in_use: u64,
}

impl CgroupRoom {
    /// Bytes that still fit under the limit.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(self.in_use)
    }
}

/// The memory cgroups of this process and all their ancestors that have a limit, read
/// with `read` (the whole text of a file, `None` if it cannot be read). Empty when no
/// memory controller is mounted or the files are hidden.
pub fn rooms(read: impl Fn(&Path) -> Option<String>) -> Vec<CgroupRoom> {
    let (Some(cgroup), Some(mountinfo)) = (
        read(Path::new("/proc/self/cgroup")),
        read(Path::new("/proc/self/mountinfo")),
    ) else {
        return Vec::new();
    };
    let mounts = mounts(&mountinfo);
    let mut out = Vec::new();
    for (version, path) in memberships(&cgroup) {
        let Some(folder) = mounts
            .iter()
            .filter(|m| m.version == version)
            .find_map(|m| m.folder_of(&path).map(|f| (f, &m.point)))
        else {
            continue;
        };
        let (mut folder, point) = folder;
        loop {
            if let Some(room) = level(&read, &folder, version) {
                out.push(room);
            }
            if folder == *point || !folder.pop() || !folder.starts_with(point) {
                break;
            }
        }
    }
    out
}

/// The memory cgroup paths in the text of `/proc/self/cgroup`: the v1 line whose
/// controller list holds `memory`, and the v2 line (`0::/path`).
pub fn memberships(text: &str) -> Vec<(Version, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == "memory") {
                Some((Version::V1, path.to_string()))
            } else if id == "0" && controllers.is_empty() {
                Some((Version::V2, path.to_string()))
            } else {
                None
            }
        })
        .collect()
}

/// A mounted cgroup file system that can hold memory limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Which hierarchy.
    pub version: Version,
    /// The cgroup path the mount shows at its mount point ("/" unless a container
    /// mounted a sub-tree).
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
}

impl Mount {
    /// The folder of cgroup `path` under this mount, if the mount shows it.
    fn folder_of(&self, path: &str) -> Option<PathBuf> {
        let rest = if self.root == "/" {
            path
        } else if path == self.root {
            ""
        } else {
            path.strip_prefix(self.root.as_str())
                .filter(|r| r.starts_with('/'))?
        };
        let rest = rest.trim_start_matches('/');
        if rest.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rest.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rest)
        })
    }
}

/// The cgroup mounts in the text of `/proc/self/mountinfo`: `cgroup` file systems with
/// the `memory` option, and `cgroup2`.
pub fn mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let (root, point) = (fields.get(3)?, fields.get(4)?);
            let mut after = after.split(' ');
            let (fstype, _source, options) = (after.next()?, after.next()?, after.next().unwrap_or(""));
            let version = match fstype {
                "cgroup" if options.split(',').any(|o| o == "memory") => Version::V1,
                "cgroup2" => Version::V2,
                _ => return None,
            };
            Some(Mount {
                version,
                root: unescape(root),
                point: PathBuf::from(unescape(point)),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The limit and working set of the group in `folder`, if it has a limit.
fn level(read: &impl Fn(&Path) -> Option<String>, folder: &Path, version: Version) -> Option<CgroupRoom> {
    let number = |name: &str| read(&folder.join(name)).and_then(|t| t.trim().parse::<u64>().ok());
    let (limit, usage, inactive_key) = match version {
        Version::V1 => (
            number("memory.limit_in_bytes")?,
            number("memory.usage_in_bytes")?,
            "total_inactive_file",
        ),
        // "max" (no limit) does not parse: no constraint from this level.
        Version::V2 => (number("memory.max")?, number("memory.current")?, "inactive_file"),
    };
    let inactive = read(&folder.join("memory.stat"))
        .and_then(|stat| {
            stat.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == inactive_key).then(|| v.trim().parse::<u64>().ok())?
            })
        })
        .unwrap_or(0);
    Some(CgroupRoom {
        folder: folder.to_path_buf(),
        version,
        limit,
        in_use: usage.saturating_sub(inactive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// This machine's files: v1 controllers, each on its own mount, and a cgroup2 mount
    /// without the memory controller.
    const CGROUP_V1: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/jobs/job7\n3:cpuset:/\n0::/\n";
    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
";
    const CGROUP_V2: &str = "0::/user.slice/session-3.scope\n";
    const MOUNTINFO_V2: &str = "25 20 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn parses_memberships() {
        assert_eq!(
            memberships(CGROUP_V1),
            vec![
                (Version::V1, "/jobs/job7".to_string()),
                (Version::V2, "/".to_string())
            ]
        );
        assert_eq!(
            memberships(CGROUP_V2),
            vec![(Version::V2, "/user.slice/session-3.scope".to_string())]
        );
        // Controllers listed together (memory,cpu), and garbage lines skipped.
        assert_eq!(
            memberships("5:cpu,memory:/a\nnonsense\n"),
            vec![(Version::V1, "/a".to_string())]
        );
    }

    #[test]
    fn parses_mounts() {
        let m = mounts(MOUNTINFO_V1);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].version, Version::V1);
        assert_eq!(m[0].point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m[1].version, Version::V2);
        // Optional fields before the separator, and an escaped space in the mount point.
        let m = mounts("40 30 0:40 /ctr /mnt/cg\\040v1 rw shared:5 master:1 - cgroup cg rw,memory,cpu\n");
        assert_eq!(m[0].point, Path::new("/mnt/cg v1"));
        assert_eq!(m[0].root, "/ctr");
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn maps_a_cgroup_path_under_a_mount() {
        let m = Mount {
            version: Version::V1,
            root: "/docker/abc".into(),
            point: "/sys/fs/cgroup/memory".into(),
        };
        assert_eq!(m.folder_of("/docker/abc"), Some("/sys/fs/cgroup/memory".into()));
        assert_eq!(
            m.folder_of("/docker/abc/x"),
            Some("/sys/fs/cgroup/memory/x".into())
        );
        assert_eq!(m.folder_of("/docker/abcd"), None);
        assert_eq!(m.folder_of("/other"), None);
        let root = Mount {
            root: "/".into(),
            ..m
        };
        assert_eq!(root.folder_of("/"), Some("/sys/fs/cgroup/memory".into()));
        assert_eq!(root.folder_of("/a/../../etc"), None);
    }

    #[test]
    fn v1_every_ancestor_with_its_working_set() {
        let read = files(&[
            ("/proc/self/cgroup", CGROUP_V1),
            ("/proc/self/mountinfo", MOUNTINFO_V1),
            (
                "/sys/fs/cgroup/memory/jobs/job7/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/jobs/job7/memory.usage_in_bytes",
                "300000\n",
            ),
            ("/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes", "536870912\n"),
            ("/sys/fs/cgroup/memory/jobs/memory.usage_in_bytes", "100000000\n"),
            (
                "/sys/fs/cgroup/memory/jobs/memory.stat",
                "cache 1\ninactive_file 7\ntotal_inactive_file 40000000\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "9000000000\n"),
            // The v2 mount has no memory controller: no memory.max anywhere.
        ]);
        let r = rooms(read);
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[0].folder, Path::new("/sys/fs/cgroup/memory/jobs/job7"));
        assert_eq!(r[1].folder, Path::new("/sys/fs/cgroup/memory/jobs"));
        assert_eq!((r[1].limit, r[1].in_use), (536_870_912, 60_000_000));
        assert_eq!(r[1].room(), 476_870_912);
        assert_eq!(r[2].folder, Path::new("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn v2_limits_and_max() {
        let read = files(&[
            ("/proc/self/cgroup", CGROUP_V2),
            ("/proc/self/mountinfo", MOUNTINFO_V2),
            ("/sys/fs/cgroup/user.slice/session-3.scope/memory.max", "max\n"),
            (
                "/sys/fs/cgroup/user.slice/session-3.scope/memory.current",
                "5000\n",
            ),
            ("/sys/fs/cgroup/user.slice/memory.max", "1073741824\n"),
            ("/sys/fs/cgroup/user.slice/memory.current", "2000000000\n"),
            (
                "/sys/fs/cgroup/user.slice/memory.stat",
                "anon 1\ninactive_file 100\n",
            ),
        ]);
        let r = rooms(read);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].version, Version::V2);
        assert_eq!((r[0].limit, r[0].in_use), (1_073_741_824, 1_999_999_900));
        assert_eq!(r[0].room(), 0, "over the limit: no room, not a wrap-around");
    }

    #[test]
    fn nothing_readable_is_no_constraint() {
        assert!(rooms(files(&[])).is_empty());
        assert!(rooms(files(&[
            ("/proc/self/cgroup", CGROUP_V1),
            ("/proc/self/mountinfo", "")
        ]))
        .is_empty());
    }
}
