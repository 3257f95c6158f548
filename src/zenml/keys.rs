//! API keys of a service account: listing, reading, creating, updating, rotating and deleting them,
//! and reading a key's id out of its value.

use base64::Engine as _;
use reqwest::Method;
use url::Url;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::transport::Call;
use super::{ApiKey, ApiKeyUpdate, KeyFilter, NewApiKey, Operation, ZenmlClient, ZenmlError, wire};
use crate::secret::{ExposeSecret, SecretString};

/// The id of the key a `ZENKEY_` value belongs to, read from the value itself (no request).
/// The value is `ZENKEY_` + base64 of `{"id": "<uuid>", "key": "<hex>"}`; the id survives rotation.
pub fn key_id_from_value(value: &SecretString) -> Option<Uuid> {
    let encoded = value.expose_secret().trim().strip_prefix("ZENKEY_")?;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .ok()?,
    );
    serde_json::from_slice::<wire::KeyValuePayload>(&decoded)
        .ok()
        .map(|p| p.id)
}

impl ZenmlClient {
    fn api_keys_url(&self, sa: Uuid, rest: &[&str]) -> Url {
        let sa = sa.to_string();
        let mut segments = vec!["service_accounts", sa.as_str(), "api_keys"];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    /// Every key of a service account matching the filter, all pages, hydrated (description,
    /// retain period, last login, last rotation).
    pub async fn list_api_keys(
        &self,
        sa: Uuid,
        filter: &KeyFilter,
    ) -> Result<Vec<ApiKey>, ZenmlError> {
        let mut query = vec![("hydrate", "true".to_owned())];
        if let Some(prefix) = &filter.name_startswith {
            query.push(("name", format!("startswith:{prefix}")));
        }
        if let Some(active) = filter.active {
            query.push(("active", active.to_string()));
        }
        let items: Vec<wire::ApiKeyResponse> = self
            .list_all(Operation::ListApiKeys, self.api_keys_url(sa, &[]), query)
            .await?;
        Ok(items.into_iter().map(|k| k.into_parts().0).collect())
    }

    /// One key, hydrated.
    pub async fn get_api_key(&self, sa: Uuid, name_or_id: &str) -> Result<ApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id]);
        let call = Call::new(Operation::GetApiKey, Method::GET, url).query("hydrate", true);
        let key: wire::ApiKeyResponse = self.call_json(call).await?;
        Ok(key.into_parts().0)
    }

    /// Creates a key and returns its value, which the server never shows again. Not retried after a
    /// lost answer: a second attempt would make a second key (or hit a name conflict).
    pub async fn create_api_key(
        &self,
        sa: Uuid,
        name: &str,
        description: &str,
    ) -> Result<NewApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[]);
        let call = Call::new(Operation::CreateApiKey, Method::POST, url)
            .json(&wire::ApiKeyCreate { name, description })?;
        let key: wire::ApiKeyResponse = self.call_json(call).await?;
        with_value(Operation::CreateApiKey, key)
    }

    pub async fn update_api_key(
        &self,
        sa: Uuid,
        name_or_id: &str,
        update: &ApiKeyUpdate,
    ) -> Result<ApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id]);
        let call = Call::new(Operation::UpdateApiKey, Method::PUT, url).json(update)?;
        let key: wire::ApiKeyResponse = self.call_json(call).await?;
        Ok(key.into_parts().0)
    }

    /// Rotates a key in place: the new value works at once, the previous one for `retain_minutes`.
    /// Sent exactly once: after a lost answer the server may have rotated, and a second rotation
    /// inside the window would cut off every consumer of the previous value.
    ///
    /// The rotate answer carries no metadata, and none is read back: the rotation sets
    /// `last_rotated` to the very timestamp it writes as `updated` (`APIKeySchema.rotate`, ZenML
    /// 0.96 and 0.98; `tests/zenml_api.rs` checks it against a GET on the real server) and the
    /// retain period to the one asked for, so the returned key has those. It leaves the
    /// description and `last_login` as they were, which the answer does not carry: they are empty
    /// here, and a caller that read the key before fills them in (`NewApiKey::as_before`).
    pub async fn rotate_api_key(
        &self,
        sa: Uuid,
        name_or_id: &str,
        retain_minutes: u32,
    ) -> Result<NewApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id, "rotate"]);
        let call =
            Call::new(Operation::RotateApiKey, Method::PUT, url).json(&wire::ApiKeyRotate {
                retain_period_minutes: retain_minutes,
            })?;
        let answer: wire::ApiKeyResponse = self.call_json(call).await?;
        let mut rotated = with_value(Operation::RotateApiKey, answer)?;
        rotated.key.last_rotated = Some(rotated.key.updated);
        rotated.key.retain_period_minutes = Some(i64::from(retain_minutes));
        Ok(rotated)
    }

    /// Deletes a key; its value and every token minted from it stop working.
    pub async fn delete_api_key(&self, sa: Uuid, name_or_id: &str) -> Result<(), ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id]);
        let call = Call::new(Operation::DeleteApiKey, Method::DELETE, url);
        self.execute(&call).await.map(drop)
    }
}

/// Splits a create/rotate answer into the key and its one-time value.
fn with_value(op: Operation, answer: wire::ApiKeyResponse) -> Result<NewApiKey, ZenmlError> {
    match answer.into_parts() {
        (key, Some(value)) => Ok(NewApiKey { key, value }),
        (_, None) => Err(ZenmlError::Decode {
            op,
            status: Some(200),
            detail: "the answer holds no key value".to_owned(),
        }),
    }
}
