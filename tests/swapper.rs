//! The parameter swapper against real files: the partitioned fp32 -> fp16/bf16 path bit
//! for bit, caller buffers, corruption and truncation caught, faults survived, threads.

mod common;

use std::sync::Arc;

use half::{bf16, f16};
use swapper::sys::RawBuf;
use swapper::{Dtype, IoConfig, ParamStatus, Settings, Status, Swapper};

use common::swapper_in;

fn put(s: &Swapper, id: u64, bytes: &[u8]) {
    let numel = (bytes.len() / s.element_size()) as u64;
    let buf = s.get_buffer(id, numel).unwrap();
    // SAFETY: a fresh pool buffer of `numel` elements.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.0, bytes.len()) };
}

fn get(s: &Swapper, id: u64) -> Vec<u8> {
    let (buf, numel) = s.param_buffer(id).unwrap();
    // SAFETY: the param is AVAILABLE.
    unsafe { swapper::sys::alloc::borrow(buf, numel as usize * s.element_size()) }.to_vec()
}

fn specials() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        1e-8,
        5.96e-8,
        2.98e-8,
        65504.0,
        65520.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
        f32::from_bits(1),
        f32::MAX,
    ];
    let mut x = 77u32;
    while v.len() < 300_001 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(f32::from_bits(x));
    }
    v
}

#[test]
fn partitioned_swap_out_matches_reference_conversion_bit_for_bit() {
    for dtype in [Dtype::Fp16, Dtype::Bf16, Dtype::Fp32] {
        let dir = common::disk_dir();
        let src = specials();
        let n = src.len() as u64;
        let s = swapper_in(dir.path(), dtype, 2, n);
        put(&s, 5, &vec![0u8; src.len() * dtype.size()]);
        s.swap_out_and_release(&[5], false, false).unwrap();
        s.reserve_partitioned_swap_space(&[n]).unwrap();
        s.swap_out_partitioned(&[5], &[&src]).unwrap();
        assert_eq!(s.param_status(5).unwrap(), ParamStatus::NotAvailable);
        let want: Vec<u8> = match dtype {
            Dtype::Fp16 => src
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_bits().to_ne_bytes())
                .collect(),
            Dtype::Bf16 => src
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_bits().to_ne_bytes())
                .collect(),
            Dtype::Fp32 => src.iter().flat_map(|x| x.to_ne_bytes()).collect(),
        };
        // The store itself holds the converted values (then zero padding to the alignment).
        let file = common::stored_bytes(&s, 5);
        assert_eq!(file.len() as u64, s.io_aligned_numel(n) * dtype.size() as u64);
        for (i, (g, w)) in file
            .chunks(dtype.size())
            .zip(want.chunks(dtype.size()))
            .enumerate()
        {
            if src[i].is_nan() {
                let bits = u16::from_ne_bytes([g[0], g[1]]);
                match dtype {
                    Dtype::Fp16 => assert!(f16::from_bits(bits).is_nan()),
                    Dtype::Bf16 => assert!(bf16::from_bits(bits).is_nan()),
                    Dtype::Fp32 => assert_eq!(g, w),
                }
            } else {
                assert_eq!(g, w, "{dtype:?} element {i} ({:e})", src[i]);
            }
        }
        assert!(file[want.len()..].iter().all(|b| *b == 0));
        // And it swaps back in (checksums updated).
        // SAFETY: pool buffers.
        unsafe { s.swap_in(&[5], false, None) }.unwrap();
        assert!(get(&s, 5)[..] == file[..want.len()]);
    }
}

#[test]
fn caller_buffers_as_swap_in_destinations() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 1, 100_000);
    let data = common::pattern(150_002, 4);
    put(&s, 1, &data);
    s.swap_out_and_release(&[1], false, false).unwrap();
    let mut mine = vec![0u8; data.len() + 1];
    let dest = [RawBuf(mine[1..].as_mut_ptr())];
    // SAFETY: `mine` outlives the release below.
    unsafe { s.swap_in(&[1], false, Some(&dest)) }.unwrap();
    assert_eq!(s.available_buffers(), 1, "no pool buffer used");
    assert!(mine[1..] == data[..]);
    assert_eq!(s.param_buffer(1).unwrap().0 .0, dest[0].0);
    s.release(&[1]).unwrap();
    assert_eq!(s.available_buffers(), 1);
    // Reserved pool buffers can serve as destinations, and cannot be given back under a param.
    let reserved = s.reserve_available_buffers(8).unwrap();
    assert_eq!(reserved.len(), 1);
    // SAFETY: the reserved buffer holds buffer_numel elements.
    unsafe { s.swap_in(&[1], false, Some(&reserved)) }.unwrap();
    assert_eq!(
        s.release_reserved_buffers().unwrap_err().status(),
        Status::BadState
    );
    s.release(&[1]).unwrap();
    s.release_reserved_buffers().unwrap();
    assert_eq!(s.available_buffers(), 1);
}

