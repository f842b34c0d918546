//! The table of running programs: what the reaper needs to log an exit and
//! give the program's slot back. Sized for memory that stays flat: one
//! compact record per program, no task or thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::admission::Lease;
use crate::os::ChildId;

/// One running program.
#[derive(Debug)]
pub struct Record {
    pub lease: Lease,
    pub peer: Option<SocketAddr>,
    pub started: Instant,
}

/// Records in a dense vector with a pid index. Reserving up front (for
/// `max_connections`) costs address space only: pages become resident as
/// records are written, so memory grows by about one record per program.
#[derive(Debug, Default)]
pub struct Children {
    records: Vec<(ChildId, Record)>,
    index: HashMap<ChildId, usize>,
    /// Who wants to know when a program ends (relays, UDP wait services).
    waiters: HashMap<ChildId, oneshot::Sender<bool>>,
}

impl Children {
    pub fn with_capacity(n: usize) -> Children {
        Children {
            records: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
            waiters: HashMap::new(),
        }
    }

    pub fn insert(&mut self, id: ChildId, record: Record) {
        if let Some(&at) = self.index.get(&id) {
            // A reused pid whose exit we somehow missed: keep the new one.
            self.records[at].1 = record;
            return;
        }
        self.index.insert(id, self.records.len());
        self.records.push((id, record));
    }

    /// Registers interest in `id`'s exit; the value says if it succeeded.
    pub fn watch(&mut self, id: ChildId) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        rx
    }

    /// Removes `id`, waking whoever waits for it.
    pub fn remove(&mut self, id: ChildId, success: bool) -> Option<Record> {
        if let Some(w) = self.waiters.remove(&id) {
            let _ = w.send(success);
        }
        let at = self.index.remove(&id)?;
        let (_, record) = self.records.swap_remove(at);
        if let Some((moved, _)) = self.records.get(at) {
            self.index.insert(*moved, at);
        }
        Some(record)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = ChildId> + '_ {
        self.records.iter().map(|(id, _)| *id)
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
                    peer: None,
                    started: Instant::now(),
                },
            );
        }
        assert_eq!(global.live(), 5);
        let mut w = c.watch(3);
        assert!(c.remove(1, true).is_some());
        assert!(c.remove(1, true).is_none());
        assert_eq!(w.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        assert!(c.remove(3, false).is_some());
        assert_eq!(w.try_recv(), Ok(false));
        let mut left: Vec<_> = c.ids().collect();
        left.sort();
        assert_eq!(left, [2, 4, 5]);
        for id in [5, 2, 4] {
            assert!(c.remove(id, true).is_some(), "{id}");
        }
        assert_eq!(c.len(), 0);
        assert_eq!(global.live(), 0);
    }
}
