//! Where ZeRO-3 relies on DeepSpeed's swapper semantics, libswapper's match them: the
//! packed partitioned swap space, synchronous calls finishing everything pending,
//! release of a param without a buffer as a no-op, the reserved buffers' lengths, and
//! bf16 NaN bits. Real files, real O_DIRECT, both backends where it matters.

mod common;

use half::f16;
use swapper::sys::RawBuf;
use swapper::{Dtype, ParamStatus, Status, Swapper};

use common::swapper_in;

/// Registers param `id` with `numel` elements of a pattern, swaps it out and releases it.
fn park(s: &Swapper, id: u64, numel: u64) -> Vec<u8> {
    let bytes = common::pattern(numel as usize * s.element_size(), id);
    let buf = s.get_buffer(id, numel).unwrap();
    // SAFETY: a fresh pool buffer of `numel` elements.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.0, bytes.len()) };
    s.swap_out_and_release(&[id], false, false).unwrap();
    bytes
}

fn get(s: &Swapper, id: u64) -> Vec<u8> {
    let (buf, numel) = s.param_buffer(id).unwrap();
    // SAFETY: the param is AVAILABLE.
    unsafe { swapper::sys::alloc::borrow(buf, numel as usize * s.element_size()) }.to_vec()
}

fn fp16_bytes(src: &[f32]) -> Vec<u8> {
    src.iter()
        .flat_map(|x| f16::from_f32(*x).to_bits().to_ne_bytes())
        .collect()
}

#[test]
fn the_partitioned_space_takes_any_batch_that_fits_its_capacity() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 4, 8192);
    for (id, numel) in [(1, 100), (2, 2000), (3, 100), (4, 100)] {
        park(&s, id, numel);
    }
    // ZeRO-3 reserves the numels of its largest sub-group once: here one partition of
    // 5000 elements, 6144 once io-aligned (fp16: 2048 elements per 4 KiB).
    s.reserve_partitioned_swap_space(&[5000]).unwrap();
    assert_eq!(s.partitioned_swap_capacity(), 6144);
    let src = |n: usize, k: f32| (0..n).map(|i| i as f32 * 0.5 + k).collect::<Vec<f32>>();
    let (a, b, c) = (src(100, 1.0), src(2000, 2.0), src(100, 3.0));
    // More params than were reserved, in any order, with a larger one: all fit 6144.
    s.swap_out_partitioned(&[3, 2, 1], &[&c, &b, &a]).unwrap();
    // Four params need 4 x 2048 = 8192 > 6144: refused, nothing written.
    let e = s
        .swap_out_partitioned(&[1, 2, 3, 4], &[&a, &b, &c, &a])
        .unwrap_err();
    assert_eq!(e.status(), Status::NoBuffer, "{e}");
    assert!(
        e.message().contains("8192") && e.message().contains("6144"),
        "{e}"
    );
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[1, 2, 3], false, None) }.unwrap();
    assert_eq!(get(&s, 1), fp16_bytes(&a));
    assert_eq!(get(&s, 2), fp16_bytes(&b));
    assert_eq!(get(&s, 3), fp16_bytes(&c));
    // A new reservation replaces the space.
    s.reserve_partitioned_swap_space(&[100, 100]).unwrap();
    assert_eq!(s.partitioned_swap_capacity(), 4096);
}

#[test]
fn a_synchronous_swap_in_finishes_earlier_asynchronous_reads() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 4, 1 << 16);
    let one = park(&s, 1, 1 << 16);
    let two = park(&s, 2, 1 << 15);
    let three = park(&s, 3, 1000);
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[1], true, None) }.unwrap();
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[2], false, None) }.unwrap();
    assert_eq!(
        s.param_status(1).unwrap(),
        ParamStatus::Available,
        "param 1 finished too"
    );
    assert_eq!(s.stats().pending_reads, 0);
    assert_eq!(get(&s, 1), one);
    assert_eq!(get(&s, 2), two);
    // swap_into_buffer, synchronous, also finishes an earlier asynchronous read.
    s.release(&[1, 2]).unwrap();
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[1], true, None) }.unwrap();
    let mut dest = vec![0u16; 1000];
    // SAFETY: dest holds 1000 elements for the call.
    unsafe { s.swap_into_buffer(3, RawBuf(dest.as_mut_ptr() as *mut u8), 1000) }.unwrap();
    assert_eq!(s.param_status(1).unwrap(), ParamStatus::Available);
    assert_eq!(s.param_status(3).unwrap(), ParamStatus::NotAvailable);
    let got: Vec<u8> = dest.iter().flat_map(|v| v.to_ne_bytes()).collect();
    assert_eq!(got, three);
    assert_eq!(get(&s, 1), one);
}

