//! A model-based test of the parameter swapper: a seeded random sequence of thousands of
//! operations runs against the swapper and against a small model of its state machine
//! written here; every status, every counter of the stats and the bytes of every param
//! after each swap-in must agree.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use swapper::{Dtype, IoConfig, ParamStatus, Settings, Status, Swapper};

const BUFFERS: usize = 4;
const BUFFER_NUMEL: u64 = 3000;
const IDS: u64 = 10;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
struct MParam {
    numel: u64,
    status: ParamStatus,
    has_buffer: bool,
    on_disk: bool,
    /// A write was queued once, so the swap file exists.
    has_file: bool,
    /// What the buffer holds (AVAILABLE) or the file holds (on disk): the param's bytes.
    data: Vec<u8>,
    disk: Vec<u8>,
    write: Option<bool>, // pending write; Some(release)
    read: bool,
}

#[derive(Default)]
struct Model {
    params: BTreeMap<u64, MParam>,
    free: usize,
    reserved: usize,
    /// The capacity of the partitioned swap space, in elements.
    partition: Option<u64>,
}

/// fp16 elements per 4096 bytes: the io-aligned length of a partition.
fn aligned(numel: u64) -> u64 {
    numel.div_ceil(2048) * 2048
}

type Outcome = Result<(), Status>;

impl Model {
    fn dup(ids: &[u64]) -> bool {
        ids.iter().collect::<BTreeSet<_>>().len() != ids.len()
    }

    fn get_buffer(&self, id: u64, numel: u64) -> Outcome {
        if numel == 0 {
            return Err(Status::InvalidArgument);
        }
        if numel > BUFFER_NUMEL {
            return Err(Status::NoBuffer);
        }
        if let Some(p) = self.params.get(&id) {
            if p.status != ParamStatus::NotAvailable || p.write.is_some() {
                return Err(Status::BadState);
            }
        }
        if self.free == 0 {
            return Err(Status::NoBuffer);
        }
        Ok(())
    }

    fn swap_out(&self, ids: &[u64]) -> Outcome {
        if Self::dup(ids) {
            return Err(Status::InvalidArgument);
        }
        for id in ids {
            let p = self.params.get(id).ok_or(Status::NotFound)?;
            if p.status != ParamStatus::Available || !p.has_buffer || p.write.is_some() {
                return Err(Status::BadState);
            }
        }
        Ok(())
    }

    fn swap_in(&self, ids: &[u64]) -> Outcome {
        if Self::dup(ids) {
            return Err(Status::InvalidArgument);
        }
        for id in ids {
            let p = self.params.get(id).ok_or(Status::NotFound)?;
            if p.status != ParamStatus::NotAvailable || p.write.is_some() || !p.on_disk {
                return Err(Status::BadState);
            }
        }
        if self.free < ids.len() {
            return Err(Status::NoBuffer);
        }
        Ok(())
    }

    /// DeepSpeed's release: a param without a buffer (or unknown) is left alone; one with
    /// I/O in flight is refused.
    fn release(&self, ids: &[u64]) -> Outcome {
        if Self::dup(ids) {
            return Err(Status::InvalidArgument);
        }
        for id in ids {
            if let Some(p) = self.params.get(id) {
                if p.read || p.write.is_some() {
                    return Err(Status::BadState);
                }
            }
        }
        Ok(())
    }

    fn finish_writes(&mut self) {
        for p in self.params.values_mut() {
            if let Some(release) = p.write.take() {
                p.on_disk = true;
                p.disk = p.data.clone();
                if release {
                    p.status = ParamStatus::NotAvailable;
                    p.has_buffer = false;
                    self.free += 1;
                }
            }
        }
    }

    fn finish_reads(&mut self) -> Vec<u64> {
        let mut done = Vec::new();
        for (id, p) in self.params.iter_mut() {
            if p.read {
                p.read = false;
                p.status = ParamStatus::Available;
                p.data = p.disk.clone();
                done.push(*id);
            }
        }
        done
    }

