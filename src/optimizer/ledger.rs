//! The optimizer swapper's side of the shared claim guard ([`crate::claim`]): what each
//! kind of claim remembers ([`Claimed`]), how it is recorded or undone under the lock
//! ([`Ledger::resolve`]), and the transition marker that tells a torn bookkeeping from a
//! consistent one ([`State::change`]).
//!
//! Every call that claims something (a sub-group's read or write-behind, the sub-group
//! `next_ready` takes, a registration, a ring region for a gradient fragment, gradient
//! writes taken out for settling, a reader of an out sub-group) pushes one entry per
//! claimed thing while it holds the lock, lets the lock go for the submit step, and ends
//! the claim; a claim that is dropped unended (an early return, a panic) ends itself the
//! same way. What the entries do when their call did not get to note its outcome:
//!
//! | entry | recorded (the call noted its outcome) | not recorded (a panic interrupted the call) |
//! | --- | --- | --- |
//! | `Register` | the sub-group becomes idle | the sub-group is forgotten, its reserved space at the next register or purge |
//! | `Io`, a read | its tickets go to the sub-group's phase | the tickets queued so far, and a `Panic` failure: `next_ready` skips the sub-group (files unchanged) |
//! | `Io`, a write-behind | as a read | nothing queued: the sub-group is out with the caller again; some queued: a `Panic` failure, the data kept in memory (`Unsaved`) and written again next step |
//! | `Take` | the sub-group is out with the caller, or skipped with its read error | its reads are waited for, then it is skipped this step (files unchanged; unsaved data stays in memory) |
//! | `Fragment` | the fragment's write joins the gradient writes | its ring region is freed (nothing was queued) |
//! | `Settling` | the writes' outcomes are recorded | the writes go back to the list of writes in flight |
//! | `Reader` | the out sub-group's reader count goes down | the same |
//!
//! A panic in the middle of a transition (`<rank folder>|change`) breaks the handle: every
//! later call returns `Panic`, destroy still works.

use crate::claim::{Ledger, Settle};
use crate::status::{Error, Result, Status};
use crate::store::StoreTicket as Ticket;

use super::step::GradWrite;
use super::subgroup::{Phase, Sum, Tickets};
use super::State;

/// One thing a call claimed (see the module doc's table).
pub(crate) enum Claimed {
    /// A sub-group being registered (its phase `Registering`); `reserved` once the store
    /// holds the space of every tensor.
    Register {
        index: u32,
        keys: Vec<u64>,
        reserved: bool,
    },
    /// A sub-group's read (`Reading`) or write-behind (`Writing`) with `serial`; the
    /// tickets queued so far; `submitted` once the call went through every tensor.
    Io {
        call: &'static str,
        index: u32,
        write: bool,
        serial: u64,
        queued: Vec<(usize, Ticket)>,
        failed: Option<Error>,
        submitted: bool,
    },
    /// The sub-group `next_ready` took (`Reading`, taken) and waits for; `outcome` once
    /// its reads are waited for and checked.
    Take {
        index: u32,
        serial: u64,
        tickets: Vec<Ticket>,
        outcome: Option<Result<()>>,
    },
    /// A ring region taken for a gradient fragment; `write` once its write is queued.
    Fragment { region: u64, write: Option<GradWrite> },
    /// Gradient writes taken out of the list in flight to be waited for; `results` once
    /// they are.
    Settling {
        call: &'static str,
        taken: Vec<GradWrite>,
        results: Option<Vec<Result<Option<u32>>>>,
    },
    /// A call reading an out sub-group's region (`swap_out_params`).
    Reader { index: u32 },
}

impl Settle for Claimed {
    /// A `Take` left without an outcome waits for its reads: skipping the sub-group frees
    /// its region, which the kernel must no longer be writing.
    fn settle(&mut self) {
        if let Claimed::Take {
            tickets,
            outcome: None,
            ..
        } = self
        {
            for t in tickets.iter() {
                let _ = t.wait();
            }
        }
    }
}

