//! The stores a policy file defines, connected lazily (a pass over file-store keys never builds
//! an AWS client), once, and retried on the next use when connecting failed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::failure::KeyFailure;
use crate::config::{KeyPolicy, StoreSettings};
use crate::metrics::Stage;
use crate::store::{self, SecretStore};

struct Slot {
    settings: StoreSettings,
    cell: OnceCell<Arc<dyn SecretStore>>,
    /// The key paths a pass expects to look at, held until the store is connected.
    expected: Mutex<Option<Vec<String>>>,
}

pub struct StoreRegistry {
    slots: BTreeMap<String, Slot>,
}

impl StoreRegistry {
    pub fn new(stores: &BTreeMap<String, StoreSettings>) -> StoreRegistry {
        let slots = stores
            .iter()
            .map(|(name, settings)| {
                let slot = Slot {
                    settings: settings.clone(),
                    cell: OnceCell::new(),
                    expected: Mutex::new(None),
                };
                (name.clone(), slot)
            })
            .collect();
        StoreRegistry { slots }
    }

    /// The store named `name`, connecting it on first use.
    pub async fn get(&self, name: &str) -> Result<Arc<dyn SecretStore>, KeyFailure> {
        let slot = self.slots.get(name).ok_or_else(|| {
            KeyFailure::state(Stage::Preflight, format!("store {name:?} is not defined"))
        })?;
        let store = slot
            .cell
            .get_or_try_init(|| store::open(&slot.settings))
            .await
            .cloned()
            .map_err(|e| KeyFailure::store_in(Stage::Preflight, format!("store {name:?}: "), e))?;
        if let Some(paths) = slot.expected.lock().ok().and_then(|mut e| e.take()) {
            store.expect_paths(paths);
        }
        Ok(store)
    }

    /// Tells each store which of `keys`' paths a pass is about to look at, in order
    /// (`SecretStore::expect_paths`): now where it is connected, else when it connects. Connects
    /// nothing.
    pub fn expect(&self, keys: &[KeyPolicy]) {
        let mut by_store: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for key in keys {
            by_store
                .entry(key.store.as_str())
                .or_default()
                .push(key.path.clone());
        }
        for (name, paths) in by_store {
            let Some(slot) = self.slots.get(name) else {
                continue;
            };
            match slot.cell.get() {
                Some(store) => store.expect_paths(paths),
                None => {
                    if let Ok(mut expected) = slot.expected.lock() {
                        *expected = Some(paths);
                    }
                }
            }
        }
    }
}
