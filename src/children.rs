//! The table of running programs: what the reaper needs to log an exit and
//! give the program's slot back. Sized for memory that stays flat: one
//! compact record per program, no task or thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::admission::Lease;
use crate::os::ChildId;
use crate::relay::Tally;

/// One running program: 88 bytes on 64-bit Linux, plus 4 for its pid.
#[derive(Debug)]
pub struct Record {
    /// Counts it against the limits; holds the service and the peer's IP.
    pub lease: Lease,
    pub started: Instant,
    pub peer_port: u16,
    /// Whoever watches it (the relay) logs its end, with the bytes moved.
    pub end_logged_elsewhere: bool,
    /// Bytes its relay has moved so far (`pipe` handoff).
    pub relayed: Option<Arc<Tally>>,
    /// The load balancer a PROXY header came through (boxed: most
    /// connections have none).
    pub via: Option<Box<SocketAddr>>,
}

/// What a watcher learns: how it ended, and its status if it ran.
pub type Exited = (Ended, Option<ExitStatus>);

/// How a watched program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    Failed,
    /// Its process was created but the program could not be exec'd.
    NotStarted,
}

impl Record {
    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.lease.ip(), self.peer_port)
    }
}

/// Records in a dense vector, found by a scan of a dense vector of pids
/// (4 bytes each: a few thousand fit in the cache, and an exit happens once
/// per program). Reserving up front (for `max_connections`) costs address
/// space only: pages become resident as records are written, so memory
/// grows by one record per running program and no more.
#[derive(Debug, Default)]
pub struct Children {
    pids: Vec<ChildId>,
    records: Vec<Record>,
    /// Who wants to know when a program ends (relays, UDP wait services).
    waiters: HashMap<ChildId, oneshot::Sender<Exited>>,
    /// Most programs running at once since the table was last empty.
    peak: usize,
    /// Shrunk since the peak, at a quarter of it.
    shrunk: bool,
}

/// A crowd this large is worth giving memory back after.
const SHRINK_FROM: usize = 256;

impl Children {
    pub fn with_capacity(n: usize) -> Children {
        Children {
            pids: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
            waiters: HashMap::new(),
            peak: 0,
            shrunk: false,
        }
    }

    fn position(&self, id: ChildId) -> Option<usize> {
        self.pids.iter().position(|&p| p == id)
    }

    pub fn insert(&mut self, id: ChildId, record: Record) {
        match self.position(id) {
            // A reused pid whose exit we somehow missed: keep the new one.
            Some(at) => self.records[at] = record,
            None => {
                self.pids.push(id);
                self.records.push(record);
                self.peak = self.peak.max(self.records.len());
            }
        }
    }

    /// Registers interest in `id`'s exit; `relay`: a relay carries its
    /// session, counts its bytes there and logs its end, not the reaper.
    pub fn watch(&mut self, id: ChildId, relay: Option<Arc<Tally>>) -> oneshot::Receiver<Exited> {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        if relay.is_some()
            && let Some(at) = self.position(id)
        {
            self.records[at].end_logged_elsewhere = true;
            self.records[at].relayed = relay;
        }
        rx
    }

    /// Removes `id`, waking whoever waits for it.
    pub fn remove(
        &mut self,
        id: ChildId,
        how: Ended,
        status: Option<ExitStatus>,
    ) -> Option<Record> {
        if let Some(w) = self.waiters.remove(&id) {
            let _ = w.send((how, status));
        }
        let at = self.position(id)?;
        self.pids.swap_remove(at);
        Some(self.records.swap_remove(at))
    }

    /// Once a crowd of programs has mostly ended (down to a quarter of a
    /// peak of at least [`SHRINK_FROM`]), and again once all have, gives
    /// the table's memory back: the pages its records and waiters were
    /// written to stay resident otherwise, for good. True when it shrank:
    /// the moment to return the allocator's free pages too.
    pub fn shrink_after_crowd(&mut self) -> bool {
        let live = self.records.len();
        let empty = live == 0;
        if self.peak < SHRINK_FROM || !(empty || (live <= self.peak / 4 && !self.shrunk)) {
            return false;
        }
        let keep = (live * 2).max(SHRINK_FROM / 4);
        self.pids.shrink_to(keep);
        self.records.shrink_to(keep);
        self.waiters.shrink_to(keep);
        if empty {
            self.peak = 0;
            self.shrunk = false;
        } else {
            self.shrunk = true;
        }
        true
    }

