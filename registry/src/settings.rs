//! Server-wide values kept in the database (so every gateway node sees the same ones).

use crate::{Registry, Result};

const REGISTRATION_CODE: &str = "ca_registration_code";
const INSTANCE_ID: &str = "instance_id";

impl Registry {
    /// The CA registration code (the CN a verification certificate must carry). Created on
    /// first use from `fresh`; every later call, on any node, returns the same code.
    pub async fn registration_code(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        self.setting_or_init(REGISTRATION_CODE, fresh).await
    }

    /// This database's identity, created on first use from `fresh`: the same on every node that
    /// shares it, different for every other database. Telemetry ids are unique within one
    /// database, so `{instance}-{id}` names a stored message across a whole deployment (the
    /// JetStream de-duplication id).
    pub async fn instance_id(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        self.setting_or_init(INSTANCE_ID, fresh).await
    }

    async fn setting_or_init(&self, key: &str, fresh: impl FnOnce() -> String) -> Result<String> {
        if let Some(value) = self.setting(key).await? {
            return Ok(value);
        }
        {
            let _turn = self.write_turn().await;
            // The database settles a race between two nodes: the first insert wins.
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(fresh())
                .execute(self.pool())
                .await?;
        }
        Ok(self.setting(key).await?.unwrap_or_default())
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }
}