impl State {
    /// Runs one transition, marked as changing while it runs: a panic inside leaves the
    /// bookkeeping torn, and the handle breaks. (Tests may inject a panic here,
    /// `<rank folder>|change`: the middle of a transition.)
    pub(crate) fn change<R>(&mut self, f: impl FnOnce(&mut State) -> R) -> R {
        self.changing = true;
        crate::sys::fault::point(|| format!("{}|change", self.tag));
        let r = f(self);
        self.changing = false;
        r
    }

    /// A step of a call, where a test may inject a panic: `<rank folder>|<call>:<step>`.
    pub(crate) fn point(&self, call: &str, step: &str) {
        crate::sys::fault::point(|| format!("{}|{call}:{step}", self.tag));
    }

    /// The skip of sub-group `j`, whose read failed or was interrupted (its reads have
    /// finished): its region freed (or kept, when it holds unsaved data), Done for this
    /// step, the error recorded. Part of a transition.
    pub(crate) fn skip_read(&mut self, j: u32, e: Error) {
        let State {
            groups, arena, step, ..
        } = self;
        if let Some(g) = groups.get_mut(&j) {
            if let Some(region) = g.phase.region() {
                if g.unsaved() {
                    g.phase = Phase::Unsaved { region };
                } else {
                    arena.free(region);
                    g.phase = Phase::Done;
                }
            }
        }
        if let Some(s) = step.as_mut() {
            s.errors.push(e);
        }
    }
}

fn interrupted(index: u32, what: &str) -> Error {
    Error::new(
        Status::Panic,
        format!("sub-group {index}: a panic interrupted the submission of its {what}"),
    )
}

impl Ledger for State {
    type Entry = Claimed;

    fn torn(&self) -> bool {
        self.changing
    }

