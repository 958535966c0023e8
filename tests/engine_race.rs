#![cfg(feature = "fault-injection")]
//! A race ([`swapper::io::race`]): one write split between two engines as they go. A
//! slow drive is imitated by delaying its writes (fault injection, bounded to its own
//! file); both backends. The lanes take every unit once, each unit lands in the file of
//! the lane that took it, the faster lane takes more, the checksums combine, and a lane
//! whose engine panics or is closed leaves its units to the other, without a hang.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{disk_dir, patterned};
use swapper::io::{HeldFile, HeldRequest, IoEngine, Race, Ticket};
use swapper::sys::fault::{self, Call, Fault, Rule};
use swapper::sys::RawBuf;
use swapper::{Backend, DirectIo, IoConfig, Status};

const BLOCK: u64 = 256 << 10;
const UNITS: u64 = 32;
const LEN: usize = (UNITS * BLOCK) as usize;

fn engine(backend: Backend) -> IoEngine {
    IoEngine::new(IoConfig {
        backend,
        direct_io: DirectIo::On,
        block_size: BLOCK,
        queue_depth: 4,
        thread_count: 1,
        ..IoConfig::default()
    })
    .unwrap()
}

fn held_file(path: &Path) -> Arc<HeldFile> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |direct: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(path)
            .unwrap()
    };
    let buffered = open(false);
    buffered.set_len(LEN as u64).unwrap();
    let direct = open(true);
    Arc::new(HeldFile::new(
        path.to_path_buf(),
        Some(direct.into()),
        buffered.into(),
    ))
}

fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s (hang)"))
}

/// Queues lane `lane` of `race` on `engine`: its span of `buf` into `file` at offset 0
/// of the file for the span's first unit (the file holds the whole tensor's offsets).
///
/// # Safety
/// `buf` holds LEN bytes and outlives the ticket.
unsafe fn lane(
    engine: &IoEngine,
    file: &Arc<HeldFile>,
    race: &Arc<Race>,
    lane: usize,
    buf: RawBuf,
) -> swapper::Result<Ticket> {
    let (a, b) = race.span(lane);
    let req = HeldRequest {
        write: true,
        buf: buf.offset_by((a * BLOCK) as usize),
        len: (b - a) * BLOCK,
        file,
        offset: a * BLOCK,
        checksum_len: Some((b - a) * BLOCK),
    };
    // SAFETY: the span lies inside `buf` (the caller's contract).
    unsafe { engine.submit_raced(&req, race, lane) }
}

/// Checks that each unit is in the file of the lane that took it.
fn check_landed(taken: &[(u64, u64)], files: [&Path; 2], data: &[u8]) {
    assert_eq!(taken[0].0, 0);
    assert_eq!(taken[0].1, taken[1].0);
    assert_eq!(taken[1].1, UNITS);
    for (l, &(lo, hi)) in taken.iter().enumerate() {
        let on = std::fs::read(files[l]).unwrap();
        let (a, b) = ((lo * BLOCK) as usize, (hi * BLOCK) as usize);
        assert!(on[a..b] == data[a..b], "lane {l}: units {lo}..{hi} in its file");
    }
}

#[test]
fn a_slow_lane_takes_fewer_units_and_every_unit_lands_once() {
    for backend in [Backend::Blocking, Backend::IoUring] {
        let dir = disk_dir();
        let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
        let (fa, fb) = (held_file(&pa), held_file(&pb));
        let (ea, eb) = (engine(backend), engine(backend));
        // Lane 0's drive: every write held up 5 ms (so that lane 1's engine has woken
        // before lane 0 could be done, whatever the machine's load); lane 1's: 40 ms.
        fault::install(Rule {
            call: Call::Write,
            path_contains: pa.to_string_lossy().into_owned(),
            fault: Fault::DelayMs(5),
            skip: 0,
            times: 1000,
        });
        fault::install(Rule {
            call: Call::Write,
            path_contains: pb.to_string_lossy().into_owned(),
            fault: Fault::DelayMs(40),
            skip: 0,
            times: 1000,
        });
        let mut buf = patterned(LEN, 3);
        let data = buf.as_slice().to_vec();
        let race = Race::new(UNITS, 2).unwrap();
        let raw = RawBuf(buf.as_mut_slice().as_mut_ptr());
        // SAFETY: `buf` outlives both waits below.
        let ta = unsafe { lane(&ea, &fa, &race, 0, raw) }.unwrap();
        // SAFETY: as above.
        let tb = unsafe { lane(&eb, &fb, &race, 1, raw) }.unwrap();
        ta.wait().unwrap();
        tb.wait().unwrap();
        let taken = race.taken().expect("every unit claimed");
        assert!(
            taken[0].1 - taken[0].0 > UNITS * 3 / 4,
            "{backend:?}: the fast lane took most: {taken:?}"
        );
        assert!(
            taken[1].1 > taken[1].0,
            "{backend:?}: the slow lane took some: {taken:?}"
        );
        check_landed(&taken, [&pa, &pb], &data);
        // Each lane's checksum covers the units it took; together, the tensor's.
        let covered: u64 = [&ta, &tb]
            .iter()
            .flat_map(|t| t.checksum_parts())
            .map(|p| p.1)
            .sum();
        assert_eq!(covered, LEN as u64, "{backend:?}");
        let crc_a = ta.checksum().unwrap();
        assert_eq!(
            crc_a,
            crc32c::crc32c(&data[..(taken[0].1 * BLOCK) as usize]),
            "{backend:?}"
        );
        let crc_b = tb.checksum().unwrap();
        assert_eq!(
            crc_b,
            crc32c::crc32c(&data[(taken[1].0 * BLOCK) as usize..]),
            "{backend:?}"
        );
    }
}

