//! No file-system call and no wait runs under the swapper's state lock: while one thread
//! does a long synchronous read, another thread's bookkeeping calls keep answering.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use swapper::sys::RawBuf;
use swapper::{Dtype, IoConfig, Settings, Swapper};

#[test]
fn bookkeeping_calls_answer_while_another_thread_reads_synchronously() {
    let dir = common::disk_dir();
    const NUMEL: u64 = 64 << 20; // 128 MiB of fp16: a read of tens of milliseconds
    let s = Arc::new(
        Swapper::new(Settings {
            nvme_path: dir.path().to_path_buf(),
            dtype: Dtype::Fp16,
            buffer_count: 2,
            buffer_numel: NUMEL,
            io: IoConfig {
                block_size: 1 << 20,
                ..IoConfig::default()
            },
            ..Settings::default()
        })
        .unwrap(),
    );
    s.get_buffer(1, NUMEL).unwrap();
    s.swap_out_and_release(&[1], false, false).unwrap();
    s.get_buffer(2, 10).unwrap();
    let mut dest = common::TestBuf::new(NUMEL as usize * 2, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let other = {
        let (s, stop, answers) = (Arc::clone(&s), Arc::clone(&stop), Arc::clone(&answers));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                s.param_status(2).unwrap();
                s.stats();
                answers.lock().unwrap().push(Instant::now());
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut windows = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let buf = RawBuf(dest.as_mut_slice().as_mut_ptr());
        // SAFETY: dest holds NUMEL fp16 elements for the call.
        unsafe { s.swap_into_buffer(1, buf, NUMEL) }.unwrap();
        windows.push((start, Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
    let answers = answers.lock().unwrap();
    // Inside every read's window (well inside: a millisecond from both ends), the other
    // thread got answers. With the lock held across the read, it got none.
    for (start, end) in windows {
        let lo = start + std::time::Duration::from_millis(1);
        let hi = end
            .checked_sub(std::time::Duration::from_millis(1))
            .unwrap_or(end);
        let inside = answers.iter().filter(|t| **t > lo && **t < hi).count();
        assert!(
            inside > 0 || hi <= lo,
            "no bookkeeping answer during a {:?} synchronous read",
            end - start
        );
        assert!(
            hi > lo,
            "the read took under 2 ms; make it larger for this test to mean anything"
        );
    }
}
