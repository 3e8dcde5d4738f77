//! The state the watcher tasks write and [`KubeSource::changed`](super::KubeSource::changed)
//! reads: the objects (the last good version of each), the problems not yet reported, and
//! the watch counters. Writers flag what an update must report and wake the reader.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use super::kinds::WatchedKind;
use super::SourceUpdate;
use crate::model::ClusterState;

#[derive(Default)]
pub(super) struct Store {
    inner: Mutex<Inner>,
    /// Woken whenever something becomes pending.
    wake: Notify,
}

#[derive(Default)]
struct Inner {
    state: ClusterState,
    problems: Vec<String>,
    /// Kinds watched: each must complete its initial list before the first update.
    watched: BTreeSet<&'static str>,
    /// Kinds whose initial list has completed.
    synced: BTreeSet<&'static str>,
    watch_restarts: u64,
    watch_errors: u64,
    /// Something happened that the next update must report.
    pending: Option<Pending>,
}

/// When the changes an update will report happened. Kept here, not in the reader, so that
/// coalescing survives a cancelled `changed` call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub first: Instant,
    pub last: Instant,
}

impl Store {
    /// `K` is watched: no update before its initial list completed.
    pub(super) fn expect<K: WatchedKind>(&self) {
        self.lock().watched.insert(K::KIND);
    }

    /// Resolves when something may have become pending since the last call (spuriously too:
    /// check [`Store::due`]).
    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Whether an update is due (something is pending and every initial list has
    /// completed), and when its changes happened. Stays due until [`Store::take_update`].
    pub(super) fn due(&self) -> Option<Pending> {
        let inner = self.lock();
        inner.pending.filter(|_| inner.synced == inner.watched)
    }

    /// The current state and what happened since the last update.
    pub(super) fn take_update(&self) -> SourceUpdate {
        let mut inner = self.lock();
        inner.pending = None;
        SourceUpdate {
            state: inner.state.clone(),
            problems: std::mem::take(&mut inner.problems),
            watch_restarts: inner.watch_restarts,
            watch_errors: inner.watch_errors,
        }
    }

    /// Store `obj` (added, modified, or listed). An object that fails to parse or validate
    /// leaves its last good version, if any, in place. Returns the object's key when it has
    /// one, so that a relist knows it still exists.
    pub(super) fn apply<K: WatchedKind>(&self, obj: DynamicObject) -> Option<K::Key> {
        let key = match K::key(&obj.metadata) {
            Ok(key) => key,
            Err(err) => {
                self.problem(format!("{err}; ignored"));
                return None;
            }
        };
        let stored = obj
            .try_parse::<K>()
            .map_err(|err| format!("{} {key}: not a valid {0}: {err}", K::KIND))
            .and_then(|typed| typed.into_stored().map_err(|err| err.to_string()));
        match stored {
            Ok(stored) => self.modify(|inner| {
                let objects = K::objects(&mut inner.state);
                if objects.get(&key).is_some_and(|old| **old == stored) {
                    return false;
                }
                objects.insert(key.clone(), Arc::new(stored));
                true
            }),
            Err(problem) => {
                let kept = K::objects(&mut self.lock().state).contains_key(&key);
                let outcome = if kept {
                    "keeping its last good version"
                } else {
                    "ignored"
                };
                self.problem(format!("{problem}; {outcome}"));
            }
        }
        Some(key)
    }

    pub(super) fn delete<K: WatchedKind>(&self, meta: &ObjectMeta) {
        // The API server only deletes objects it has: one without a key was never stored.
        if let Ok(key) = K::key(meta) {
            self.modify(|inner| K::objects(&mut inner.state).remove(&key).is_some());
        }
    }

    /// A (re)list of `K` completed and listed `seen`: whatever else is stored was deleted
    /// meanwhile. The first completed list makes the kind synced.
    pub(super) fn finish_list<K: WatchedKind>(&self, seen: &BTreeSet<K::Key>) {
        self.modify(|inner| {
            K::objects(&mut inner.state).retain(|key, _| seen.contains(key));
            inner.synced.insert(K::KIND);
            // Always worth an update: the first list may complete the initial state, and a
            // relist moved the restart count even when it changed no object.
            true
        });
    }

    pub(super) fn record_restart(&self) {
        self.lock().watch_restarts += 1;
    }

    pub(super) fn record_error(&self) {
        self.lock().watch_errors += 1;
    }

    fn problem(&self, problem: String) {
        warn!("{problem}");
        self.modify(|inner| {
            inner.problems.push(problem);
            true
        });
    }

    /// Run `f` on the state; when it returns true, flag an update and wake the reader.
    fn modify(&self, f: impl FnOnce(&mut Inner) -> bool) {
        let changed = {
            let mut inner = self.lock();
            let changed = f(&mut inner);
            if changed {
                let now = Instant::now();
                let first = inner.pending.map_or(now, |p| p.first);
                inner.pending = Some(Pending { first, last: now });
            }
            changed
        };
        if changed {
            self.wake.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking watcher task ends the source (see `KubeSource::changed`); the data it
        // left is still the best there is until then.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
