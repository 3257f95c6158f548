//! The JSON shapes of the ZenML 0.98 REST API (as observed on a real server) and their conversion into
//! the client's public types. Responses ignore fields they do not need, so newer servers still parse.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use super::{ApiKey, ServiceAccount, User};
use crate::secret::SecretString;

/// The page envelope of every list endpoint.
#[derive(Debug, Deserialize)]
pub(super) struct Page<T> {
    pub total_pages: u32,
    /// Items in the whole listing; a change between pages means the walk may have skipped one.
    #[serde(default)]
    pub total: Option<u64>,
    pub items: Vec<T>,
}

#[derive(Deserialize)]
pub(super) struct LoginResponse {
    pub access_token: SecretString,
    /// Seconds; `null` when the server issues tokens that never expire.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(super) struct ServiceAccountCreate<'a> {
    pub name: &'a str,
    pub description: &'a str,
    /// The server answers 422 without it.
    pub active: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct ServiceAccountActive {
    pub active: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct ApiKeyCreate<'a> {
    pub name: &'a str,
    pub description: &'a str,
}

#[derive(Debug, Serialize)]
pub(super) struct ApiKeyRotate {
    pub retain_period_minutes: u32,
}

#[derive(Debug, Deserialize)]
pub(super) struct UserResponse {
    pub id: Uuid,
    pub name: String,
    pub body: UserBody,
}

#[derive(Debug, Deserialize)]
pub(super) struct UserBody {
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub is_service_account: bool,
    #[serde(default)]
    pub is_admin: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServiceAccountResponse {
    pub id: Uuid,
    pub name: String,
    pub body: ServiceAccountBody,
    /// Null unless the request asked for `hydrate=true` (single GETs are hydrated by default).
    pub metadata: Option<ServiceAccountMetadata>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServiceAccountBody {
    #[serde(deserialize_with = "utc_timestamp")]
    pub created: DateTime<Utc>,
    pub active: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServiceAccountMetadata {
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize)]
pub(super) struct ApiKeyResponse {
    pub id: Uuid,
    pub name: String,
    pub body: ApiKeyBody,
    /// Null in the rotate response and in lists without `hydrate=true`.
    pub metadata: Option<ApiKeyMetadata>,
}

#[derive(Deserialize)]
pub(super) struct ApiKeyBody {
    #[serde(deserialize_with = "utc_timestamp")]
    pub created: DateTime<Utc>,
    #[serde(deserialize_with = "utc_timestamp")]
    pub updated: DateTime<Utc>,
    /// The key value: filled only in the create and rotate responses.
    #[serde(default)]
    pub key: Option<SecretString>,
    pub active: bool,
    pub service_account: ServiceAccountRef,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServiceAccountRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ApiKeyMetadata {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub retain_period_minutes: Option<i64>,
    #[serde(default, deserialize_with = "optional_utc_timestamp")]
    pub last_login: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "optional_utc_timestamp")]
    pub last_rotated: Option<DateTime<Utc>>,
}

/// The decoded form of a `ZENKEY_` value; only the id is kept, the secret half stays in the buffer
/// that is zeroized after parsing.
#[derive(Deserialize)]
pub(super) struct KeyValuePayload {
    pub id: Uuid,
}

/// Parses a server timestamp as UTC. ZenML sends naive UTC (`2026-11-28T05:57:26.902277`); an explicit
/// offset is accepted too, in case a later server adds one.
pub(super) fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

fn utc_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    parse_utc(&s).ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {s:?}")))
}

fn optional_utc_timestamp<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_utc(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {s:?}"))),
    }
}

impl From<UserResponse> for User {
    fn from(u: UserResponse) -> Self {
        User {
            id: u.id,
            name: u.name,
            active: u.body.active,
            is_service_account: u.body.is_service_account,
            is_admin: u.body.is_admin,
        }
    }
}

impl From<ServiceAccountResponse> for ServiceAccount {
    fn from(sa: ServiceAccountResponse) -> Self {
        ServiceAccount {
            id: sa.id,
            name: sa.name,
            active: sa.body.active,
            created: sa.body.created,
            description: sa.metadata.map(|m| m.description).unwrap_or_default(),
        }
    }
}

impl ApiKeyResponse {
    /// The public key description and, for create/rotate answers, the value.
    pub(super) fn into_parts(self) -> (ApiKey, Option<SecretString>) {
        let metadata = self.metadata;
        let key = ApiKey {
            id: self.id,
            name: self.name,
            description: metadata
                .as_ref()
                .map(|m| m.description.clone())
                .unwrap_or_default(),
            active: self.body.active,
            created: self.body.created,
            updated: self.body.updated,
            service_account_id: self.body.service_account.id,
            service_account_name: self.body.service_account.name,
            retain_period_minutes: metadata.as_ref().and_then(|m| m.retain_period_minutes),
            last_login: metadata.as_ref().and_then(|m| m.last_login),
            last_rotated: metadata.as_ref().and_then(|m| m.last_rotated),
        };
        (key, self.body.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_timestamps_are_utc() {
        let t = parse_utc("2026-11-28T05:57:26.902277").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-28T05:57:26.902277+00:00");
        let t = parse_utc("2026-11-28T05:57:26").unwrap();
        assert_eq!(t.timestamp(), 1_795_845_446);
        let t = parse_utc("2026-11-28T06:57:26+01:00").unwrap();
        assert_eq!(t.timestamp(), 1_795_845_446);
        assert!(parse_utc("yesterday").is_none());
    }

    #[test]
    fn an_unhydrated_key_parses() {
        let json = r#"{"body":{"created":"2026-11-28T05:57:26.902277","updated":"2026-11-28T05:57:27.051638",
            "key":null,"active":true,"service_account":{"body":null,"metadata":null,"resources":null,
            "id":"c49c2b02-a7b5-4eb5-922d-5517804358ae","permission_denied":false,"name":"probe-sa"}},
            "metadata":null,"resources":null,"id":"507677c5-8d1d-4637-bb58-e1aacee6f015",
            "permission_denied":false,"name":"k1"}"#;
        let k: ApiKeyResponse = serde_json::from_str(json).unwrap();
        assert_eq!(k.name, "k1");
        assert!(k.metadata.is_none());
        assert!(k.body.key.is_none());
        assert_eq!(k.body.service_account.name, "probe-sa");
    }
}
