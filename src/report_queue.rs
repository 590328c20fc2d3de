//! A bounded queue of reported problems read by one stream: the core of
//! the group consumer's error stream and the service's.
//!
//! Writers never wait and memory never grows with an unread stream: when
//! [`CAPACITY`] problems are queued the oldest is dropped and counted.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::Notify;

/// Most problems kept unread.
pub(crate) const CAPACITY: usize = 256;

#[derive(Debug)]
struct Queue<T> {
    /// Reported problems not yet read, oldest first; at most [`CAPACITY`].
    items: VecDeque<T>,
    /// Problems dropped because nobody read them in time.
    dropped: u64,
    /// No more problems will come; the stream ends once `items` is empty.
    closed: bool,
}

#[derive(Debug)]
struct Shared<T> {
    /// Written by every [`ReportQueue`] clone, read by the [`Reports`];
    /// guarded by its own mutex, never held across an await.
    queue: Mutex<Queue<T>>,
    /// Wakes the reader; `notify_one` keeps a permit, so no wake-up is lost.
    ready: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writing side; clones write to the same queue.
#[derive(Debug)]
pub(crate) struct ReportQueue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ReportQueue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Default for ReportQueue<T> {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    items: VecDeque::new(),
                    dropped: 0,
                    closed: false,
                }),
                ready: Notify::new(),
            }),
        }
    }
}

impl<T> ReportQueue<T> {
    /// Queue a problem; when the queue is full the oldest one is dropped.
    /// Ignored once the queue is closed.
    pub(crate) fn push(&self, problem: T) {
        {
            let mut q = self.shared.lock();
            if q.closed {
                return;
            }
            if q.items.len() >= CAPACITY {
                q.items.pop_front();
                q.dropped += 1;
            }
            q.items.push_back(problem);
        }
        self.shared.ready.notify_one();
    }

    /// End the stream after what is queued.
    pub(crate) fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }

    /// The reading side.
    pub(crate) fn reader(&self) -> Reports<T> {
        Reports {
            shared: Arc::clone(&self.shared),
            waiting: None,
        }
    }
}

/// The reading side: a [`Stream`] of the queued problems that ends once the
/// queue is closed and empty.
pub(crate) struct Reports<T> {
    shared: Arc<Shared<T>>,
    /// A pending wait for the next report (for the `Stream` impl).
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<T> Reports<T> {
    /// The next problem if one is queued, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        self.shared.lock().items.pop_front()
    }

    /// How many problems were dropped unread.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Debug output for the public wrapper named `name`.
    pub(crate) fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.shared.lock();
        f.debug_struct(name)
            .field("queued", &q.items.len())
            .field("dropped", &q.dropped)
            .field("closed", &q.closed)
            .finish()
    }
}

impl<T: Send + 'static> Stream for Reports<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        loop {
            {
                let mut q = this.shared.lock();
                if let Some(item) = q.items.pop_front() {
                    this.waiting = None;
                    return Poll::Ready(Some(item));
                }
                if q.closed {
                    return Poll::Ready(None);
                }
            }
            let shared = Arc::clone(&this.shared);
            let wait = this
                .waiting
                .get_or_insert_with(|| Box::pin(async move { shared.ready.notified().await }));
            match wait.as_mut().poll(cx) {
                Poll::Ready(()) => this.waiting = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
