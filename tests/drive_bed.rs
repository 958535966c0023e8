//! The multi-drive test bed (scripts/drive-bed.sh): a bed comes up with its mounts, loop
//! devices, blkio group and throttles; a command runs inside the group (its O_DIRECT
//! writes are counted against the bed's devices); and nothing is left afterwards: after
//! `down` (twice), after the command inside fails, after SIGTERM to the script, and after
//! the script is SIGKILLed at each step of `up`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::drive_bed::{command, leftovers, unique_name, DriveBed};

/// The file system type mounted at `mount`, from /proc/self/mountinfo.
fn mounted_fs(mount: &std::path::Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        (before.split(' ').nth(4)? == mount.to_str()?).then(|| {
            let mut a = after.split(' ');
            (
                a.next().unwrap_or("").to_string(),
                a.next().unwrap_or("").to_string(),
            )
        })
    })
}

fn read(path: impl AsRef<std::path::Path>) -> String {
    let p = path.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn assert_gone(name: &str) {
    let left = leftovers(name);
    assert!(left.is_empty(), "bed {name} left behind: {left:#?}");
}

#[test]
fn a_throttled_two_drive_bed_runs_a_command_inside_and_leaves_nothing() {
    let mut bed = DriveBed::up(2, &["--rate-mbps", "200"]);
    assert_eq!(bed.drives.len(), 2);
    let writes = read(bed.cgroup.join("blkio.throttle.write_bps_device"));
    let reads = read(bed.cgroup.join("blkio.throttle.read_bps_device"));
    for d in &bed.drives {
        assert_eq!(
            mounted_fs(&d.mount),
            Some(("ext4".to_string(), d.dev.clone())),
            "{d:?}"
        );
        let loop_name = d.dev.trim_start_matches("/dev/");
        assert_eq!(
            read(format!("/sys/block/{loop_name}/loop/backing_file")).trim(),
            d.file.to_str().unwrap()
        );
        assert_eq!(read(format!("/sys/block/{loop_name}/dev")).trim(), d.majmin);
        assert!(d.file.starts_with("/dev/shm"), "{d:?}");
        assert_eq!(d.rate_bps, 200_000_000);
        let line = format!("{} 200000000", d.majmin);
        assert!(writes.lines().any(|l| l == line), "{line} in {writes}");
        assert!(reads.lines().any(|l| l == line), "{line} in {reads}");
    }
    // A command inside: its group, its drives, and 4 MiB of O_DIRECT writes counted
    // against drive 1's device in the group.
    let target = bed.drives[1].mount.join("f");
    let out = bed
        .command(
            "sh",
            &[
                "-c",
                "grep blkio /proc/self/cgroup; echo \"drives=$SWAPPER_DRIVES\"; \
                 dd if=/dev/zero of=\"$1\" bs=1M count=4 oflag=direct status=none",
                "sh",
                target.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(&format!("blkio:/{}\n", bed.name)), "{text}");
    assert!(text.contains(&format!("drives={}\n", bed.drives_var())), "{text}");
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 4 << 20);
    let served = read(bed.cgroup.join("blkio.throttle.io_service_bytes"));
    let written: u64 = served
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{} Write ", bed.drives[1].majmin)))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(written >= 4 << 20, "the group's writes on drive 1: {served}");

    let name = bed.name.clone();
    let out = bed.down();
    assert!(out.status.success(), "{out:?}");
    assert_gone(&name);
    let again = command(&["down", "--name", &name]).output().unwrap();
    assert!(again.status.success(), "down twice: {again:?}");
    assert_gone(&name);
}

#[test]
fn down_waits_for_a_loop_device_someone_still_holds_open() {
    // What udev does after an unmount, for longer: a process holds the loop device open,
    // so `losetup -d` only marks it for autoclear and it goes when the holder closes it.
    // `down` returns only when the device is gone, and then nothing is left.
    let mut bed = DriveBed::up(1, &[]);
    let dev = bed.drives[0].dev.clone();
    let held = std::fs::File::open(&dev).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let t = Instant::now();
    let out = bed.down();
    assert!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_gone(&bed.name);
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "down waited for the holder: {:?}",
        t.elapsed()
    );
    holder.join().unwrap();
}

