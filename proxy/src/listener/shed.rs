//! Shedding idle connections when `max_clients` is reached: a new connection takes the
//! slot of the connection that has been idle longest (no request in flight: still before
//! its first request, between requests, or dripping a request head), rather than being
//! refused. A connection with a request in flight is never shed. So connections that only
//! hold a slot cannot lock out clients that use one; each of them still ends by its own
//! timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::connection::Activity;

/// Every open connection's [`Activity`], by a number of its own.
#[derive(Debug, Default)]
pub(crate) struct Shed {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Shed {
    /// Lists `activity` until the guard is dropped.
    pub(crate) fn list(self: &Arc<Self>, activity: &Arc<Activity>) -> Listed {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Arc::clone(activity));
        Listed {
            shed: Arc::clone(self),
            id,
        }
    }

    /// Picks the connection idle longest and tells it to close; false when every open
    /// connection has a request in flight (or is already being shed).
    pub(crate) fn shed_oldest_idle(&self) -> bool {
        let open = self.lock();
        open.values()
            .filter_map(|a| a.idle_from().map(|since| (since, a)))
            .min_by_key(|(since, _)| *since)
            .is_some_and(|(_, activity)| activity.shed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // A panic while holding the lock leaves the map whole (inserts and removes only).
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A listed connection; unlisted when dropped.
pub(crate) struct Listed {
    shed: Arc<Shed>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.shed.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_is_shed_and_a_busy_one_never() {
        let shed = Arc::new(Shed::default());
        let busy = Activity::new();
        let _busy_listed = shed.list(&busy);
        let _request = busy.begin();
        tokio::time::advance(Duration::from_secs(1)).await;
        let old = Activity::new();
        let _old_listed = shed.list(&old);
        tokio::time::advance(Duration::from_secs(1)).await;
        let young = Activity::new();
        let _young_listed = shed.list(&young);

        assert!(shed.shed_oldest_idle());
        tokio::time::timeout(Duration::from_secs(1), old.shed_picked())
            .await
            .expect("the oldest idle connection is told");
        assert!(shed.shed_oldest_idle(), "then the next oldest");
        tokio::time::timeout(Duration::from_secs(1), young.shed_picked())
            .await
            .expect("the younger idle connection is told");
        assert!(!shed.shed_oldest_idle(), "the busy one is never picked");
    }

    #[test]
    fn dropped_connections_are_unlisted() {
        let shed = Arc::new(Shed::default());
        let a = Activity::new();
        drop(shed.list(&a));
        assert!(shed.lock().is_empty());
    }
}
