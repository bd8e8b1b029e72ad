//! API tokens: shown once at creation, stored only as a SHA-256 hash, with a role.
//!
//! A token reads `fw_<id>_<secret>`: the id finds the row, the secret's hash is compared in
//! constant time. (The secret has 256 bits of entropy, so a fast hash is the right tool; a
//! password KDF would only slow down every API call.)

use crate::{Registry, RegistryError, Result};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// A token's metadata (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub description: Option<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// A newly created token: `secret` is shown to the operator once and never stored.
pub struct NewToken {
    pub info: TokenInfo,
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenInfo> {
    let role: String = row.try_get("role")?;
    Ok(TokenInfo {
        id: row.try_get("id")?,
        role: Role::parse(&role).ok_or_else(|| RegistryError::Invalid {
            what: "stored token",
            detail: "unknown role".into(),
        })?,
        description: row.try_get("description")?,
        created_at_ms: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        last_used_at_ms: row.try_get("last_used_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
    })
}

/// How precisely a token's last use is recorded.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    SystemRandom::new().fill(&mut buf).map_err(|_| RegistryError::Sealing {
        detail: "no system randomness".into(),
    })?;
    Ok(hex::encode(&*buf))
}

impl Registry {
    /// Creates a token; the returned secret is the only copy.
    pub async fn create_token(&self, role: Role, description: Option<&str>, by: &str, now_ms: i64) -> Result<NewToken> {
        let _turn = self.write_turn().await;
        let id = random_hex(8)?;
        let secret = Zeroizing::new(format!("fw_{id}_{}", random_hex(32)?));
        sqlx::query(
            "INSERT INTO api_tokens (id, secret_hash, role, description, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(hash(&secret))
        .bind(role.as_str())
        .bind(description)
        .bind(now_ms)
        .bind(by)
        .execute(self.pool())
        .await?;
        let info = TokenInfo {
            id,
            role,
            description: description.map(str::to_owned),
            created_at_ms: now_ms,
            created_by: by.into(),
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        Ok(NewToken { info, secret })
    }

    /// Checks a presented token; `None` if unknown, wrong or revoked. Records its last use.
    pub async fn authenticate_token(&self, presented: &str, now_ms: i64) -> Result<Option<TokenInfo>> {
        let Some(id) = presented
            .strip_prefix("fw_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
        else {
            return Ok(None);
        };
        let Some(row) = sqlx::query(
            "SELECT id, secret_hash, role, description, created_at, created_by, last_used_at, revoked_at \
             FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        else {
            return Ok(None);
        };
        let stored: String = row.try_get("secret_hash")?;
        if !bool::from(stored.as_bytes().ct_eq(hash(presented).as_bytes())) {
            return Ok(None);
        }
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Ok(None);
        }
        // Last use is kept to the minute: a write per API call would put every dashboard page
        // in SQLite's single-writer queue.
        let last_used: Option<i64> = row.try_get("last_used_at")?;
        if last_used.is_none_or(|t| now_ms - t >= LAST_USED_RESOLUTION_MS) {
            let _turn = self.write_turn().await;
            sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now_ms)
                .execute(self.pool())
                .await?;
        }
        Ok(Some(TokenInfo {
            last_used_at_ms: Some(now_ms),
            ..token_from_row(&row)?
        }))
    }

    /// The first start's admin token: created once per database (whichever node or process
    /// starts first), `None` ever after. The database settles races between nodes.
    pub async fn bootstrap_admin_token(&self, now_ms: i64) -> Result<Option<NewToken>> {
        let claimed = {
            let _turn = self.write_turn().await;
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ('bootstrap_admin_token', $1) ON CONFLICT (key) DO NOTHING",
            )
            .bind(now_ms.to_string())
            .execute(self.pool())
            .await?
            .rows_affected()
                == 1
        };
        if !claimed {
            return Ok(None);
        }
        let token = self
            .create_token(Role::Admin, Some("first-start admin token"), "bootstrap", now_ms)
            .await?;
        Ok(Some(token))
    }

    /// Every token's metadata (never a secret), newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, role, description, created_at, created_by, last_used_at, revoked_at FROM api_tokens \
             ORDER BY created_at DESC, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token by id; `NotFound` if there is none.
    pub async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        let n = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(self.pool())
            .await?
            .rows_affected();
        if n == 0 {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM api_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
            if exists.is_none() {
                return Err(RegistryError::not_found("API token", id));
            }
        }
        Ok(())
    }
}
