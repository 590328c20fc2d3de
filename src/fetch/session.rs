//! The client side of an incremental fetch session (KIP-227) with one
//! broker: what the broker's session holds, and what the next request must
//! say so that the broker fetches exactly the partitions we want from the
//! positions we want.
//!
//! A session starts with a *full* request (epoch 0) that lists every
//! partition; the broker answers with a session id and remembers each
//! partition's fetch position. Later requests are *incremental*: they name
//! the session and the next epoch, list only partitions that are new or
//! whose position changed (every partition that returned records, since
//! the broker does not move a session's position by itself), and list
//! partitions to drop as *forgotten*. The broker then answers only for
//! partitions with something new. With hundreds of idle partitions, a
//! steady-state request is a few dozen bytes instead of one entry per
//! partition.
//!
//! Pure bookkeeping, owned by the fetch pool's task (one per broker); no
//! I/O and no locks.

use std::collections::HashMap;

use crate::TopicPartition;

/// The epoch of a request that starts a new session (closing the one it
/// names, if any).
const INITIAL_EPOCH: i32 = 0;

/// Where to fetch one partition from, as a request states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// The next offset to fetch.
    pub offset: i64,
    /// The leader epoch we believe current (KIP-320), or -1.
    pub leader_epoch: i32,
    /// Most bytes for this partition in one answer.
    pub max_bytes: i32,
}

/// What one fetch request says about the session and its partitions.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Session to use (0: none).
    pub session_id: i32,
    /// Epoch of this request (0: full request, starting a session).
    pub epoch: i32,
    /// Partitions listed in the request, with their positions.
    pub listed: Vec<(TopicPartition, Position)>,
    /// Partitions the session drops (incremental requests only).
    pub forgotten: Vec<TopicPartition>,
    /// Every partition this request fetches, listed or held by the
    /// session: the positions the answer's records start from.
    pub wanted: HashMap<TopicPartition, Position>,
}

impl Plan {
    /// Whether the request lists only what changed.
    pub(crate) fn incremental(&self) -> bool {
        self.epoch != INITIAL_EPOCH
    }
}

/// The session with one broker (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct FetchSession {
    /// The broker's session id; 0 while there is none.
    id: i32,
    /// Epoch of the next request; 0 while there is no session.
    epoch: i32,
    /// What the broker's session holds: each partition's position as last
    /// sent. Meaningful only while `id != 0`.
    held: HashMap<TopicPartition, Position>,
}

impl FetchSession {
    /// The request that fetches exactly `wanted`.
    pub(crate) fn plan(&self, wanted: HashMap<TopicPartition, Position>) -> Plan {
        if self.id == 0 || self.epoch == INITIAL_EPOCH {
            // Full request: a new session (closing the old one if we still
            // name it), every wanted partition listed.
            let mut listed: Vec<_> = wanted.iter().map(|(tp, p)| (tp.clone(), *p)).collect();
            listed.sort_by(|a, b| a.0.cmp(&b.0));
            return Plan {
                session_id: self.id,
                epoch: INITIAL_EPOCH,
                listed,
                forgotten: Vec::new(),
                wanted,
            };
        }
        let mut listed: Vec<_> = wanted
            .iter()
            .filter(|(tp, p)| self.held.get(*tp) != Some(*p))
            .map(|(tp, p)| (tp.clone(), *p))
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut forgotten: Vec<_> = self
            .held
            .keys()
            .filter(|tp| !wanted.contains_key(*tp))
            .cloned()
            .collect();
        forgotten.sort();
        Plan {
            session_id: self.id,
            epoch: self.epoch,
            listed,
            forgotten,
            wanted,
        }
    }

    /// The broker answered `plan`'s request without a session error;
    /// `session_id` is the id its answer carried (0: it keeps no session
    /// for us, so every request stays full).
    pub(crate) fn answered(&mut self, plan: Plan, session_id: i32) {
        if session_id == 0 {
            *self = Self::default();
            return;
        }
        self.id = session_id;
        self.epoch = next_epoch(plan.epoch);
        self.held = plan.wanted;
    }

    /// The request failed (connection lost, timeout) and the broker may or
    /// may not have taken it: the next request is full and replaces the
    /// session (whose id it names, so the broker frees it).
    pub(crate) fn failed(&mut self) {
        self.epoch = INITIAL_EPOCH;
        self.held.clear();
    }

