//! What every step of a pass works with: the ZenML client, the stores (connected lazily, once)
//! and the local journal. Strategies, the store writer and the key guard take a `&Context`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::claims::ClaimRules;
use super::failure::KeyFailure;
use super::journal::Journal;
use super::stores::StoreRegistry;
use crate::config::{KeyPolicy, StoreSettings};
use crate::store::SecretStore;
use crate::zenml::{ServiceAccount, ZenmlClient, ZenmlError};

pub struct Context {
    zenml: ZenmlClient,
    zenml_url: String,
    stores: StoreRegistry,
    journal: Journal,
    claims: ClaimRules,
}

impl Context {
    pub fn new(
        zenml: ZenmlClient,
        zenml_url: &str,
        stores: &BTreeMap<String, StoreSettings>,
        journal: Journal,
        claims: ClaimRules,
    ) -> Context {
        Context {
            zenml,
            zenml_url: zenml_url.to_owned(),
            stores: StoreRegistry::new(stores),
            journal,
            claims,
        }
    }

    /// How this process plays by claims (`[coordination]`).
    pub fn claim_rules(&self) -> &ClaimRules {
        &self.claims
    }

    pub fn zenml(&self) -> &ZenmlClient {
        &self.zenml
    }

    /// The URL written beside every key (`ZENML_STORE_URL`).
    pub fn zenml_url(&self) -> &str {
        &self.zenml_url
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The store named `name`, connected on first use.
    pub async fn store(&self, name: &str) -> Result<Arc<dyn SecretStore>, KeyFailure> {
        self.stores.get(name).await
    }

    /// The keys a pass is about to look at, in order: a hint for the stores' pre-flights.
    pub fn expect(&self, keys: &[KeyPolicy]) {
        self.stores.expect(keys);
    }

    /// Every service account by name: one paged listing per pass instead of a lookup per key.
    pub async fn service_accounts(&self) -> Result<BTreeMap<String, ServiceAccount>, ZenmlError> {
        Ok(self
            .zenml
            .list_service_accounts()
            .await?
            .into_iter()
            .map(|sa| (sa.name.clone(), sa))
            .collect())
    }
}
