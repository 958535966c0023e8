//! The registry: sub-groups of named fp32 tensors, where each tensor sits in the ring
//! when the sub-group is in memory, its store key, its checksum, and the sub-group's
//! phase. Every change of phase is a method here.

use std::collections::BTreeMap;

use crate::checksum::Checksum;
use crate::status::{Error, Result};
use crate::store::StoreTicket as Ticket;

use super::ring::aligned;

/// Bytes per element: the optimizer state is fp32.
pub(crate) const ELEM: u64 = 4;

/// What a tensor of a sub-group is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Optimizer state (master params, moments, ...): read at the start of its sub-group's
    /// visit, written back when the sub-group is handed back. Reads back as zeros until
    /// first written.
    State = 0,
    /// Gradients: written in fragments by `swap_out_gradients` during backward, read
    /// with the sub-group, never written back by the step. Reads back as zeros until a
    /// fragment is written.
    Gradient = 1,
}

c_enum!(TensorKind, "tensor kind", [State "state", Gradient "gradient"]);

/// One tensor as the caller declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its name, unique in the sub-group ("param", "exp_avg", "exp_avg_sq", "grad").
    pub name: String,
    /// fp32 elements; at least 1.
    pub numel: u64,
    /// State or gradient.
    pub kind: TensorKind,
}

impl TensorSpec {
    /// A tensor spec.
    pub fn new(name: &str, numel: u64, kind: TensorKind) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            numel,
            kind,
        }
    }
}

/// What the bytes on disk should check to: for a state tensor the crc32c of the whole
/// tensor (written in one piece), for a gradient one per fragment (written in pieces;
/// fragments never overlap part-way, see `gradients`, so every byte written is covered).
#[derive(Clone, Debug, Default)]
pub(crate) enum Sum {
    /// Never written since registration: the file system's zeros, nothing to compare.
    #[default]
    Zeros,
    /// The crc32c of the whole tensor's bytes, with its parts.
    Whole(Checksum),
    /// Fragments written: element offset -> (elements, crc32c of their bytes when
    /// checksums are on). Kept with checksums off too: a fragment may overlap earlier
    /// ones only by covering each of them whole.
    Fragments(BTreeMap<u64, (u64, Option<u32>)>),
}

/// A tensor of a registered sub-group.
#[derive(Debug)]
pub(crate) struct Tensor {
    pub spec: TensorSpec,
    /// Its key in the store.
    pub key: u64,
    /// Where it starts in its sub-group's ring region.
    pub offset: u64,
    /// Whether the file holds a valid copy (false after a failed write, until one succeeds).
    pub valid: bool,
    /// The checksum of its bytes on disk (kept only when checksums are on).
    pub sum: Sum,
    /// Gradient fragments whose write failed: element offset -> count.
    pub bad: BTreeMap<u64, u64>,
}

impl Tensor {
    /// Bytes of data.
    pub fn bytes(&self) -> u64 {
        self.spec.numel * ELEM
    }
}

/// A sub-group's I/O under way: each tensor's ticket, and a failure met while submitting
/// (the tickets already queued must still finish before the region is reused).
pub(crate) struct Tickets {
    /// Tells this batch of I/O from any later one of the same sub-group.
    pub serial: u64,
    /// (tensor index, ticket).
    pub queued: Vec<(usize, Ticket)>,
    /// Set by a submission that failed part-way.
    pub failed: Option<Error>,
    /// False while a call submits without the lock (claimed, not yet recorded).
    pub recorded: bool,
}

impl Tickets {
    /// A claim's I/O, not yet submitted.
    pub fn claimed(serial: u64) -> Tickets {
        Tickets {
            serial,
            queued: Vec::new(),
            failed: None,
            recorded: false,
        }
    }

    /// Whether every ticket has finished (and the claim was recorded).
    pub fn finished(&self) -> bool {
        self.recorded && self.queued.iter().all(|(_, t)| t.is_finished())
    }
}

/// Where a sub-group is.
pub(crate) enum Phase {
    /// Being registered: its space is being reserved in the store.
    Registering,
    /// On disk only; no I/O; not in the step.
    Idle,
    /// Its newest data is only in the ring (at `region`): its last write-behind failed.
    /// Visiting it again uses that data; its next successful write makes it Idle.
    Unsaved { region: u64 },
    /// In this step's order, not read yet; `resident` is the region of its data when it
    /// was Unsaved (then only its gradients are read).
    Planned { resident: Option<u64> },
    /// Being read into `region`; `taken` once a `next_ready` is waiting for it.
    Reading { region: u64, io: Tickets, taken: bool },
    /// With the caller, in `region`; `users` calls are reading it (swap_out_params).
    Out { region: u64, users: u32 },
    /// Being written back from `region`.
    Writing { region: u64, io: Tickets },
    /// Visited in this step (or its read failed and it was skipped): done until the step ends.
    Done,
}

