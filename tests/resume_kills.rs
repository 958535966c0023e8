//! Crash consistency with real kills (issue 20): a child process adopts the swap folder
//! and swaps at random (get_buffer and fill with a pattern of (param, tag), swap out
//! synchronously or not, swap in and check, flush), and is SIGKILLed after a random 1 to
//! 50 ms; then this process adopts the folder and checks that it is exactly what the last
//! completed flush promised (or what the flush under way at the kill promised, if that
//! one had reached the drives): the same params, each with every byte of the write the
//! promise names. 100 kills on two loop-mounted ext4 drives, 100 on two XFS drives
//! (the drive bed); each child starts from the folder the previous one left.
//!
//! The child and the parent are the shared harness's (`common::kill_harness`): the child
//! logs `flush G <promise>` before calling flush and `done G` after it returned; the
//! parent reads the log after the kill.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::kill_harness::{kills_on, Child, Flush, Log, Rng};
use swapper::{Dtype, IoConfig, ParamStatus, Settings, Swapper};

const IDS: u64 = 12;
const NUMELS: [u64; 5] = [2048, 6000, 300_000, 1 << 20, 1_600_000];
const KILLS_PER_FS: usize = 100;

/// param -> (numel, tag)
type Promise = BTreeMap<u64, (u64, u64)>;

fn settings(paths: &[PathBuf]) -> Settings {
    Settings {
        nvme_paths: paths.to_vec(),
        dtype: Dtype::Fp16,
        buffer_count: 4,
        buffer_numel: 1_600_000,
        io: IoConfig {
            thread_count: 2,
            ..IoConfig::default()
        },
        verify_checksums: true,
        adopt: true,
        ..Settings::default()
    }
}

fn bytes_of(id: u64, numel: u64, tag: u64) -> Vec<u8> {
    common::pattern(numel as usize * 2, (tag << 8) | id)
}

fn encode(p: &Promise) -> String {
    p.iter()
        .map(|(id, (n, t))| format!("{id}:{n}:{t}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(s: &str) -> Promise {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            let v: Vec<u64> = x.split(':').map(|n| n.parse().unwrap()).collect();
            (v[0], (v[1], v[2]))
        })
        .collect()
}

/// The child: adopts, then swaps at random until killed.
#[test]
fn kill_child() {
    let Some(mut child) = Child::from_env() else {
        return;
    };
    let paths = child.paths.clone();
    let run = child.run;
    let start = decode(&child.state);
    let s = Swapper::new(settings(&paths)).unwrap();
    let mut rng = Rng(run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut done: Promise = start; // last completed write of each param
    let mut pending: Vec<(u64, u64, u64)> = Vec::new(); // async writes not waited for
    let mut counter = 0u64;
    loop {
        match rng.below(10) {
            0..=4 => {
                let id = rng.below(IDS);
                if pending.iter().any(|p| p.0 == id) {
                    continue;
                }
                let numel = NUMELS[rng.below(NUMELS.len() as u64) as usize];
                counter += 1;
                let tag = (run << 20) | counter;
                if s.available_buffers() == 0 {
                    s.wait_writes().unwrap();
                    done.extend(pending.drain(..).map(|(i, n, t)| (i, (n, t))));
                }
                let buf = s.get_buffer(id, numel).unwrap();
                let d = bytes_of(id, numel, tag);
                // SAFETY: a fresh pool buffer of at least `numel` fp16 elements.
                unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
                let async_op = rng.below(2) == 0;
                s.swap_out_and_release(&[id], async_op, true).unwrap();
                if async_op {
                    pending.push((id, numel, tag));
                } else {
                    done.insert(id, (numel, tag));
                }
            }
            5..=6 => {
                s.wait_writes().unwrap();
                done.extend(pending.drain(..).map(|(i, n, t)| (i, (n, t))));
                let Some((&id, &(numel, tag))) =
                    done.iter().nth(rng.below(done.len().max(1) as u64) as usize)
                else {
                    continue;
                };
                assert_eq!(s.param_status(id).unwrap(), ParamStatus::NotAvailable);
                // SAFETY: pool buffers only.
                unsafe { s.swap_in(&[id], false, None) }.unwrap();
                let (buf, _) = s.param_buffer(id).unwrap();
                // SAFETY: the param is AVAILABLE.
                let got = unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) };
                assert!(
                    got == &bytes_of(id, numel, tag)[..],
                    "child: param {id} reads wrong"
                );
                s.release(&[id]).unwrap();
            }
            _ => {
                // The promise: every completed write, plus the async ones flush waits for.
                let mut promise = done.clone();
                promise.extend(pending.iter().map(|&(i, n, t)| (i, (n, t))));
                let g = s.durable_generation() + 1;
                child.flush_begins(g, &encode(&promise));
                assert_eq!(s.flush().unwrap(), g);
                done = promise;
                pending.clear();
                child.flush_done(g);
            }
        }
    }
}

/// Adopts the folder and checks it against what the child's log promised; returns what
/// it holds.
fn verify(paths: &[PathBuf], kill: usize, log: &Log, before: &Flush) -> Flush {
    let s = Swapper::new(settings(paths)).unwrap_or_else(|e| panic!("kill {kill}: adopt failed: {e}"));
    let g = s.durable_generation();
    let promise = log
        .expect(g, before)
        .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
    let expect = decode(&promise);
    for id in 0..IDS {
        match expect.get(&id) {
            None => assert!(
                s.param_status(id).is_err(),
                "kill {kill}: param {id} was never flushed yet is known"
            ),
            Some(&(numel, tag)) => {
                // SAFETY: pool buffers only.
                unsafe { s.swap_in(&[id], false, None) }
                    .unwrap_or_else(|e| panic!("kill {kill}: param {id}: {e}"));
                let (buf, n) = s.param_buffer(id).unwrap();
                assert_eq!(n, numel, "kill {kill}: param {id}'s numel");
                // SAFETY: the param is AVAILABLE.
                let got = unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) };
                assert!(
                    got == &bytes_of(id, numel, tag)[..],
                    "kill {kill}: param {id} does not hold the bytes generation {g} promised (tag {tag})"
                );
                s.release(&[id]).unwrap();
            }
        }
    }
    (g, promise)
}

#[test]
fn after_each_of_200_sigkills_the_folder_is_what_the_last_flush_promised() {
    let e = kills_on(
        "ext4",
        "256M",
        "kill_child",
        KILLS_PER_FS,
        50,
        0x5EED_0001,
        verify,
    );
    let x = kills_on("xfs", "320M", "kill_child", KILLS_PER_FS, 50, 0x5EED_0002, verify);
    eprintln!(
        "ext4: {} children completed a flush, {} killed inside one; xfs: {} and {}",
        e.flushed, e.mid_flush, x.flushed, x.mid_flush
    );
    // The kills must have hit both kinds of moments, or the test proved little.
    assert!(
        e.flushed + x.flushed >= 40 && e.mid_flush + x.mid_flush >= 5,
        "ext4 {e:?}, xfs {x:?}"
    );
}