#[test]
fn a_synchronous_swap_out_finishes_and_releases_earlier_asynchronous_writes() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 3, 1 << 16);
    for id in [1u64, 2] {
        let buf = s.get_buffer(id, 1 << 16).unwrap();
        let bytes = common::pattern(1 << 17, id);
        // SAFETY: a fresh pool buffer of 2^16 fp16 elements.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.0, bytes.len()) };
    }
    s.swap_out_and_release(&[1], true, true).unwrap();
    assert_eq!(s.available_buffers(), 1);
    s.swap_out_and_release(&[2], false, false).unwrap();
    let st = s.stats();
    assert_eq!((st.pending_writes, st.free_buffers), (0, 3), "{st:?}");
    assert_eq!(s.param_status(1).unwrap(), ParamStatus::NotAvailable);
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[1], false, None) }.unwrap();
    assert_eq!(get(&s, 1), common::pattern(1 << 17, 1));
}

#[test]
fn release_of_a_param_without_a_buffer_is_a_no_op_but_io_in_flight_is_refused() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 3, 1 << 16);
    park(&s, 1, 1 << 16);
    let before = s.stats();
    s.release(&[1]).unwrap(); // NOT_AVAILABLE
    s.release(&[12345]).unwrap(); // unknown
    assert_eq!(s.stats(), before);
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[1], true, None) }.unwrap();
    let e = s.release(&[1]).unwrap_err();
    assert_eq!(e.status(), Status::BadState, "{e}");
    s.wait_reads().unwrap();
    s.get_buffer(2, 10).unwrap();
    s.swap_out(&[2], true).unwrap();
    let e = s.release(&[2, 1]).unwrap_err();
    assert_eq!(e.status(), Status::BadState, "a write in flight: {e}");
    assert_eq!(
        s.param_status(1).unwrap(),
        ParamStatus::Available,
        "the batch changed nothing"
    );
    s.wait_writes().unwrap();
    s.release(&[2, 1, 777]).unwrap();
    assert_eq!(s.available_buffers(), 3);
}

#[test]
fn reserved_buffers_hold_the_io_aligned_buffer_size() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Fp16, 3, 1000);
    assert_eq!(s.aligned_buffer_numel(), 2048);
    let bufs = s.reserve_available_buffers(3).unwrap();
    assert_eq!(bufs.len(), 3);
    let mut addrs: Vec<usize> = bufs.iter().map(|b| b.addr()).collect();
    addrs.sort_unstable();
    assert_eq!(
        addrs[1] - addrs[0],
        2048 * 2,
        "buffers are aligned_buffer_numel apart"
    );
    s.release_reserved_buffers().unwrap();
}

#[test]
fn every_bf16_nan_is_written_as_0xffff_as_torch_does() {
    let dir = common::disk_dir();
    let s = swapper_in(dir.path(), Dtype::Bf16, 2, 4096);
    park(&s, 1, 6);
    s.reserve_partitioned_swap_space(&[6]).unwrap();
    let src = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFC1_2345),
        1.0,
        f32::INFINITY,
    ];
    s.swap_out_partitioned(&[1], &[&src]).unwrap();
    let file = common::stored_bytes(&s, 1);
    let bits: Vec<u16> = file[..12]
        .chunks_exact(2)
        .map(|p| u16::from_ne_bytes([p[0], p[1]]))
        .collect();
    assert_eq!(bits, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0x3F80, 0x7F80]);
}