impl Phase {
    /// A name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Registering => "being registered",
            Phase::Idle => "idle",
            Phase::Unsaved { .. } => "unsaved (its last write-behind failed; the data is in memory)",
            Phase::Planned { .. } => "planned",
            Phase::Reading { .. } => "being read",
            Phase::Out { .. } => "out with the caller",
            Phase::Writing { .. } => "being written",
            Phase::Done => "done for this step",
        }
    }

    /// The ring region it holds, if any.
    pub fn region(&self) -> Option<u64> {
        match self {
            Phase::Unsaved { region }
            | Phase::Planned {
                resident: Some(region),
            }
            | Phase::Reading { region, .. }
            | Phase::Out { region, .. }
            | Phase::Writing { region, .. } => Some(*region),
            _ => None,
        }
    }
}

/// A registered sub-group.
pub(crate) struct SubGroup {
    pub tensors: Vec<Tensor>,
    /// Bytes of its ring region: the sum of its tensors' aligned sizes.
    pub region_bytes: u64,
    pub phase: Phase,
}

impl SubGroup {
    /// Lays out `specs` (checked: at least one, names unique and non-empty, numel >= 1)
    /// with store keys from `key_of(tensor index)`.
    pub fn new(index: u32, specs: &[TensorSpec], key_of: impl Fn(usize) -> u64) -> Result<SubGroup> {
        if specs.is_empty() {
            return Err(Error::invalid(format!("sub-group {index}: no tensors")));
        }
        if specs.len() > MAX_TENSORS {
            return Err(Error::invalid(format!(
                "sub-group {index}: {} tensors; at most {MAX_TENSORS}",
                specs.len()
            )));
        }
        let mut tensors = Vec::with_capacity(specs.len());
        let mut offset = 0u64;
        for (k, s) in specs.iter().enumerate() {
            if s.name.is_empty() {
                return Err(Error::invalid(format!(
                    "sub-group {index}: tensor {k} has an empty name"
                )));
            }
            if specs[..k].iter().any(|o| o.name == s.name) {
                return Err(Error::invalid(format!(
                    "sub-group {index}: two tensors are named \"{}\"",
                    s.name
                )));
            }
            if s.numel == 0 {
                return Err(Error::invalid(format!(
                    "sub-group {index}: tensor \"{}\" has 0 elements",
                    s.name
                )));
            }
            let bytes = s
                .numel
                .checked_mul(ELEM)
                .filter(|b| *b <= MAX_TENSOR_BYTES)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "sub-group {index}: tensor \"{}\" of {} elements is too large",
                        s.name, s.numel
                    ))
                })?;
            tensors.push(Tensor {
                spec: s.clone(),
                key: key_of(k),
                offset,
                valid: true,
                sum: Sum::Zeros,
                bad: BTreeMap::new(),
            });
            offset += aligned(bytes);
        }
        Ok(SubGroup {
            tensors,
            region_bytes: offset,
            phase: Phase::Idle,
        })
    }

    /// Whether a state tensor's file holds no valid copy (a write-behind failed): the
    /// sub-group's only good copy is then in the ring.
    pub fn unsaved(&self) -> bool {
        self.tensors
            .iter()
            .any(|t| t.spec.kind == TensorKind::State && !t.valid)
    }

    /// The tensor at `k`, or an error naming the sub-group.
    pub fn tensor(&self, index: u32, k: usize) -> Result<&Tensor> {
        self.tensors.get(k).ok_or_else(|| {
            Error::invalid(format!(
                "sub-group {index} has {} tensors; there is no tensor {k}",
                self.tensors.len()
            ))
        })
    }
}

/// Most tensors per sub-group.
pub(crate) const MAX_TENSORS: usize = 1 << 16;
/// Largest tensor (1 TiB): keeps every offset computation far from overflow.
pub(crate) const MAX_TENSOR_BYTES: u64 = 1 << 40;

/// The store key of tensor `k` of sub-group `index`.
pub fn key(index: u32, k: usize) -> u64 {
    (u64::from(index) << 16) | k as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_laid_out_aligned_in_order() {
        let g = SubGroup::new(
            3,
            &[
                TensorSpec::new("param", 1000, TensorKind::State),
                TensorSpec::new("exp_avg", 1024, TensorKind::State),
                TensorSpec::new("grad", 1, TensorKind::Gradient),
            ],
            |k| key(3, k),
        )
        .unwrap();
        let offs: Vec<u64> = g.tensors.iter().map(|t| t.offset).collect();
        assert_eq!(offs, vec![0, 4096, 8192]);
        assert_eq!(g.region_bytes, 12288);
        assert_eq!(g.tensors[2].key, (3 << 16) | 2);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let e = |specs: &[TensorSpec]| {
            SubGroup::new(1, specs, |k| k as u64)
                .err()
                .unwrap()
                .message()
                .to_string()
        };
        assert!(e(&[]).contains("no tensors"));
        assert!(e(&[TensorSpec::new("a", 0, TensorKind::State)]).contains("0 elements"));
        assert!(e(&[
            TensorSpec::new("a", 1, TensorKind::State),
            TensorSpec::new("a", 1, TensorKind::State)
        ])
        .contains("two tensors"));
        assert!(e(&[TensorSpec::new("", 1, TensorKind::State)]).contains("empty name"));
        assert!(e(&[TensorSpec::new("a", u64::MAX, TensorKind::State)]).contains("too large"));
    }
}