    fn resolve(&mut self, entry: &mut Claimed) {
        match entry {
            Claimed::Register {
                index,
                keys,
                reserved,
            } => {
                self.point("register", "record");
                let index = *index;
                if !matches!(
                    self.groups.get(&index).map(|g| &g.phase),
                    Some(Phase::Registering)
                ) {
                    return;
                }
                let keep = *reserved;
                let keys = std::mem::take(keys);
                self.change(|st| {
                    if keep {
                        if let Some(g) = st.groups.get_mut(&index) {
                            g.phase = Phase::Idle;
                        }
                    } else {
                        st.groups.remove(&index);
                        // The store forgets their space at the next register or purge.
                        st.orphans.extend(keys);
                    }
                })
            }
            Claimed::Io {
                call,
                index,
                write,
                serial,
                queued,
                failed,
                submitted,
            } => {
                self.point(call, "record");
                let (index, write, serial) = (*index, *write, *serial);
                let mine = self.groups.get(&index).is_some_and(|g| match &g.phase {
                    Phase::Reading { io, .. } => !write && io.serial == serial && !io.recorded,
                    Phase::Writing { io, .. } => write && io.serial == serial && !io.recorded,
                    _ => false,
                });
                if !mine {
                    return;
                }
                if write && !*submitted && queued.is_empty() {
                    // Nothing was queued: the sub-group is the caller's again.
                    return self.change(|st| {
                        let g = st.groups.get_mut(&index).expect("looked up above");
                        let region = g.phase.region().expect("a write holds its region");
                        g.phase = Phase::Out { region, users: 0 };
                    });
                }
                if !*submitted {
                    failed.get_or_insert_with(|| {
                        interrupted(index, if write { "write-behind" } else { "read" })
                    });
                }
                let io = Tickets {
                    serial,
                    queued: std::mem::take(queued),
                    failed: failed.take(),
                    recorded: true,
                };
                self.change(|st| {
                    let g = st.groups.get_mut(&index).expect("looked up above");
                    if let Phase::Reading { io: slot, .. } | Phase::Writing { io: slot, .. } = &mut g.phase {
                        *slot = io;
                    }
                })
            }
            Claimed::Take {
                index,
                serial,
                outcome,
                ..
            } => {
                self.point("next_ready", "record");
                let (index, serial) = (*index, *serial);
                let Some(region) = self.groups.get(&index).and_then(|g| match &g.phase {
                    Phase::Reading {
                        region,
                        io,
                        taken: true,
                    } if io.serial == serial => Some(*region),
                    _ => None,
                }) else {
                    return;
                };
                match outcome.take() {
                    // Handed out only to a call that returns it: one that unwinds would
                    // leave the sub-group out with nobody holding it.
                    Some(Ok(())) if !std::thread::panicking() => self.change(|st| {
                        let g = st.groups.get_mut(&index).expect("looked up above");
                        g.phase = Phase::Out { region, users: 0 };
                    }),
                    Some(Err(e)) => self.change(|st| st.skip_read(index, e)),
                    Some(Ok(())) | None => self.change(|st| {
                        st.skip_read(
                            index,
                            Error::new(
                                Status::Panic,
                                format!(
                                    "sub-group {index}: a panic interrupted next_ready while it took the sub-group; it is skipped this step and its files are unchanged"
                                ),
                            ),
                        )
                    }),
                }
            }
            Claimed::Fragment { region, write } => {
                self.point("swap_out_gradients", "record");
                let region = *region;
                let write = write.take();
                self.change(|st| match write {
                    Some(w) => {
                        st.grads.push(w);
                        st.note_use();
                    }
                    None => {
                        st.arena.free(region);
                    }
                })
            }
            Claimed::Settling { call, taken, results } => {
                self.point(call, "record");
                let taken = std::mem::take(taken);
                let results = results.take();
                self.change(|st| {
                    st.grads_settling -= 1;
                    match results {
                        Some(results) => st.record_gradients(taken, results),
                        None => st.grads.extend(taken),
                    }
                })
            }
            Claimed::Reader { index } => {
                self.point("swap_out_params", "record");
                let index = *index;
                self.change(|st| {
                    if let Some(Phase::Out { users, .. }) = st.groups.get_mut(&index).map(|g| &mut g.phase) {
                        *users = users.saturating_sub(1);
                    }
                })
            }
        }
    }
}

impl State {
    /// Records finished gradient writes: regions freed, checksums of the fragments, and
    /// the failures (a failed fragment makes its tensor unreadable until written again).
    /// Part of a transition.
    pub(crate) fn record_gradients(&mut self, taken: Vec<GradWrite>, results: Vec<Result<Option<u32>>>) {
        let State {
            groups,
            arena,
            grad_errors,
            ..
        } = self;
        for (w, r) in taken.into_iter().zip(results) {
            arena.free(w.region);
            let Some(t) = groups.get_mut(&w.index).and_then(|g| g.tensors.get_mut(w.tensor)) else {
                continue;
            };
            let end = w.offset + w.numel;
            match r {
                Ok(crc) => {
                    // A fragment written in full heals an earlier failed one it covers.
                    t.bad.retain(|&o, &mut n| !(w.offset <= o && o + n <= end));
                    let mut frags = match std::mem::take(&mut t.sum) {
                        Sum::Fragments(f) => f,
                        _ => Default::default(),
                    };
                    super::gradients::cover(&mut frags, w.offset, w.numel, crc);
                    t.sum = Sum::Fragments(frags);
                }
                Err(e) => {
                    t.bad.insert(w.offset, w.numel);
                    grad_errors.push(e.context(format!(
                        "sub-group {}, tensor \"{}\": gradient fragment of {} elements at element offset {} (write it again)",
                        w.index, t.spec.name, w.numel, w.offset
                    )));
                }
            }
            t.valid = t.bad.is_empty();
        }
    }
}
