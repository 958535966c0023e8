//! The SIGKILL harness of the crash-consistency tests (issue 20; `resume_kills.rs` for the
//! parameter swapper, `optimizer_kills.rs` for the optimizer-state swapper).
//!
//! The parent ([`kills_on`]) brings up a drive bed of two drives, then, over and over,
//! re-runs its own test binary as a child running one test (the *child test*), SIGKILLs it
//! after a random 1 to `max_ms` ms, and hands the folder to the caller's `verify`, which
//! adopts it and checks it against what the child's log promised. Each child starts from
//! the folder the previous adoption left, and is told (as a string the test encodes) what
//! that folder holds.
//!
//! The child ([`Child::from_env`]; `None` in a normal test run, where the child test then
//! returns at once) writes `flush G <promise>` to its log before each flush and `done G`
//! once that flush returned ([`Child::flush_begins`], [`Child::flush_done`]), each line
//! with one `write` to a file opened for appending: a SIGKILL cannot lose a line
//! already written (it is in the page cache), and a line cut short by the kill has no
//! newline and is ignored ([`Log::read`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::drive_bed::DriveBed;

/// A small xorshift generator (the tests need no crate for this).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const DIRS: &str = "KILL_CHILD_DIRS";
const LOG: &str = "KILL_CHILD_LOG";
const RUN: &str = "KILL_CHILD_RUN";
const STATE: &str = "KILL_CHILD_STATE";

/// The child's side: its drives, its run number, the state it starts from, its log.
pub struct Child {
    /// The drives' folders (the swapper's `nvme_paths`).
    pub paths: Vec<PathBuf>,
    /// A number unique to this child (to seed its generator, to tag what it writes).
    pub run: u64,
    /// What the folder holds as the child starts (the previous adoption's promise).
    pub state: String,
    log: File,
}

impl Child {
    /// In a child the harness started: its side; `None` otherwise.
    pub fn from_env() -> Option<Child> {
        let dirs = std::env::var_os(DIRS)?;
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
        Some(Child {
            paths: std::env::split_paths(&dirs).collect(),
            run: var(RUN).parse().expect("a run number"),
            state: var(STATE),
            log: std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(var(LOG))
                .expect("the child's log opens"),
        })
    }

    /// Before a flush of generation `generation` that promises `promise` (no spaces, no
    /// newline).
    pub fn flush_begins(&mut self, generation: u64, promise: &str) {
        assert!(!promise.contains([' ', '\n']), "{promise:?}");
        self.line(&format!("flush {generation} {promise}\n"));
    }

    /// After that flush returned.
    pub fn flush_done(&mut self, generation: u64) {
        self.line(&format!("done {generation}\n"));
    }

    fn line(&mut self, line: &str) {
        // One write per line: a kill leaves whole lines, and at most a last one cut short.
        self.log
            .write_all(line.as_bytes())
            .expect("the child's log takes a line");
    }
}

/// A flush: its generation and what it promised.
pub type Flush = (u64, String);

/// What a killed child's log says.
#[derive(Debug, Default)]
pub struct Log {
    /// The last flush that returned.
    pub last_done: Option<Flush>,
    /// The flush under way at the kill (begun, never returned).
    pub begun: Option<Flush>,
}

impl Log {
    /// Reads the log at `path` (whole lines only).
    pub fn read(path: &Path) -> Log {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut log = Log::default();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let w: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
            let g: u64 = w
                .get(1)
                .and_then(|g| g.parse().ok())
                .unwrap_or_else(|| panic!("bad log line {line:?}"));
            match w[0] {
                "flush" => log.begun = Some((g, w.get(2).copied().unwrap_or("").to_string())),
                "done" => {
                    let b = log.begun.take().expect("done after flush");
                    assert_eq!(b.0, g, "done {g} after flush {}", b.0);
                    log.last_done = Some(b);
                }
                _ => panic!("bad log line {line:?}"),
            }
        }
        log
    }

    /// What an adopter that found generation `g` must see: the promise of the flush under
    /// way if it is `g` (it reached every drive before the kill), else that of the last
    /// completed flush if it is `g`, else, when no flush completed, what the folder held
    /// before the child (`before`) if that was `g`. Any other generation is a message.
    pub fn expect(&self, g: u64, before: &Flush) -> Result<String, String> {
        match (&self.last_done, &self.begun) {
            (_, Some((bg, p))) if *bg == g => Ok(p.clone()),
            (Some((dg, p)), _) if *dg == g => Ok(p.clone()),
            (None, _) if g == before.0 => Ok(before.1.clone()),
            _ => Err(format!(
                "adopted generation {g}; the last completed flush was {:?}, the one under way {:?}, before the child {}",
                self.last_done.as_ref().map(|x| x.0),
                self.begun.as_ref().map(|x| x.0),
                before.0
            )),
        }
    }
}

/// How the kills of [`kills_on`] fell.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Children that completed at least one flush.
    pub flushed: usize,
    /// Children killed inside a flush.
    pub mid_flush: usize,
}

/// On a bed of two `fs` drives of `size` each: `kills` times, runs test `child_test` of
/// this binary as a child (its [`Child`] side), SIGKILLs it after a random 1 to `max_ms`
/// ms (a child that stops by itself fails the test with its stderr), and calls
/// `verify(drive paths, kill number, its log, what the folder held before it)`, which
/// adopts the folder, checks it, and returns what it holds (generation and promise, handed
/// to the next child).
pub fn kills_on(
    fs: &str,
    size: &str,
    child_test: &str,
    kills: usize,
    max_ms: u64,
    seed: u64,
    mut verify: impl FnMut(&[PathBuf], usize, &Log, &Flush) -> Flush,
) -> Tally {
    let bed = DriveBed::up(2, &["--fs", fs, "--size", size]);
    let paths: Vec<PathBuf> = bed.drives.iter().map(|d| d.mount.clone()).collect();
    let logs = super::disk_dir();
    let mut rng = Rng(seed);
    let mut state: Flush = (0, String::new());
    let mut tally = Tally::default();
    for kill in 0..kills {
        let log = logs.path().join(format!("log-{kill}"));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
            .env(DIRS, std::env::join_paths(&paths).unwrap())
            .env(LOG, &log)
            .env(RUN, (kill as u64 + 1 + (seed << 10)).to_string())
            .env(STATE, &state.1)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(1 + rng.below(max_ms));
        let t = Instant::now();
        while t.elapsed() < wait {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("kill {kill} on {fs}: the child stopped by itself ({st}): {err}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let read = Log::read(&log);
        tally.flushed += usize::from(read.last_done.is_some());
        tally.mid_flush += usize::from(read.begun.is_some());
        state = verify(&paths, kill, &read, &state);
    }
    tally
}