#[test]
fn a_lane_whose_worker_panics_fails_with_panic_and_the_other_finishes_without_a_hang() {
    let dir = disk_dir();
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    let (fa, fb) = (held_file(&pa), held_file(&pb));
    let (ea, eb) = (engine(Backend::IoUring), engine(Backend::IoUring));
    // Lane 1's first write panics its worker: its engine breaks, and the units it claims
    // (those in its slots, and what its engine's drain takes) fail with Panic. Lane 0's
    // writes are held up 5 ms each, so that lane 1 gets units whatever the load.
    fault::install(Rule {
        call: Call::Write,
        path_contains: pa.to_string_lossy().into_owned(),
        fault: Fault::DelayMs(5),
        skip: 0,
        times: 1000,
    });
    fault::install(Rule {
        call: Call::Write,
        path_contains: pb.to_string_lossy().into_owned(),
        fault: Fault::Panic,
        skip: 0,
        times: 1,
    });
    let mut buf = patterned(LEN, 4);
    let data = buf.as_slice().to_vec();
    let race = Race::new(UNITS, 2).unwrap();
    let raw = RawBuf(buf.as_mut_slice().as_mut_ptr());
    // SAFETY: `buf` outlives both waits below.
    let ta = unsafe { lane(&ea, &fa, &race, 0, raw) }.unwrap();
    // SAFETY: as above.
    let tb = unsafe { lane(&eb, &fb, &race, 1, raw) }.unwrap();
    let (ra, rb) = within(30, "the raced writes", move || (ta.wait(), tb.wait()));
    ra.unwrap();
    assert_eq!(rb.unwrap_err().status(), Status::Panic);
    // (The engine is marked broken once the panicked worker has finished its requests,
    // which may be just after the ticket saw its own.)
    let broken = (0..500).any(|_| {
        let b = eb.check_usable().is_err_and(|e| e.status() == Status::Panic);
        if !b {
            std::thread::sleep(Duration::from_millis(10));
        }
        b
    });
    assert!(broken, "lane 1's engine is broken");
    let taken = race.taken().expect("every unit claimed");
    let on = std::fs::read(&pa).unwrap();
    let (lo, hi) = ((taken[0].0 * BLOCK) as usize, (taken[0].1 * BLOCK) as usize);
    assert!(on[lo..hi] == data[lo..hi], "lane 0's units landed: {taken:?}");
    assert_eq!(
        ea.check_usable().map_err(|e| e.status()),
        Ok(()),
        "lane 0's engine is unaffected"
    );
}

#[test]
fn a_lane_refused_by_a_closed_engine_leaves_every_unit_to_the_other() {
    let dir = disk_dir();
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    let (fa, fb) = (held_file(&pa), held_file(&pb));
    let (ea, eb) = (engine(Backend::IoUring), engine(Backend::IoUring));
    eb.close();
    let mut buf = patterned(LEN, 5);
    let data = buf.as_slice().to_vec();
    let race = Race::new(UNITS, 2).unwrap();
    let raw = RawBuf(buf.as_mut_slice().as_mut_ptr());
    // SAFETY: `buf` outlives the wait below.
    let ta = unsafe { lane(&ea, &fa, &race, 0, raw) }.unwrap();
    // SAFETY: refused before any I/O.
    let e = unsafe { lane(&eb, &fb, &race, 1, raw) }
        .err()
        .expect("a closed engine refuses");
    assert_eq!(e.status(), Status::BadState, "{e}");
    within(30, "the remaining lane", move || ta.wait()).unwrap();
    assert_eq!(race.taken().unwrap(), vec![(0, UNITS), (UNITS, UNITS)]);
    check_landed(&[(0, UNITS), (UNITS, UNITS)], [&pa, &pb], &data);
}
