//! `--dry-run`: a store that reads through to the real one and turns every write into a no-op,
//! so the rotation code has no `if dry_run` branches.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Payload, RotationRecord, SecretStore, StoreError, StoreSnapshot};
use crate::secret::SecretString;

pub struct DryRunStore {
    inner: Arc<dyn SecretStore>,
}

impl DryRunStore {
    pub fn new(inner: Arc<dyn SecretStore>) -> Self {
        DryRunStore { inner }
    }
}

#[async_trait]
impl SecretStore for DryRunStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn inspect(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        self.inner.inspect(path).await
    }
    async fn preflight(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        self.inner.preflight(path).await
    }
    async fn read_current(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        self.inner.read_current(path).await
    }
    async fn read_previous(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        self.inner.read_previous(path).await
    }
    async fn stage(
        &self,
        path: &str,
        _payload: &Payload,
        _record: &RotationRecord,
        _expected: &StoreSnapshot,
        _token: &str,
    ) -> Result<(), StoreError> {
        tracing::info!(
            store = self.kind(),
            path,
            "dry run: would write the new value"
        );
        Ok(())
    }
    async fn read_staged(
        &self,
        _path: &str,
        _token: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        Ok(None)
    }
    async fn promote(
        &self,
        path: &str,
        _token: &str,
        _expected: &StoreSnapshot,
    ) -> Result<(), StoreError> {
        tracing::info!(
            store = self.kind(),
            path,
            "dry run: would promote the new value"
        );
        Ok(())
    }
    async fn discard_staged(&self, path: &str, _token: &str) -> Result<(), StoreError> {
        tracing::info!(
            store = self.kind(),
            path,
            "dry run: would discard a staged value"
        );
        Ok(())
    }
    async fn set_record(&self, path: &str, _record: &RotationRecord) -> Result<(), StoreError> {
        tracing::info!(
            store = self.kind(),
            path,
            "dry run: would update the rotation record"
        );
        Ok(())
    }
    async fn retire_previous(&self, path: &str) -> Result<(), StoreError> {
        tracing::info!(
            store = self.kind(),
            path,
            "dry run: would remove the previous value"
        );
        Ok(())
    }
}
