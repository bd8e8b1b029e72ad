//! Server-wide values kept in the database (so every gateway node sees the same ones).

use crate::{Registry, Result};

const REGISTRATION_CODE: &str = "ca_registration_code";

impl Registry {
    /// The CA registration code (the CN a verification certificate must carry). Created on
    /// first use from `fresh`; every later call, on any node, returns the same code.
    pub async fn registration_code(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        if let Some(code) = self.setting(REGISTRATION_CODE).await? {
            return Ok(code);
        }
        {
            let _turn = self.write_turn().await;
            // The database settles a race between two nodes: the first insert wins.
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(REGISTRATION_CODE)
                .bind(fresh())
                .execute(self.pool())
                .await?;
        }
        Ok(self.setting(REGISTRATION_CODE).await?.unwrap_or_default())
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }
}
