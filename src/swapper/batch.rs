//! The one validation of a batch of param ids, and the one way a batch reports the
//! params it could not handle.
//!
//! A call checks its whole batch before it changes anything (no id twice, every id
//! known unless the call says otherwise, and the call's own rule for each param), so a
//! bad batch leaves every param as it was.

use std::collections::HashSet;

use crate::status::{Error, Result, Status};

use super::param::{Io, ParamStatus};
use super::state::{Param, State};

/// What a batch does with an id the swapper does not know.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// `NotFound`.
    Refuse,
    /// Nothing (DeepSpeed's release of a param without a buffer).
    Skip,
}

/// Checks a batch: no id twice, unknown ids as `unknown` says, and `rule` for each
/// known param. The first failure is returned.
pub(crate) fn check(
    st: &State,
    ids: &[u64],
    unknown: Unknown,
    mut rule: impl FnMut(usize, u64, &Param) -> Result<()>,
) -> Result<()> {
    let mut seen = HashSet::with_capacity(ids.len());
    if let Some(id) = ids.iter().find(|&&id| !seen.insert(id)) {
        return Err(Error::invalid(format!("param {id} appears twice in the batch")));
    }
    for (k, &id) in ids.iter().enumerate() {
        match st.param(id) {
            Some(p) => rule(k, id, p)?,
            None if unknown == Unknown::Skip => {}
            None => return Err(not_known(id)),
        }
    }
    Ok(())
}

/// `NotFound` for an id the swapper does not know.
pub(crate) fn not_known(id: u64) -> Error {
    Error::new(
        Status::NotFound,
        format!("param {id} is not known to this swapper"),
    )
}

/// Refuses a param another call is doing I/O on (or submitting I/O for).
pub(crate) fn idle(id: u64, p: &Param, what: &str) -> Result<()> {
    match p.io() {
        None => Ok(()),
        Some(Io::Write(_)) => Err(Error::bad_state(format!(
            "a write of param {id} is in flight; call swapper_wait_writes before {what}"
        ))),
        Some(Io::Read(_)) => Err(Error::bad_state(format!(
            "param {id} is INFLIGHT; call swapper_wait_reads before {what}"
        ))),
        Some(Io::Submitting) => Err(Error::bad_state(format!(
            "another call is submitting I/O for param {id}; wait for it before {what}"
        ))),
    }
}

/// The rule of a swap-out: AVAILABLE with a buffer, no I/O.
pub(crate) fn swappable_out(id: u64, p: &Param) -> Result<()> {
    if p.status() != ParamStatus::Available || p.slot().is_none() {
        return Err(Error::bad_state(format!(
            "param {id} is {}: only an AVAILABLE param with a buffer can be swapped out",
            p.status().name()
        )));
    }
    idle(id, p, "swapping it out again")
}

/// The rule of a swap-in: NOT_AVAILABLE, no I/O, a complete copy on disk.
pub(crate) fn swappable_in(id: u64, p: &Param) -> Result<u64> {
    idle(id, p, "swapping it in")?;
    if p.status() != ParamStatus::NotAvailable {
        return Err(Error::bad_state(format!(
            "param {id} is {}: only a NOT_AVAILABLE param can be swapped in",
            p.status().name()
        )));
    }
    p.on_disk().ok_or_else(|| {
        Error::bad_state(format!(
            "param {id} has no complete copy on disk (never swapped out, or its last swap-out failed)"
        ))
    })
}

/// The error of a batch some of whose params could not be queued: it names every one of
/// them (they are as they were before the call, `left_as` says how) and gives the
/// first failure in full; the params not named are queued.
pub(crate) fn not_queued(total: usize, failed: Vec<(u64, Error)>, left_as: &str) -> Option<Error> {
    let (first_id, first) = failed.first()?;
    if total == 1 {
        return Some(
            first
                .clone()
                .context(format!("param {first_id} was not queued; it {left_as}")),
        );
    }
    let ids: Vec<String> = failed.iter().map(|(id, _)| id.to_string()).collect();
    let others = total - failed.len();
    Some(Error::new(
        first.status(),
        format!(
            "{} of {total} params were not queued and are as they were ({left_as}): ids [{}]; the other {others} are queued. First failure: {}",
            failed.len(),
            ids.join(", "),
            first.message()
        ),
    ))
}

/// The errors of the params a batch could not queue (or finish), as one error. The
/// params not named were handled.
pub(crate) fn combine(errors: Vec<Error>) -> Result<()> {
    crate::status::combine(errors, "params")
}
