#![cfg(feature = "fault-injection")]
//! A race ([`swapper::io::race`]): one write split between two engines as they go. A
//! slow drive is imitated by delaying its writes (fault injection, bounded to its own
//! file); both backends. The lanes take every unit once, each unit lands in the file of
//! the lane that took it, the faster lane takes more, the checksums combine, and a lane
//! whose engine panics or is closed leaves its units to the other, without a hang.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{disk_dir, held_file, patterned, within, TestBuf};
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

/// Two engines, each with a file of its own, and a race for a tensor of UNITS units.
struct Pair {
    _dir: tempfile::TempDir,
    paths: [PathBuf; 2],
    files: [Arc<HeldFile>; 2],
    engines: [IoEngine; 2],
    race: Arc<Race>,
    buf: TestBuf,
    data: Vec<u8>,
}

fn pair(backend: Backend, seed: u64) -> Pair {
    let dir = disk_dir();
    let paths = [dir.path().join("a"), dir.path().join("b")];
    let buf = patterned(LEN, seed);
    Pair {
        files: [held_file(&paths[0]), held_file(&paths[1])],
        engines: [engine(backend), engine(backend)],
        race: Race::new(UNITS, 2).unwrap(),
        data: buf.as_slice().to_vec(),
        buf,
        paths,
        _dir: dir,
    }
}

impl Pair {
    /// Every write of lane `l`'s file held up `ms`.
    fn delay(&self, l: usize, ms: u64) {
        fault::install(Rule {
            call: Call::Write,
            path_contains: self.paths[l].to_string_lossy().into_owned(),
            fault: Fault::DelayMs(ms),
            skip: 0,
            times: 1000,
        });
    }

    /// Queues lane `l` on its engine: its span of the buffer into its file at the same
    /// offsets (each file holds the whole tensor's offsets).
    fn lane(&mut self, l: usize) -> swapper::Result<Ticket> {
        let (a, b) = self.race.span(l);
        let req = HeldRequest {
            write: true,
            buf: RawBuf(self.buf.as_mut_slice().as_mut_ptr()).offset_by((a * BLOCK) as usize),
            len: (b - a) * BLOCK,
            file: &self.files[l],
            offset: a * BLOCK,
            checksum_len: Some((b - a) * BLOCK),
        };
        // SAFETY: the span lies inside the buffer, which the pair owns and every test
        // waits for its tickets before dropping.
        unsafe { self.engines[l].submit_raced(&req, &self.race, l) }
    }

    /// Checks that each unit is in the file of the lane that took it.
    fn check_landed(&self, taken: &[(u64, u64)]) {
        assert_eq!(taken[0].0, 0);
        assert_eq!(taken[0].1, taken[1].0);
        assert_eq!(taken[1].1, UNITS);
        for (l, &(lo, hi)) in taken.iter().enumerate().filter(|(_, t)| t.0 < t.1) {
            let on = std::fs::read(&self.paths[l]).unwrap();
            let (a, b) = ((lo * BLOCK) as usize, (hi * BLOCK) as usize);
            assert!(
                on[a..b] == self.data[a..b],
                "lane {l}: units {lo}..{hi} in its file"
            );
        }
    }
}

