//! Fault injection into the system-call layer, for tests.
//!
//! Compiled in only with the cargo feature `fault-injection`; without it [`check`]
//! is an empty inline function and no rule can be installed. A rule makes the
//! matching calls (by kind and by a substring of the path) fail with an errno or
//! transfer fewer bytes than asked, after skipping a number of matches, a number of
//! times, or delay them, or make the I/O worker carrying them out panic. Both backends
//! consult it before every read and write request, and opens consult it too (where
//! only `Errno` applies). A swapper call also consults it at each step of its claim,
//! submit and record ([`point`]), where only `Panic` applies: a bug striking there.

use std::path::Path;

/// Which call a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Opening a file.
    Open,
    /// Opening a file with O_DIRECT (EINVAL here imitates a file system without it).
    OpenDirect,
    /// A read request.
    Read,
    /// A write request.
    Write,
    /// A step of a swapper call ([`point`]); its "path" is `<swap folder>|<call>:<step>`
    /// (for instance `.../rank0|swap_in:submit`). Only `Fault::Panic` applies.
    Point,
}

/// What happens to a matching call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with this errno (ENOSPC, EIO, EINTR, ...).
    Errno(i32),
    /// The call reports at most this many bytes moved (a short read or write; the
    /// transfer itself is left whole so that O_DIRECT alignment holds).
    Short(usize),
    /// The request is carried out this many milliseconds late (a slow device).
    DelayMs(u64),
    /// The I/O worker thread carrying out the request panics before issuing it (a bug in
    /// a worker); at a [`Call::Point`], the calling thread panics there.
    Panic,
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The call it applies to.
    pub call: Call,
    /// Only paths containing this text match ("" matches every path).
    pub path_contains: String,
    /// The fault.
    pub fault: Fault,
    /// Matching calls to let through before the first fault.
    pub skip: u64,
    /// Faults to inject, then the rule is spent (u64::MAX for ever).
    pub times: u64,
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    static ACTIVE: AtomicBool = AtomicBool::new(false);
    static RULES: Mutex<Vec<Rule>> = Mutex::new(Vec::new());
    static INJECTED: AtomicU64 = AtomicU64::new(0);

    pub fn install(rule: Rule) {
        let mut rules = RULES.lock().unwrap_or_else(|e| e.into_inner());
        rules.push(rule);
        ACTIVE.store(true, Ordering::SeqCst);
    }

    pub fn clear() {
        let mut rules = RULES.lock().unwrap_or_else(|e| e.into_inner());
        rules.clear();
        ACTIVE.store(false, Ordering::SeqCst);
    }

    pub fn active() -> bool {
        ACTIVE.load(Ordering::Relaxed)
    }

    pub fn injected() -> u64 {
        INJECTED.load(Ordering::SeqCst)
    }

    pub fn check(call: Call, path: &Path) -> Option<Fault> {
        if !ACTIVE.load(Ordering::Relaxed) {
            return None;
        }
        let mut rules = RULES.lock().unwrap_or_else(|e| e.into_inner());
        let text = path.to_string_lossy();
        for rule in rules.iter_mut() {
            if rule.call != call || rule.times == 0 || !text.contains(rule.path_contains.as_str()) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            rule.times -= 1;
            INJECTED.fetch_add(1, Ordering::SeqCst);
            return Some(rule.fault);
        }
        None
    }
}

/// Installs a rule (feature `fault-injection` only).
#[cfg(feature = "fault-injection")]
pub fn install(rule: Rule) {
    imp::install(rule)
}

/// Removes every rule (feature `fault-injection` only).
#[cfg(feature = "fault-injection")]
pub fn clear() {
    imp::clear()
}

/// How many faults have been injected since the process started (feature `fault-injection` only).
#[cfg(feature = "fault-injection")]
pub fn injected() -> u64 {
    imp::injected()
}

/// The fault to inject into this call, if a rule matches.
#[cfg(feature = "fault-injection")]
pub fn check(call: Call, path: &Path) -> Option<Fault> {
    imp::check(call, path)
}

/// A step of a swapper call: panics if a `Call::Point` rule with `Fault::Panic` matches
/// the step's name (made by `name` only when a rule is installed).
#[cfg(feature = "fault-injection")]
pub fn point(name: impl FnOnce() -> String) {
    if !imp::active() {
        return;
    }
    let name = name();
    if let Some(Fault::Panic) = imp::check(Call::Point, Path::new(&name)) {
        panic!("injected panic at {name}");
    }
}

/// A step of a swapper call: nothing, in a build without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: impl FnOnce() -> String) {}

/// The fault to inject into this call: never, in a build without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn check(_call: Call, _path: &Path) -> Option<Fault> {
    None
}