    /// The broker no longer knows the session, or expected another epoch
    /// (`FETCH_SESSION_ID_NOT_FOUND`, `INVALID_FETCH_SESSION_EPOCH`): start
    /// a new one.
    pub(crate) fn lost(&mut self) {
        *self = Self::default();
    }

    /// Whether the broker holds a session for us.
    #[cfg(test)]
    pub(crate) fn established(&self) -> bool {
        self.id != 0 && self.epoch != INITIAL_EPOCH
    }
}

/// The epoch after `epoch`; wraps to 1, since 0 starts a new session and
/// -1 closes one.
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn at(offset: i64) -> Position {
        Position {
            offset,
            leader_epoch: 3,
            max_bytes: 1024,
        }
    }

    fn wanted(entries: &[(i32, i64)]) -> HashMap<TopicPartition, Position> {
        entries.iter().map(|(p, o)| (tp(*p), at(*o))).collect()
    }

    fn listed(plan: &Plan) -> Vec<(i32, i64)> {
        plan.listed
            .iter()
            .map(|(tp, p)| (tp.partition, p.offset))
            .collect()
    }

    #[test]
    fn a_session_lists_only_what_changed_and_forgets_what_is_gone() {
        let mut s = FetchSession::default();
        let first = s.plan(wanted(&[(0, 10), (1, 20), (2, 30)]));
        assert!(!first.incremental());
        assert_eq!(first.session_id, 0);
        assert_eq!(listed(&first), vec![(0, 10), (1, 20), (2, 30)]);
        s.answered(first, 77);
        assert!(s.established());

        // Nothing changed: an empty incremental request in the session.
        let idle = s.plan(wanted(&[(0, 10), (1, 20), (2, 30)]));
        assert!(idle.incremental());
        assert_eq!((idle.session_id, idle.epoch), (77, 1));
        assert!(idle.listed.is_empty() && idle.forgotten.is_empty());
        s.answered(idle, 77);

        // Partition 1 got records, 2 is held back, 3 is new.
        let next = s.plan(wanted(&[(0, 10), (1, 25), (3, 0)]));
        assert_eq!(next.epoch, 2);
        assert_eq!(listed(&next), vec![(1, 25), (3, 0)]);
        assert_eq!(next.forgotten, vec![tp(2)]);
        s.answered(next, 77);

        // Partition 2 comes back at its old position: listed again.
        let back = s.plan(wanted(&[(0, 10), (1, 25), (2, 30), (3, 0)]));
        assert_eq!(listed(&back), vec![(2, 30)]);
    }

    #[test]
    fn a_new_leader_epoch_is_a_change() {
        let mut s = FetchSession::default();
        let first = s.plan(wanted(&[(0, 10)]));
        s.answered(first, 5);
        let mut w = wanted(&[(0, 10)]);
        w.get_mut(&tp(0)).expect("present").leader_epoch = 4;
        assert_eq!(s.plan(w).listed.len(), 1);
    }

    #[test]
    fn a_failed_request_replaces_the_session_and_a_lost_one_starts_over() {
        let mut s = FetchSession::default();
        let first = s.plan(wanted(&[(0, 10), (1, 20)]));
        s.answered(first, 9);
        s.failed();
        let full = s.plan(wanted(&[(0, 10), (1, 20)]));
        // Full, and naming the old session so the broker frees it.
        assert!(!full.incremental());
        assert_eq!(full.session_id, 9);
        assert_eq!(full.listed.len(), 2);
        s.answered(full, 10);
        assert!(s.established());

        s.lost();
        let fresh = s.plan(wanted(&[(0, 10)]));
        assert_eq!((fresh.session_id, fresh.epoch), (0, 0));
    }

    #[test]
    fn a_broker_without_room_for_sessions_gets_full_requests() {
        let mut s = FetchSession::default();
        let first = s.plan(wanted(&[(0, 10)]));
        s.answered(first, 0);
        let again = s.plan(wanted(&[(0, 12)]));
        assert!(!again.incremental());
        assert_eq!(again.session_id, 0);
    }

    #[test]
    fn epochs_wrap_to_one() {
        assert_eq!(next_epoch(i32::MAX), 1);
        assert_eq!(next_epoch(1), 2);
    }
}