#[test]
fn corrupted_truncated_and_deleted_files_are_caught() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 3, 2 << 20);
    for id in 0..3 {
        put(&s, id, &common::pattern(3 << 20, id));
    }
    s.swap_out_and_release(&[0, 1, 2], false, false).unwrap();
    // Flip one byte 2 MiB + 5 into param 0's bytes in its extent file.
    let p0 = common::flip_stored_byte(&s, 0, (2 << 20) + 5);
    // SAFETY: pool buffers.
    let e = unsafe { s.swap_in(&[0], false, None) }.unwrap_err();
    assert_eq!(e.status(), Status::CorruptData);
    assert!(
        e.message().contains("param 0") && e.message().contains("offset 2097152"),
        "{e}"
    );
    assert!(e.message().contains(p0.to_str().unwrap()), "{e}");
    assert_eq!(s.param_status(0).unwrap(), ParamStatus::NotAvailable);
    assert_eq!(s.available_buffers(), 3, "the buffer went back to the pool");

    // Truncate the extent file holding param 1 to below param 1's bytes.
    let loc = &s.param_locations(1)[0];
    let f = std::fs::OpenOptions::new().write(true).open(&loc.path).unwrap();
    f.set_len(loc.file_offset + 1000).unwrap();
    // SAFETY: pool buffers.
    let e = unsafe { s.swap_in(&[1], true, None) }.unwrap_err();
    assert_eq!(e.status(), Status::CorruptData);
    assert!(
        e.message().contains("truncated") && e.message().contains("param 1"),
        "{e}"
    );
    assert!(e.message().contains(loc.path.to_str().unwrap()), "{e}");

    std::fs::remove_file(s.param_path(2)).unwrap();
    // SAFETY: pool buffers.
    let e = unsafe { s.swap_in(&[2], true, None) }.unwrap_err();
    assert_eq!(e.status(), Status::CorruptData);
    assert!(e.message().contains("deleted"), "{e}");
    assert_eq!(s.stats().free_buffers, 3);
}

#[cfg(feature = "fault-injection")]
mod faults {
    use super::*;
    use swapper::sys::fault::{self, Call, Fault, Rule};

    fn rule(call: Call, path: &std::path::Path, fault: Fault, skip: u64, times: u64) -> Rule {
        Rule {
            call,
            path_contains: path.to_string_lossy().into_owned(),
            fault,
            skip,
            times,
        }
    }

    #[test]
    fn enospc_during_swap_out_keeps_the_data_and_a_retry_succeeds() {
        let dir = common::disk_dir();
        let s = swapper_in(dir.path(), Dtype::Fp16, 2, 1 << 20);
        let data = common::pattern(2 << 20, 9);
        put(&s, 3, &data);
        fault::install(rule(
            Call::Write,
            &s.param_path(3),
            Fault::Errno(libc::ENOSPC),
            3,
            1,
        ));
        s.swap_out_and_release(&[3], true, true).unwrap();
        let e = s.wait_writes().unwrap_err();
        assert_eq!(e.status(), Status::IoError);
        assert!(
            e.message().contains("param 3") && e.message().contains("No space left"),
            "{e}"
        );
        assert_eq!(s.param_status(3).unwrap(), ParamStatus::Available);
        assert!(get(&s, 3) == data, "the buffer still holds the data");
        assert_eq!(s.available_buffers(), 1, "the buffer was not released");
        // SAFETY: pool buffers.
        assert_eq!(
            unsafe { s.swap_in(&[3], false, None) }.unwrap_err().status(),
            Status::BadState
        );
        s.swap_out_and_release(&[3], false, false).unwrap();
        // SAFETY: pool buffers.
        unsafe { s.swap_in(&[3], false, None) }.unwrap();
        assert!(get(&s, 3) == data, "bit-exact after the retry");
    }

