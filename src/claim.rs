//! A swapper's bookkeeping lock, and the claim: the guard that makes a call's changes to
//! the bookkeeping all-or-nothing, even when the call panics.
//!
//! A swapper call that does I/O works in three steps: it *claims* what it works on under
//! the lock (so no other call touches it), *submits* or runs the I/O without the lock,
//! and *records* the outcome under the lock. A [`Claim`] is that sequence as a value: it
//! is opened holding the lock, logs one entry per thing it claims (before changing it),
//! lets the lock go for the submit step, and ends by resolving every entry under the lock
//! again: [`Ledger::resolve`] records what was submitted and undoes what was not. A claim
//! that is dropped without being ended (an early return, or a panic unwinding through the
//! call) ends itself the same way in its `Drop`, so a panic at any step of claim, submit or
//! record leaves nothing half-claimed: no param stays "being submitted", no buffer is
//! lost, no flag stays set.
//!
//! # The poison policy
//! std's poison flag says only that some thread panicked while holding the lock; it does
//! not say whether the bookkeeping is torn. We track that ourselves: a [`Ledger`] says
//! whether a change is half-done ([`Ledger::torn`]; every change of the bookkeeping runs
//! as one transition that marks it so while it runs). A panic that unwinds through the
//! lock while the bookkeeping is torn *breaks* the handle: from then on every call
//! returns `Status::Panic` with a message saying so, as the I/O engine does after a
//! worker panicked; destroying the handle still works. Any other panic leaves the
//! bookkeeping consistent (between two transitions nothing is half-done, and an unended
//! claim undoes itself), so [`Bookkeeping::lock`] clears std's poison flag and the handle
//! stays fully usable.
//!
//! Both swappers use it: the parameter swapper (`crate::swapper::state`) and the
//! optimizer-state swapper (`crate::optimizer`, its entries in `optimizer/ledger.rs`).
//!
//! # Using it from a swapper
//! Implement [`Ledger`] for the locked state: its `Entry` is what one claimed thing
//! remembers (its state before the claim, what the claim took, and what became of its
//! I/O), `resolve` turns an entry into the recorded or the undone state, and
//! [`Settle::settle`] waits, without the lock, for I/O that uses memory the call owns (a
//! destination the caller lends for the call only), so that undoing never frees memory
//! the kernel still writes. Then, in each call:
//! ```text
//! let mut claim = bookkeeping.claim()?;         // locked
//! ... check, change via transitions, push an entry per claimed thing ...
//! claim.unlock();                               // the submit step runs without the lock
//! ... submit; note each outcome in claim.entry_mut(k) ...
//! claim.end()?;                                 // record or undo every entry, under the lock
//! ```
//! Rules: a claim must not be opened, ended or dropped while the same thread holds the
//! lock in another guard (std's mutex would deadlock); entries get their I/O only after
//! [`Claim::unlock`].

use std::ops::{Deref, DerefMut};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::status::{Error, Result, Status};

/// The bookkeeping a [`Claim`] changes.
pub(crate) trait Ledger {
    /// What one claimed thing remembers.
    type Entry: Settle;

    /// Whether a transition is half-done (it panicked in the middle).
    fn torn(&self) -> bool;

    /// Ends one entry: records what was submitted, undoes what was not. It must change
    /// nothing before its last check that can fail (so a panic there leaves the entry as
    /// it was, to be resolved again), and do its changes as one transition (so a panic in
    /// them leaves the bookkeeping [`Ledger::torn`]).
    fn resolve(&mut self, entry: &mut Self::Entry);
}

/// What an entry does, without the lock, before it is resolved.
pub(crate) trait Settle {
    /// Waits for I/O under way into or from memory the call owns; nothing by default.
    fn settle(&mut self) {}
}

/// A swapper's bookkeeping behind its one mutex, with the flag that says it broke.
pub(crate) struct Bookkeeping<S> {
    state: Mutex<S>,
    broken: OnceLock<Error>,
    /// What the handle is, for the broken message ("swapper /nvme/zero_stage_3/...").
    what: String,
}

impl<S: Ledger> Bookkeeping<S> {
    /// `state` behind a new lock; `what` names the handle in messages.
    pub fn new(state: S, what: String) -> Bookkeeping<S> {
        Bookkeeping {
            state: Mutex::new(state),
            broken: OnceLock::new(),
            what,
        }
    }

