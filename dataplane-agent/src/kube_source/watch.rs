//! One kind's watcher task: kube-rs's `watcher` (list, then watch from the listed
//! resourceVersion, resuming after dropped connections and relisting after 410 Gone) feeding
//! the [`Store`].

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tracing::{debug, info, warn};

use super::kinds::WatchedKind;
use super::store::Store;

/// Follow `K` until the task is aborted. Errors are retried with kube-rs's default backoff
/// (0.8 s doubling to 30 s, reset after 2 minutes without errors); the stream never ends.
pub(super) async fn run<K: WatchedKind>(client: Client, node_name: String, store: Arc<Store>) {
    // Objects arrive untyped and are parsed one by one, so that an object the typed model
    // cannot read is reported by name instead of failing the whole list.
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<K>(&()));
    let config = K::watcher_config(&node_name);
    debug!(kind = K::KIND, ?config, "starting watcher");
    let mut events = watcher(api, config).default_backoff().boxed();
    // Keys listed so far while a (re)list is in progress.
    let mut listing: Option<BTreeSet<K::Key>> = None;
    let mut listed_once = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                if listed_once {
                    info!(kind = K::KIND, "watch restarted: relisting");
                    store.record_restart();
                }
                listing = Some(BTreeSet::new());
            }
            Ok(watcher::Event::InitApply(obj)) => {
                // Stored at once: nothing is removed before the list completes.
                let key = store.apply::<K>(obj);
                if let (Some(keys), Some(key)) = (listing.as_mut(), key) {
                    keys.insert(key);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let keys = listing.take().unwrap_or_default();
                debug!(kind = K::KIND, objects = keys.len(), "list complete");
                store.finish_list::<K>(&keys);
                listed_once = true;
            }
            Ok(watcher::Event::Apply(obj)) => {
                store.apply::<K>(obj);
            }
            Ok(watcher::Event::Delete(obj)) => store.delete::<K>(&obj.metadata),
            Err(err) => {
                warn!(kind = K::KIND, "watch error (retrying with backoff): {err}");
                store.record_error();
            }
        }
    }
    // `watcher` streams are infinite; reaching this is a kube-rs bug, reported by the caller.
    warn!(kind = K::KIND, "watch stream ended");
}