    fn partitioned(&self, ids: &[u64], numels: &[u64]) -> Outcome {
        let Some(capacity) = self.partition else {
            return Err(Status::BadState);
        };
        if Self::dup(ids) {
            return Err(Status::InvalidArgument);
        }
        for (k, id) in ids.iter().enumerate() {
            let p = self.params.get(id).ok_or(Status::NotFound)?;
            if p.status != ParamStatus::NotAvailable || p.write.is_some() || p.read || !p.has_file {
                return Err(Status::BadState);
            }
            if numels[k] != p.numel {
                return Err(Status::InvalidArgument);
            }
        }
        if numels.iter().map(|&n| aligned(n)).sum::<u64>() > capacity {
            return Err(Status::NoBuffer);
        }
        Ok(())
    }
}

fn status_of(r: swapper::Result<()>) -> Outcome {
    r.map_err(|e| e.status())
}

/// A batch of up to `max` ids: mostly ids in the state the operation wants (`fit`), some
/// at random (IDS itself is never registered), so that both outcomes are common.
fn pick_ids(rng: &mut Rng, max: u64, m: &Model, fit: impl Fn(&MParam) -> bool) -> Vec<u64> {
    let n = 1 + rng.below(max);
    let good: Vec<u64> = m
        .params
        .iter()
        .filter(|(_, p)| fit(p))
        .map(|(id, _)| *id)
        .collect();
    (0..n)
        .map(|_| {
            if !good.is_empty() && rng.chance(75) {
                good[rng.below(good.len() as u64) as usize]
            } else {
                rng.below(IDS + 1)
            }
        })
        .collect()
}

fn param_bytes(s: &Swapper, id: u64) -> Vec<u8> {
    let (buf, numel) = s.param_buffer(id).unwrap();
    // SAFETY: the param is AVAILABLE; its buffer holds numel elements and no I/O uses it.
    unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) }.to_vec()
}

fn check_stats(s: &Swapper, m: &Model, step: usize) {
    let st = s.stats();
    let avail: Vec<&MParam> = m
        .params
        .values()
        .filter(|p| p.status == ParamStatus::Available)
        .collect();
    let infl: Vec<&MParam> = m
        .params
        .values()
        .filter(|p| p.status == ParamStatus::Inflight)
        .collect();
    assert_eq!(st.params, m.params.len() as u64, "step {step}");
    assert_eq!(st.free_buffers, m.free as u64, "step {step}");
    assert_eq!(st.reserved_buffers, m.reserved as u64, "step {step}");
    assert_eq!(st.total_buffers, BUFFERS as u64);
    assert_eq!(st.available_params, avail.len() as u64, "step {step}");
    assert_eq!(
        st.available_numel,
        avail.iter().map(|p| p.numel).sum::<u64>(),
        "step {step}"
    );
    assert_eq!(st.inflight_params, infl.len() as u64, "step {step}");
    assert_eq!(
        st.inflight_numel,
        infl.iter().map(|p| p.numel).sum::<u64>(),
        "step {step}"
    );
    assert_eq!(
        st.pending_reads,
        m.params.values().filter(|p| p.read).count() as u64,
        "step {step}"
    );
    assert_eq!(
        st.pending_writes,
        m.params.values().filter(|p| p.write.is_some()).count() as u64,
        "step {step}"
    );
    for (id, p) in &m.params {
        assert_eq!(s.param_status(*id).unwrap(), p.status, "step {step} param {id}");
    }
    assert_eq!(s.param_status(IDS).unwrap_err().status(), Status::NotFound);
}