    /// `Panic` once the bookkeeping broke, else Ok.
    pub fn usable(&self) -> Result<()> {
        match self.broken.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Marks the bookkeeping broken (the first reason stays).
    fn break_it(&self, why: &str) {
        let e = Error::new(
            Status::Panic,
            format!(
                "{}: {why}; its bookkeeping may be inconsistent, so every call on it now fails: destroy the handle and create a new one",
                self.what
            ),
        );
        if self.broken.set(e.clone()).is_ok() {
            crate::log!(Error, "{}", e.message());
        }
    }

    /// The std guard, whatever std's poison flag says (see the poison policy above).
    fn raw(&self) -> MutexGuard<'_, S> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let g = poisoned.into_inner();
                self.state.clear_poison();
                g
            }
        }
    }

    /// The bookkeeping, locked; `Panic` if it broke.
    pub fn lock(&self) -> Result<Held<'_, S>> {
        self.usable()?;
        let guard = self.raw();
        if guard.torn() {
            // Only reachable if a torn state escaped a Held (it breaks the handle first).
            self.break_it("a panic left a change of the bookkeeping half-done");
        }
        self.usable()?;
        Ok(Held { guard, owner: self })
    }

    /// The bookkeeping, locked for reading only, even when broken (stats and dumps of a
    /// broken handle still say what it holds; a panic while reading changes nothing).
    pub fn peek(&self) -> impl Deref<Target = S> + '_ {
        self.raw()
    }

    /// Opens a claim, holding the lock; `Panic` if the bookkeeping broke.
    pub fn claim(&self) -> Result<Claim<'_, S>> {
        Ok(Claim {
            owner: self,
            held: Some(self.lock()?),
            entries: Vec::new(),
            ended: false,
        })
    }
}

/// The locked bookkeeping. Dropped by a panic while a transition is half-done, it breaks
/// the handle.
pub(crate) struct Held<'a, S: Ledger> {
    guard: MutexGuard<'a, S>,
    owner: &'a Bookkeeping<S>,
}

impl<S: Ledger> Deref for Held<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.guard
    }
}

impl<S: Ledger> DerefMut for Held<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.guard
    }
}

impl<S: Ledger> Drop for Held<'_, S> {
    fn drop(&mut self) {
        // Before the std guard unlocks (fields drop after this body), so the next thread
        // to take the lock sees the handle broken.
        if self.guard.torn() {
            self.owner
                .break_it("a panic struck in the middle of a change of the bookkeeping");
        }
    }
}

/// A claim on part of the bookkeeping (see the module doc): ended by [`Claim::end`], or
/// by its drop.
pub(crate) struct Claim<'a, S: Ledger> {
    owner: &'a Bookkeeping<S>,
    /// The lock, while the claim step runs (and while ending).
    held: Option<Held<'a, S>>,
    entries: Vec<S::Entry>,
    ended: bool,
}

impl<'a, S: Ledger> Claim<'a, S> {
    /// The bookkeeping and the entries, during the claim step (while the lock is held).
    ///
    /// # Panics
    /// After [`Claim::unlock`] (a bug in the calling code; the claim still ends itself).
    pub fn parts(&mut self) -> (&mut S, &mut Vec<S::Entry>) {
        let held = self
            .held
            .as_mut()
            .expect("a claim's bookkeeping is used only during the claim step");
        (&mut **held, &mut self.entries)
    }

    /// Entry `k` (in the order they were pushed), to note the outcome of its I/O.
    pub fn entry_mut(&mut self, k: usize) -> &mut S::Entry {
        &mut self.entries[k]
    }

    /// Ends the claim step: lets the lock go (the bookkeeping is consistent: every claimed
    /// thing is marked claimed and has its entry).
    pub fn unlock(&mut self) {
        self.held = None;
    }

    /// Ends the claim: settles every entry without the lock, then resolves each under
    /// the lock (last pushed first). `Panic` if the bookkeeping broke meanwhile.
    pub fn end(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if self.held.is_none() {
            for e in &mut self.entries {
                e.settle();
            }
            match self.owner.lock() {
                Ok(held) => self.held = Some(held),
                Err(e) => {
                    // Broken meanwhile: nothing can be recorded any more.
                    self.ended = true;
                    return Err(e);
                }
            }
        }
        let held = self.held.as_mut().expect("locked above");
        if held.torn() {
            // A resolve panicked half-way (and this is the drop that followed).
            self.owner
                .break_it("a panic struck in the middle of recording a call's outcome");
            self.ended = true;
            return self.owner.usable();
        }
        while let Some(e) = self.entries.last_mut() {
            held.resolve(e);
            self.entries.pop();
        }
        self.ended = true;
        self.held = None;
        Ok(())
    }
}

