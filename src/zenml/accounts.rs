//! The server and its service accounts: server info, the current user, whether a key or token is
//! accepted, and creating, listing, (de)activating and deleting service accounts.

use reqwest::Method;
use uuid::Uuid;

use super::transport::{Auth, Call};
use super::{KeyCheck, Operation, ServerInfo, ServiceAccount, User, ZenmlClient, ZenmlError, wire};
use crate::secret::SecretString;

impl ZenmlClient {
    pub async fn server_info(&self) -> Result<ServerInfo, ZenmlError> {
        let call = Call::new(Operation::ServerInfo, Method::GET, self.url(&["info"]));
        self.call_json(call.auth(Auth::None)).await
    }

    pub async fn version(&self) -> Result<String, ZenmlError> {
        let call = Call::new(Operation::Version, Method::GET, self.url(&["version"]));
        self.call_json(call.auth(Auth::None)).await
    }

    pub async fn current_user(&self) -> Result<User, ZenmlError> {
        let call = Call::new(
            Operation::CurrentUser,
            Method::GET,
            self.url(&["current-user"]),
        );
        let user: wire::UserResponse = self.call_json(call).await?;
        Ok(user.into())
    }

    /// Key check: `GET /api/v1/current-user` with `Authorization: Bearer ZENKEY_...`. Mints no token
    /// (a login would), and costs the server one bcrypt check.
    pub async fn check_key(&self, key: &SecretString) -> Result<KeyCheck, ZenmlError> {
        self.check_bearer(Operation::CheckKey, key).await
    }

    /// Whether the server accepts this bearer token (for instance one minted from a key).
    pub async fn check_token(&self, token: &SecretString) -> Result<KeyCheck, ZenmlError> {
        self.check_bearer(Operation::CheckToken, token).await
    }

    /// Every service account, all pages, with descriptions.
    pub async fn list_service_accounts(&self) -> Result<Vec<ServiceAccount>, ZenmlError> {
        let items: Vec<wire::ServiceAccountResponse> = self
            .list_all(
                Operation::ListServiceAccounts,
                self.url(&["service_accounts"]),
                vec![("hydrate", "true".to_owned())],
            )
            .await?;
        Ok(items.into_iter().map(ServiceAccount::from).collect())
    }

    pub async fn get_service_account(
        &self,
        name_or_id: &str,
    ) -> Result<ServiceAccount, ZenmlError> {
        let url = self.url(&["service_accounts", name_or_id]);
        let call = Call::new(Operation::GetServiceAccount, Method::GET, url);
        let sa: wire::ServiceAccountResponse = self.call_json(call).await?;
        Ok(sa.into())
    }

    /// The UUID of a service account: the key endpoints take only the UUID (a name gives 422).
    pub async fn service_account_id(&self, name_or_id: &str) -> Result<Uuid, ZenmlError> {
        Ok(self.get_service_account(name_or_id).await?.id)
    }

    /// Creates an active service account. Not retried after a lost answer (it may exist by then).
    pub async fn create_service_account(
        &self,
        name: &str,
        description: &str,
    ) -> Result<ServiceAccount, ZenmlError> {
        let body = wire::ServiceAccountCreate {
            name,
            description,
            active: true,
        };
        let url = self.url(&["service_accounts"]);
        let call = Call::new(Operation::CreateServiceAccount, Method::POST, url).json(&body)?;
        let sa: wire::ServiceAccountResponse = self.call_json(call).await?;
        Ok(sa.into())
    }

    /// Activates or deactivates a service account; inactive, its keys and tokens are all rejected.
    pub async fn set_service_account_active(
        &self,
        id: Uuid,
        active: bool,
    ) -> Result<ServiceAccount, ZenmlError> {
        let url = self.url(&["service_accounts", &id.to_string()]);
        let call = Call::new(Operation::UpdateServiceAccount, Method::PUT, url)
            .json(&wire::ServiceAccountActive { active })?;
        let sa: wire::ServiceAccountResponse = self.call_json(call).await?;
        Ok(sa.into())
    }

    /// Deletes a service account and, with it, its API keys.
    pub async fn delete_service_account(&self, name_or_id: &str) -> Result<(), ZenmlError> {
        let url = self.url(&["service_accounts", name_or_id]);
        let call = Call::new(Operation::DeleteServiceAccount, Method::DELETE, url);
        self.execute(&call).await.map(drop)
    }

    async fn check_bearer(
        &self,
        op: Operation,
        bearer: &SecretString,
    ) -> Result<KeyCheck, ZenmlError> {
        let call =
            Call::new(op, Method::GET, self.url(&["current-user"])).auth(Auth::Bearer(bearer));
        match self.execute(&call).await {
            Ok(_) => Ok(KeyCheck::Accepted),
            Err(ZenmlError::Unauthorized { .. }) => Ok(KeyCheck::Rejected),
            Err(e) => Err(e),
        }
    }
}
