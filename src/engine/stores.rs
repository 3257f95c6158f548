//! The stores a policy file defines, connected lazily (a pass over file-store keys never builds
//! an AWS client), once, and retried on the next use when connecting failed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::OnceCell;

use super::failure::KeyFailure;
use crate::config::StoreSettings;
use crate::metrics::Stage;
use crate::store::{self, SecretStore};

struct Slot {
    settings: StoreSettings,
    cell: OnceCell<Arc<dyn SecretStore>>,
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
        slot.cell
            .get_or_try_init(|| store::open(&slot.settings))
            .await
            .cloned()
            .map_err(|e| KeyFailure::store_in(Stage::Preflight, format!("store {name:?}: "), e))
    }
}