impl<S: Ledger> Drop for Claim<'_, S> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Never let a second panic out of a drop that may run during unwinding.
        if catch_unwind(AssertUnwindSafe(|| self.finish())).is_err() {
            self.owner
                .break_it("a panic struck while undoing an unfinished call");
            self.ended = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A toy ledger: counters claimed by entries; `resolve` undoes or keeps them.
    #[derive(Default)]
    struct Toy {
        claimed: u32,
        kept: u32,
        torn: bool,
        /// Panic in the next resolve: before any change (true) or in the middle.
        panic_resolve: Option<bool>,
    }

    struct Item {
        keep: bool,
        settled: bool,
    }

    thread_local! {
        static SETTLED: Cell<u32> = const { Cell::new(0) };
    }

    impl Settle for Item {
        fn settle(&mut self) {
            self.settled = true;
            SETTLED.with(|s| s.set(s.get() + 1));
        }
    }

    impl Ledger for Toy {
        type Entry = Item;
        fn torn(&self) -> bool {
            self.torn
        }
        fn resolve(&mut self, e: &mut Item) {
            if self.panic_resolve == Some(true) {
                self.panic_resolve = None;
                panic!("before the change");
            }
            self.torn = true;
            if self.panic_resolve == Some(false) {
                panic!("in the middle");
            }
            self.claimed -= 1;
            if e.keep {
                self.kept += 1;
            }
            self.torn = false;
        }
    }

    fn claim_two(b: &Bookkeeping<Toy>) -> Claim<'_, Toy> {
        let mut c = b.claim().unwrap();
        let (st, entries) = c.parts();
        for keep in [true, false] {
            st.claimed += 1;
            entries.push(Item { keep, settled: false });
        }
        c
    }

    fn toy() -> Bookkeeping<Toy> {
        Bookkeeping::new(Toy::default(), "toy".into())
    }

    #[test]
    fn an_ended_claim_resolves_every_entry_after_settling_it() {
        let b = toy();
        let mut c = claim_two(&b);
        c.unlock();
        let before = SETTLED.with(|s| s.get());
        c.end().unwrap();
        assert_eq!(SETTLED.with(|s| s.get()) - before, 2);
        let st = b.lock().unwrap();
        assert_eq!((st.claimed, st.kept), (0, 1));
    }

    #[test]
    fn a_claim_dropped_by_a_panic_with_or_without_the_lock_undoes_itself() {
        for unlock in [false, true] {
            let b = toy();
            let r = catch_unwind(AssertUnwindSafe(|| {
                let mut c = claim_two(&b);
                if unlock {
                    c.unlock();
                }
                panic!("injected");
            }));
            assert!(r.is_err());
            b.usable().unwrap();
            let st = b.lock().unwrap();
            assert_eq!(st.claimed, 0, "unlock {unlock}");
        }
    }

    #[test]
    fn a_panic_before_a_resolve_changes_anything_is_retried_by_the_drop() {
        let b = toy();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut c = claim_two(&b);
            c.unlock();
            b.lock().unwrap().panic_resolve = Some(true);
            c.end()
        }));
        assert!(r.is_err());
        b.usable().unwrap();
        assert_eq!(b.lock().unwrap().claimed, 0);
    }

    #[test]
    fn a_panic_in_the_middle_of_a_change_breaks_the_handle_without_aborting() {
        let b = toy();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut c = claim_two(&b);
            c.unlock();
            b.lock().unwrap().panic_resolve = Some(false);
            c.end()
        }));
        assert!(r.is_err());
        let e = b.usable().unwrap_err();
        assert_eq!(e.status(), Status::Panic);
        assert!(e.message().contains("toy"), "{}", e.message());
        assert_eq!(b.lock().err().map(|e| e.status()), Some(Status::Panic));
        assert_eq!(b.claim().err().map(|e| e.status()), Some(Status::Panic));
        // Reading still works.
        assert!(b.peek().torn);
    }

    #[test]
    fn a_panic_under_a_plain_lock_breaks_only_if_a_change_was_half_done() {
        let b = toy();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _st = b.lock().unwrap();
            panic!("between changes");
        }));
        assert!(r.is_err());
        b.usable().unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut st = b.lock().unwrap();
            st.torn = true;
            panic!("half-way");
        }));
        assert!(r.is_err());
        assert!(b.usable().is_err());
    }
}
