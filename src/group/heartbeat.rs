//! The heartbeat task: keeps the member's session alive on its own task,
//! so slow handlers never cost the membership (KIP-62). The session starts
//! one per generation the moment SyncGroup succeeds, keeps it through
//! assigning, revoking and the stable phase, and stops it only to send the
//! next JoinGroup (which blocks the coordinator connection on the broker
//! side until the rebalance completes, as in the Java client).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::coordinator::{GroupError, Heartbeater};

/// What the heartbeat task tells the session.
#[derive(Debug)]
pub(crate) enum Beat {
    /// The coordinator prepares a rebalance (REBALANCE_IN_PROGRESS): the
    /// member should rejoin. Sent once; heartbeats go on, since they keep
    /// the session alive while the member revokes before rejoining.
    Rebalance(crate::Error),
    /// Heartbeating stopped with this error: the coordinator is gone or
    /// unreachable for a whole session timeout (`Rediscover`), the
    /// generation or member id is no longer valid (`Lost`, `Reset`), or
    /// the member is fenced (`Fatal`).
    Failed(GroupError),
}

/// A running heartbeat task; dropping it stops the heartbeats.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// The task; aborted on drop.
    task: JoinHandle<()>,
    /// Written by the task (at most one `Rebalance` and one `Failed`), read
    /// by the session.
    events: mpsc::Receiver<Beat>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Heartbeat {
    /// Heartbeat every `interval`, after `early` extra beats (delays from
    /// the start). Retriable failures are retried until no answer came for
    /// a whole `session` timeout.
    pub(super) fn start(
        beat: Heartbeater,
        interval: Duration,
        session: Duration,
        early: &[Duration],
    ) -> Self {
        let (tx, events) = mpsc::channel(2);
        let delays: Vec<Duration> = {
            let mut d = Vec::new();
            let mut before = Duration::ZERO;
            for e in early.iter().copied().filter(|e| *e < interval) {
                d.push(e.saturating_sub(before));
                before = e;
            }
            d
        };
        let task = tokio::spawn(async move {
            let mut last_answer = Instant::now();
            let mut told_rebalance = false;
            let delays = delays.into_iter().chain(std::iter::repeat(interval));
            for delay in delays {
                tokio::time::sleep(delay).await;
                match beat.beat().await {
                    Ok(()) => last_answer = Instant::now(),
                    Err(GroupError::Rejoin(e)) => {
                        // An answer all the same: the session is alive.
                        last_answer = Instant::now();
                        if !told_rebalance {
                            told_rebalance = true;
                            let _ = tx.send(Beat::Rebalance(e)).await;
                        }
                    }
                    Err(GroupError::Retry(e)) if last_answer.elapsed() < session => {
                        tracing::debug!(error = %e, "heartbeat failed; retrying");
                    }
                    Err(GroupError::Retry(e)) => {
                        let _ = tx.send(Beat::Failed(GroupError::Rediscover(e))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Beat::Failed(e)).await;
                        return;
                    }
                }
            }
        });
        Self { task, events }
    }

    /// The next event; pending forever once the task has ended without one.
    pub(super) async fn next(&mut self) -> Beat {
        match self.events.recv().await {
            Some(beat) => beat,
            None => std::future::pending().await,
        }
    }
}