#[test]
fn a_slow_lane_takes_fewer_units_and_every_unit_lands_once() {
    for backend in [Backend::Blocking, Backend::IoUring] {
        let mut p = pair(backend, 3);
        // Lane 0's writes held up 5 ms each (so that lane 1's engine has woken before lane
        // 0 could be done, whatever the machine's load); lane 1's 40 ms.
        p.delay(0, 5);
        p.delay(1, 40);
        let ta = p.lane(0).unwrap();
        let tb = p.lane(1).unwrap();
        ta.wait().unwrap();
        tb.wait().unwrap();
        let taken = p.race.taken().expect("every unit claimed");
        assert!(
            taken[0].1 - taken[0].0 > UNITS * 3 / 4,
            "{backend:?}: the fast lane took most: {taken:?}"
        );
        assert!(
            taken[1].1 > taken[1].0,
            "{backend:?}: the slow lane took some: {taken:?}"
        );
        p.check_landed(&taken);
        // Each lane's checksum covers the units it took; together, the tensor's.
        let covered: u64 = [&ta, &tb]
            .iter()
            .flat_map(|t| t.checksum_parts())
            .map(|c| c.1)
            .sum();
        assert_eq!(covered, LEN as u64, "{backend:?}");
        let split = (taken[0].1 * BLOCK) as usize;
        assert_eq!(
            ta.checksum().unwrap(),
            crc32c::crc32c(&p.data[..split]),
            "{backend:?}"
        );
        assert_eq!(
            tb.checksum().unwrap(),
            crc32c::crc32c(&p.data[split..]),
            "{backend:?}"
        );
    }
}

#[test]
fn a_lane_whose_worker_panics_fails_with_panic_and_the_other_finishes_without_a_hang() {
    let mut p = pair(Backend::IoUring, 4);
    // Lane 1's first write panics its worker: its engine breaks, and the units it claims
    // (those in its slots, and what its engine's drain takes) fail with Panic. Lane 0's
    // writes are held up 5 ms each, so that lane 1 gets units whatever the load.
    p.delay(0, 5);
    fault::install(Rule {
        call: Call::Write,
        path_contains: p.paths[1].to_string_lossy().into_owned(),
        fault: Fault::Panic,
        skip: 0,
        times: 1,
    });
    let ta = p.lane(0).unwrap();
    let tb = p.lane(1).unwrap();
    let (ra, rb) = within(30, "the raced writes", move || (ta.wait(), tb.wait()));
    ra.unwrap();
    assert_eq!(rb.unwrap_err().status(), Status::Panic);
    // (The engine is marked broken once the panicked worker has finished its requests,
    // which may be just after the ticket saw its own.)
    let broken = (0..500).any(|_| {
        let b = p.engines[1]
            .check_usable()
            .is_err_and(|e| e.status() == Status::Panic);
        if !b {
            std::thread::sleep(Duration::from_millis(10));
        }
        b
    });
    assert!(broken, "lane 1's engine is broken");
    let taken = p.race.taken().expect("every unit claimed");
    let on = std::fs::read(&p.paths[0]).unwrap();
    let (lo, hi) = ((taken[0].0 * BLOCK) as usize, (taken[0].1 * BLOCK) as usize);
    assert!(on[lo..hi] == p.data[lo..hi], "lane 0's units landed: {taken:?}");
    assert_eq!(
        p.engines[0].check_usable().map_err(|e| e.status()),
        Ok(()),
        "lane 0's engine is unaffected"
    );
}

#[test]
fn a_lane_refused_by_a_closed_engine_leaves_every_unit_to_the_other() {
    let mut p = pair(Backend::IoUring, 5);
    p.engines[1].close();
    let ta = p.lane(0).unwrap();
    let e = p.lane(1).err().expect("a closed engine refuses");
    assert_eq!(e.status(), Status::BadState, "{e}");
    // A lane the race does not have is refused, not a panic.
    let req = HeldRequest {
        write: true,
        buf: RawBuf(p.buf.as_mut_slice().as_mut_ptr()),
        len: LEN as u64,
        file: &p.files[0],
        offset: 0,
        checksum_len: None,
    };
    // SAFETY: refused before any I/O.
    let e = unsafe { p.engines[0].submit_raced(&req, &p.race, 2) }
        .err()
        .expect("lane 2 of 2");
    assert_eq!(e.status(), Status::InvalidArgument, "{e}");
    within(30, "the remaining lane", move || ta.wait()).unwrap();
    assert_eq!(p.race.taken().unwrap(), vec![(0, UNITS), (UNITS, UNITS)]);
    p.check_landed(&[(0, UNITS), (UNITS, UNITS)]);
}