#[test]
fn a_failing_command_and_sigterm_leave_nothing() {
    // `with`: the command's status comes back, the bed is gone.
    let name = unique_name();
    let out = command(&[
        "with", "2", "--size", "64M", "--name", &name, "--", "sh", "-c", "exit 3",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_gone(&name);

    // SIGTERM to the script while the command inside runs: the command is stopped, the
    // bed torn down, the status 143.
    let name = unique_name();
    let mut child = command(&["with", "2", "--size", "64M", "--name", &name, "--", "sleep", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let up: Vec<String> = lines
        .by_ref()
        .map(|l| l.unwrap())
        .take_while(|l| !l.starts_with("drives="))
        .collect();
    let bed = DriveBed::parse(&up.join("\n"));
    // Wait until the command is inside the group.
    let started = Instant::now();
    while read(bed.cgroup.join("cgroup.procs")).trim().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the command never joined the group"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        leftovers(&name).len() >= 5,
        "the bed is up: {:?}",
        leftovers(&name)
    );
    // SAFETY: kill with the pid of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "stopped at once");
    std::mem::forget(bed); // already down: its Drop would only run down again
    assert_gone(&name);
}

#[test]
fn down_recovers_after_up_is_killed_at_any_step() {
    for step in ["file", "loop", "mkfs", "mount", "throttle"] {
        let name = unique_name();
        let out = command(&["up", "2", "--size", "64M", "--rate-mbps", "100", "--name", &name])
            .env("DRIVE_BED_KILL_AT", step)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{step}: {out:?}");
        assert!(!leftovers(&name).is_empty(), "{step}: the crash left something");
        // A second `up` of the same name refuses instead of mixing two beds.
        let again = command(&["up", "1", "--size", "64M", "--name", &name])
            .output()
            .unwrap();
        assert_eq!(again.status.code(), Some(2), "{step}: {again:?}");
        let down = command(&["down", "--name", &name]).output().unwrap();
        assert!(down.status.success(), "{step}: {down:?}");
        assert_gone(&name);
    }
}

#[test]
fn xfs_btrfs_ext2_a_rate_and_a_size_per_drive() {
    let bed = DriveBed::up(2, &["--fs", "xfs", "--size", "320M", "--rates", "100,50"]);
    // A shut-down file system (stat fails with EIO there) is unmounted all the same.
    bed.drives[1].fail();
    let writes = read(bed.cgroup.join("blkio.throttle.write_bps_device"));
    for (d, rate) in bed.drives.iter().zip([100_000_000u64, 50_000_000]) {
        assert_eq!(mounted_fs(&d.mount).map(|m| m.0), Some("xfs".to_string()));
        assert_eq!(d.rate_bps, rate);
        assert!(
            writes.lines().any(|l| l == format!("{} {rate}", d.majmin)),
            "{writes}"
        );
    }
    let name = bed.name.clone();
    drop(bed);
    assert_gone(&name);

    let bed = DriveBed::up(1, &["--fs", "btrfs", "--size", "128M"]);
    assert_eq!(
        mounted_fs(&bed.drives[0].mount).map(|m| m.0),
        Some("btrfs".to_string())
    );
    // No throttle unless asked.
    assert_eq!(
        read(bed.cgroup.join("blkio.throttle.write_bps_device")).trim(),
        ""
    );
    let name = bed.name.clone();
    drop(bed);
    assert_gone(&name);

    // A size per drive, and ext2 (a file system without fallocate).
    let bed = DriveBed::up(2, &["--fs", "ext2", "--sizes", "96M,16M"]);
    for (d, size) in bed.drives.iter().zip([96u64 << 20, 16 << 20]) {
        assert_eq!(std::fs::metadata(&d.file).unwrap().len(), size, "{d:?}");
        assert!(
            matches!(
                mounted_fs(&d.mount).map(|m| m.0).as_deref(),
                Some("ext2" | "ext4")
            ),
            "{d:?}"
        );
    }
    let name = bed.name.clone();
    drop(bed);
    assert_gone(&name);
}

/// Bytes of memory a drive's file in /dev/shm holds (its allocated blocks).
fn allocated(file: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().blocks() * 512
}

#[test]
fn allocated_backing_holds_every_byte_in_memory_from_the_start_and_mkfs_gives_none_back() {
    for fs in ["ext4", "xfs"] {
        let bed = DriveBed::up(1, &["--fs", fs, "--size", "320M", "--backing", "allocated"]);
        let file = &bed.drives[0].file;
        assert_eq!(allocated(file), 320 << 20, "{fs}: {file:?}");
        let name = bed.name.clone();
        drop(bed);
        assert_gone(&name);
    }
    // Sparse (the default): only what mkfs wrote.
    let bed = DriveBed::up(1, &["--fs", "ext4", "--size", "320M"]);
    let held = allocated(&bed.drives[0].file);
    assert!(held < 160 << 20, "a sparse drive holds {held} bytes");
    let name = bed.name.clone();
    drop(bed);
    assert_gone(&name);
}

#[test]
fn bad_input_is_refused_and_makes_nothing() {
    let name = unique_name();
    for args in [
        vec!["up", "0"],
        vec!["up", "two"],
        vec!["up", "2", "--fs", "ntfs"],
        vec!["up", "2", "--rates", "100"],
        vec!["up", "2", "--rate-mbps", "fast"],
        vec!["up", "2", "--size", "lots"],
        vec!["up", "2", "--rate-mbps", "1", "--rates", "1,1"],
        vec!["up", "2", "--sizes", "64M"],
        vec!["up", "2", "--sizes", "64M,big"],
        vec!["up", "2", "--size", "64M", "--sizes", "64M,64M"],
        vec!["up", "2", "--backing", "thick"],
        vec!["run", "--name", "no-such-bed-memlock", "--", "true"],
        vec!["run", "--name", "x"],
        vec!["down", "--name", "../etc"],
        vec!["frobnicate"],
    ] {
        let mut a = args.clone();
        if a[0] == "up" {
            a.extend(["--name", &name]);
        }
        let out = command(&a).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("drive-bed: "), "{args:?}: {err}");
        assert_gone(&name);
    }
    let out = command(&["up", "2", "--name", "../etc"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