    /// The balancer `id`'s connection came through, if any.
    pub fn via(&self, id: ChildId) -> Option<SocketAddr> {
        self.position(id)
            .and_then(|at| self.records[at].via.as_deref().copied())
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = ChildId> + '_ {
        self.pids.iter().copied()
    }

    /// Every running program with its record (for `wininetd status`).
    pub fn iter(&self) -> impl Iterator<Item = (ChildId, &Record)> + '_ {
        self.pids.iter().copied().zip(&self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{Gate, Global};
    use crate::config::{Access, Limits};

    #[test]
    fn insert_remove_keeps_the_index_right_and_frees_leases() {
        let global = Global::new(100);
        let gate = Gate::new("s", global.clone(), Access::default(), Limits::default());
        let mut c = Children::with_capacity(4);
        for id in 1..=5u32 {
            let lease = gate.admit("127.0.0.1".parse().unwrap()).unwrap();
            c.insert(
                id,
                Record {
                    lease,
                    started: Instant::now(),
                    peer_port: 1000 + id as u16,
                    end_logged_elsewhere: false,
                    relayed: None,
                    via: None,
                },
            );
        }
        assert_eq!(global.live(), 5);
        let mut w = c.watch(3, Some(Arc::default()));
        assert!(c.remove(1, Ended::Succeeded, None).is_some());
        assert!(c.remove(1, Ended::Succeeded, None).is_none());
        assert_eq!(w.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        let r = c.remove(3, Ended::NotStarted, None).unwrap();
        assert!(r.end_logged_elsewhere);
        drop(r);
        assert_eq!(w.try_recv(), Ok((Ended::NotStarted, None)));
        let mut left: Vec<_> = c.ids().collect();
        left.sort();
        assert_eq!(left, [2, 4, 5]);
        for id in [5, 2, 4] {
            assert!(c.remove(id, Ended::Failed, None).is_some(), "{id}");
        }
        assert_eq!(c.len(), 0);
        assert_eq!(global.live(), 0);
    }
}

#[cfg(test)]
mod shrink {
    use super::*;
    use crate::admission::{Gate, Global};
    use crate::config::{Access, Limits};

    fn record(gate: &Arc<Gate>) -> Record {
        Record {
            lease: gate.admit("127.0.0.1".parse().unwrap()).unwrap(),
            started: Instant::now(),
            peer_port: 1,
            end_logged_elsewhere: false,
            relayed: None,
            via: None,
        }
    }

    #[test]
    fn a_crowd_s_table_shrinks_at_a_quarter_and_when_empty_and_a_small_one_never() {
        let global = Global::new(10_000);
        let gate = Gate::new("s", global.clone(), Access::default(), Limits::default());
        let mut c = Children::with_capacity(16);
        for id in 1..=100u32 {
            c.insert(id, record(&gate));
            drop(c.watch(id, None));
        }
        for id in 1..=100u32 {
            c.remove(id, Ended::Succeeded, None);
            assert!(!c.shrink_after_crowd(), "a peak of 100 is no crowd");
        }
        for id in 1..=1000u32 {
            c.insert(id, record(&gate));
            drop(c.watch(id, None));
        }
        assert!(c.records.capacity() >= 1000);
        let mut shrank_at = Vec::new();
        for id in 1..=1000u32 {
            c.remove(id, Ended::Succeeded, None);
            if c.shrink_after_crowd() {
                shrank_at.push(c.len());
                assert!(c.records.capacity() <= (c.len() * 2).max(SHRINK_FROM / 4));
                assert!(c.pids.capacity() <= (c.len() * 2).max(SHRINK_FROM / 4));
                assert!(c.waiters.capacity() <= 2 * (c.len() * 2).max(SHRINK_FROM / 4));
            }
        }
        assert_eq!(shrank_at, [250, 0]);
        assert_eq!(global.live(), 0);
    }
}

#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod size {
    /// The record stays as small as README says: memory grows by one per
    /// running program.
    #[test]
    fn a_record_is_88_bytes() {
        assert_eq!(size_of::<super::Record>(), 88);
    }
}