fn run(seed: u64, steps: usize) {
    let dir = common::disk_dir();
    let s = Swapper::new(Settings {
        nvme_path: dir.path().to_path_buf(),
        dtype: Dtype::Fp16,
        buffer_count: BUFFERS as u32,
        buffer_numel: BUFFER_NUMEL,
        io: IoConfig {
            block_size: 4096,
            queue_depth: 4,
            thread_count: 2,
            ..IoConfig::default()
        },
        verify_checksums: seed % 2 == 1,
        ..Settings::default()
    })
    .unwrap();
    let mut m = Model {
        free: BUFFERS,
        ..Model::default()
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut counts = BTreeMap::<&str, (u32, u32)>::new();
    for step in 0..steps {
        let op = rng.below(100);
        let (name, ok) = match op {
            0..=19 => {
                let id = rng.below(IDS);
                let numel = if rng.chance(5) {
                    BUFFER_NUMEL + 1
                } else {
                    1 + rng.below(BUFFER_NUMEL)
                };
                let want = m.get_buffer(id, numel);
                let got = s.get_buffer(id, numel);
                assert_eq!(
                    got.as_ref().map(|_| ()).map_err(|e| e.status()),
                    want,
                    "step {step} get_buffer"
                );
                if let Ok(buf) = got {
                    let data = common::pattern(numel as usize * 2, seed ^ (step as u64) << 8);
                    // SAFETY: the param's new buffer holds numel fp16 elements, ours to fill.
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.0, data.len()) };
                    m.free -= 1;
                    let p = m.params.entry(id).or_insert(MParam {
                        numel,
                        status: ParamStatus::NotAvailable,
                        has_buffer: false,
                        on_disk: false,
                        has_file: false,
                        data: Vec::new(),
                        disk: Vec::new(),
                        write: None,
                        read: false,
                    });
                    p.numel = numel;
                    p.status = ParamStatus::Available;
                    p.has_buffer = true;
                    p.on_disk = false;
                    p.data = data;
                }
                ("get_buffer", want.is_ok())
            }
            20..=39 => {
                let ids = pick_ids(&mut rng, 3, &m, |p| {
                    p.status == ParamStatus::Available && p.write.is_none()
                });
                let async_op = rng.chance(50);
                let release = rng.chance(50);
                let force = rng.chance(80);
                let want = if release && async_op && !force {
                    Err(Status::InvalidArgument)
                } else {
                    m.swap_out(&ids)
                };
                let got = if release {
                    s.swap_out_and_release(&ids, async_op, force)
                } else {
                    s.swap_out(&ids, async_op)
                };
                assert_eq!(
                    status_of(got),
                    want,
                    "step {step} swap_out {ids:?} release {release} async {async_op}"
                );
                if want.is_ok() {
                    for id in &ids {
                        let p = m.params.get_mut(id).unwrap();
                        p.write = Some(release);
                        p.has_file = true;
                    }
                    if !async_op {
                        // A synchronous swap-out completes every pending write, as
                        // DeepSpeed's synchronize_writes does.
                        m.finish_writes();
                    }
                }
                ("swap_out", want.is_ok())
            }
            40..=59 => {
                let ids = pick_ids(&mut rng, 3, &m, |p| {
                    p.status == ParamStatus::NotAvailable && p.on_disk
                });
                let async_op = rng.chance(60);
                let want = m.swap_in(&ids);
                // SAFETY: pool buffers only.
                let got = unsafe { s.swap_in(&ids, async_op, None) };
                assert_eq!(status_of(got), want, "step {step} swap_in {ids:?}");
                if want.is_ok() {
                    for id in &ids {
                        let p = m.params.get_mut(id).unwrap();
                        p.status = ParamStatus::Inflight;
                        p.has_buffer = true;
                        p.read = true;
                        m.free -= 1;
                    }
                    if !async_op {
                        // A synchronous swap-in completes every pending read, as
                        // DeepSpeed's synchronize_reads does.
                        for id in m.finish_reads() {
                            assert!(
                                param_bytes(&s, id) == m.params[&id].data,
                                "step {step}: param {id} differs after swap in"
                            );
                        }
                    }
                }
                ("swap_in", want.is_ok())
            }
            60..=69 => {
                status_of(s.wait_reads()).unwrap();
                for id in m.finish_reads() {
                    assert!(
                        param_bytes(&s, id) == m.params[&id].data,
                        "step {step}: param {id} differs after wait_reads"
                    );
                }
                ("wait_reads", true)
            }
            70..=76 => {
                status_of(s.wait_writes()).unwrap();
                m.finish_writes();
                ("wait_writes", true)
            }
            77..=89 => {
                let ids = pick_ids(&mut rng, 2, &m, |p| p.status == ParamStatus::Available);
                let want = m.release(&ids);
                assert_eq!(status_of(s.release(&ids)), want, "step {step} release {ids:?}");
                if want.is_ok() {
                    for id in &ids {
                        if let Some(p) = m.params.get_mut(id) {
                            if p.has_buffer {
                                m.free += 1;
                            }
                            p.status = ParamStatus::NotAvailable;
                            p.has_buffer = false;
                        }
                    }
                }
                ("release", want.is_ok())
            }
            90..=92 => {
                if m.reserved == 0 {
                    let cap = rng.below(3) as usize;
                    let got = s.reserve_available_buffers(cap).unwrap();
                    assert_eq!(got.len(), cap.min(m.free), "step {step} reserve");
                    m.free -= got.len();
                    m.reserved += got.len();
                } else {
                    s.release_reserved_buffers().unwrap();
                    m.free += m.reserved;
                    m.reserved = 0;
                }
                ("reserve", true)
            }
            93..=94 => {
                let numels: Vec<u64> = (0..3).map(|_| 1 + rng.below(BUFFER_NUMEL)).collect();
                s.reserve_partitioned_swap_space(&numels).unwrap();
                m.partition = Some(numels.iter().map(|&n| aligned(n)).sum());
                ("reserve_partitioned", true)
            }
            _ => {
                let ids = pick_ids(&mut rng, 2, &m, |p| {
                    p.status == ParamStatus::NotAvailable && p.on_disk
                });
                let numels: Vec<u64> = ids
                    .iter()
                    .map(|id| m.params.get(id).map_or(5, |p| p.numel))
                    .collect();
                let srcs: Vec<Vec<f32>> = numels
                    .iter()
                    .map(|&n| {
                        (0..n)
                            .map(|_| f32::from_bits(rng.next() as u32 & 0xBFFF_FFFF))
                            .collect()
                    })
                    .collect();
                let slices: Vec<&[f32]> = srcs.iter().map(|v| v.as_slice()).collect();
                m.finish_writes(); // the call waits for pending writes first
                let want = m.partitioned(&ids, &numels);
                assert_eq!(
                    status_of(s.swap_out_partitioned(&ids, &slices)),
                    want,
                    "step {step} partitioned {ids:?}"
                );
                if want.is_ok() {
                    for (id, src) in ids.iter().zip(&srcs) {
                        let p = m.params.get_mut(id).unwrap();
                        p.disk = src
                            .iter()
                            .flat_map(|x| half::f16::from_f32(*x).to_bits().to_ne_bytes())
                            .collect();
                        p.on_disk = true;
                    }
                }
                ("partitioned", want.is_ok())
            }
        };
        let c = counts.entry(name).or_default();
        if ok {
            c.0 += 1
        } else {
            c.1 += 1
        }
        check_stats(&s, &m, step);
    }
    // Every kind of operation must have both succeeded and failed at least once, or the
    // sequence did not exercise the model.
    for (name, (ok, err)) in &counts {
        assert!(*ok > 0, "{name} never succeeded: {counts:?}");
        if !["wait_reads", "wait_writes", "reserve", "reserve_partitioned"].contains(name) {
            assert!(*err > 0, "{name} never failed: {counts:?}");
        }
    }
    eprintln!("seed {seed}: {counts:?}");
}

#[test]
fn random_sequences_agree_with_the_model() {
    for seed in [1u64, 2, 3] {
        run(seed, 3000);
    }
}