    #[test]
    fn eio_during_swap_in_frees_the_buffer_and_a_later_swap_in_succeeds() {
        let dir = common::disk_dir();
        let s = swapper_in(dir.path(), Dtype::Fp16, 2, 1 << 20);
        let data = common::pattern(2 << 20, 10);
        put(&s, 4, &data);
        s.swap_out_and_release(&[4], false, false).unwrap();
        fault::install(rule(Call::Read, &s.param_path(4), Fault::Errno(libc::EIO), 1, 1));
        // SAFETY: pool buffers.
        unsafe { s.swap_in(&[4], true, None) }.unwrap();
        let e = s.wait_reads().unwrap_err();
        assert_eq!(e.status(), Status::IoError);
        assert!(
            e.message().contains("param 4") && e.message().contains("Input/output error"),
            "{e}"
        );
        assert_eq!(s.param_status(4).unwrap(), ParamStatus::NotAvailable);
        assert_eq!(s.available_buffers(), 2);
        // SAFETY: pool buffers.
        unsafe { s.swap_in(&[4], false, None) }.unwrap();
        assert!(get(&s, 4) == data);
    }

    #[test]
    fn eintr_and_short_transfers_are_retried_invisibly() {
        for backend in [swapper::Backend::Blocking, swapper::Backend::Auto] {
            let dir = common::disk_dir();
            let s = Swapper::new(Settings {
                nvme_path: dir.path().to_path_buf(),
                buffer_count: 2,
                buffer_numel: 1 << 20,
                io: IoConfig {
                    block_size: 64 << 10,
                    backend,
                    ..IoConfig::default()
                },
                ..Settings::default()
            })
            .unwrap();
            let data = common::pattern(2 << 20, 11);
            put(&s, 6, &data);
            let p = s.param_path(6);
            fault::install(rule(Call::Write, &p, Fault::Errno(libc::EINTR), 2, 5));
            fault::install(rule(Call::Write, &p, Fault::Short(1000), 4, 5));
            s.swap_out_and_release(&[6], false, false).unwrap();
            fault::install(rule(Call::Read, &p, Fault::Errno(libc::EINTR), 1, 5));
            fault::install(rule(Call::Read, &p, Fault::Short(4096 + 7), 3, 5));
            // SAFETY: pool buffers.
            unsafe { s.swap_in(&[6], false, None) }.unwrap();
            assert!(get(&s, 6) == data, "{backend:?}");
        }
    }
}

#[test]
fn eight_threads_swap_their_own_params_while_one_reads_stats() {
    let dir = common::disk_dir();
    let s = Arc::new(swapper_in(dir.path(), Dtype::Fp16, 16, 64 << 10));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let st = s.stats();
                assert!(st.free_buffers + st.reserved_buffers <= 16);
                n += 1;
            }
            n
        })
    };
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let s = &s;
            scope.spawn(move || {
                let ids = [t * 2, t * 2 + 1];
                for round in 0..400u64 {
                    let datas: Vec<Vec<u8>> = ids
                        .iter()
                        .map(|id| common::pattern(20_000 + *id as usize * 2, round * 100 + id))
                        .collect();
                    for (id, d) in ids.iter().zip(&datas) {
                        put(s, *id, d);
                    }
                    s.swap_out_and_release(&ids, round % 2 == 0, true).unwrap();
                    if round % 2 == 0 {
                        // Another thread's wait may have finished our writes: wait until ours are.
                        while ids
                            .iter()
                            .any(|id| s.param_status(*id).unwrap() != ParamStatus::NotAvailable)
                        {
                            s.wait_writes().unwrap();
                        }
                    }
                    // SAFETY: pool buffers.
                    unsafe { s.swap_in(&ids, true, None) }.unwrap();
                    while ids
                        .iter()
                        .any(|id| s.param_status(*id).unwrap() != ParamStatus::Available)
                    {
                        s.wait_reads().unwrap();
                    }
                    for (id, d) in ids.iter().zip(&datas) {
                        assert!(get(s, *id) == *d, "thread {t} round {round} param {id}");
                    }
                    s.release(&ids).unwrap();
                }
            });
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    let st = s.stats();
    assert_eq!(st.free_buffers, 16);
    assert_eq!(
        st.bytes_read, st.bytes_written,
        "every byte written was read once"
    );
}

#[test]
fn wait_params_waits_for_the_named_params_only() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 3, 1 << 20);
    for id in 0..3 {
        put(&s, id, &common::pattern(2 << 20, 40 + id));
    }
    s.swap_out_and_release(&[0, 1, 2], false, false).unwrap();
    // SAFETY: pool buffers.
    unsafe { s.swap_in(&[0, 1, 2], true, None) }.unwrap();
    s.wait_params(&[1]).unwrap();
    assert_eq!(s.param_status(1).unwrap(), ParamStatus::Available);
    assert!(get(&s, 1) == common::pattern(2 << 20, 41));
    assert_eq!(s.wait_params(&[1, 99]).unwrap_err().status(), Status::NotFound);
    s.wait_params(&[0, 2]).unwrap();
    assert_eq!(s.stats().pending_reads, 0);
    s.wait_params(&[0]).unwrap(); // nothing in flight: a no-op
}
