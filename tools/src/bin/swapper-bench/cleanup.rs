//! The benchmark file never outlives the command: removed on a normal end, on an error
//! (the guards' drop) and on Ctrl-C (a SIGINT handler that removes it, stops a running
//! fio and exits).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};

/// Paths to remove on Ctrl-C: the benchmark file, then the folder made for it, if any.
/// `true` marks a folder to remove with everything in it.
static TO_REMOVE: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
/// The running fio's process id (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Set once Ctrl-C has been pressed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT handler.
pub fn install_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let child = CHILD.load(Ordering::SeqCst);
        if child > 0 {
            stop_child(child);
        }
        let paths = TO_REMOVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (p, tree) in &paths {
            let _ = if *tree {
                remove_tree(p)
            } else if p.is_dir() {
                std::fs::remove_dir(p)
            } else {
                std::fs::remove_file(p)
            };
        }
        eprintln!("interrupted: benchmark file removed");
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}

/// Removes a folder with everything in it. The benchmark keeps running while the handler
/// works, and a swap-out may create a file in the folder after it was listed, so a
/// "not empty" is retried (the handler then exits, and nothing creates files any more).
fn remove_tree(p: &std::path::Path) -> std::io::Result<()> {
    let mut result = Ok(());
    for _ in 0..50 {
        result = std::fs::remove_dir_all(p);
        if result.is_ok() || !p.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    result
}

/// Registers a path for removal on Ctrl-C (files first, in registration order).
pub fn register(path: PathBuf) {
    TO_REMOVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path, false));
}

/// Registers a folder made by the benchmark, removed on Ctrl-C with everything in it.
pub fn register_tree(path: PathBuf) {
    TO_REMOVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path, true));
}

/// Forgets every registered path (they were removed normally).
pub fn clear() {
    TO_REMOVE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// After Ctrl-C, a fio that ended on the signal is no failure to report: the handler is
/// cleaning up and will end the process, so the caller waits for that.
pub fn wait_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Remembers the running child process, so Ctrl-C stops it too.
pub fn set_child(pid: Option<u32>) {
    CHILD.store(pid.map_or(0, |p| p as i32), Ordering::SeqCst);
}

/// Stops fio before its file is removed (a fio still starting would create it anew):
/// SIGINT, up to 5 s to exit, then SIGKILL.
fn stop_child(pid: i32) {
    // SAFETY: kill and waitpid have no memory-safety preconditions; `pid` is our child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    for _ in 0..500 {
        let mut status = 0;
        // SAFETY: as above; `status` is writable. -1 (ECHILD) means the main thread has
        // reaped it already.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: as above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}
