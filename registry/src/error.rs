//! The registry's one error type. Callers (gateway, API) map it to status codes; it never
//! carries SQL text or driver messages, only what failed and whether retrying can help.

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} conflicts with existing data: {detail}")]
    Conflict { what: &'static str, detail: String },
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// The database cannot be reached or is overloaded. Retryable.
    #[error("database unavailable ({detail}); retry later")]
    Unavailable { detail: String },
    /// A sealed key could not be opened: wrong or missing key-encryption key, or tampering.
    #[error("sealed key cannot be opened: {detail}")]
    Sealing { detail: String },
    /// Anything else the database reported; `code` is its SQLSTATE / SQLite code if any.
    #[error("database error{}", code.as_ref().map(|c| format!(" (code {c})")).unwrap_or_default())]
    Database { code: Option<String> },
}

impl RegistryError {
    /// Whether the same call may succeed later (outage, pool exhaustion, lock contention).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }

    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        RegistryError::NotFound { what, id: id.into() }
    }
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => {
                tracing::warn!(error = %e, "registry database unavailable");
                RegistryError::Unavailable {
                    detail: short_kind(&e).into(),
                }
            }
            E::Database(db) => {
                let code = db.code().map(|c| c.into_owned());
                // SQLSTATE 23505 / SQLite 2067, 1555: unique violations.
                if db.is_unique_violation() {
                    return RegistryError::Conflict {
                        what: "record",
                        detail: "already exists".into(),
                    };
                }
                // Lock contention (SQLite BUSY=5, LOCKED=6; PG 40001 serialization, 40P01 deadlock,
                // 57P01 admin shutdown, 08xxx connection) is retryable.
                if matches!(
                    code.as_deref(),
                    Some("5" | "6" | "40001" | "40P01" | "57P01" | "57P02" | "57P03")
                ) || code.as_deref().is_some_and(|c| c.starts_with("08"))
                {
                    return RegistryError::Unavailable {
                        detail: format!("database busy (code {})", code.unwrap_or_default()),
                    };
                }
                tracing::warn!(error = %e, "registry database error");
                RegistryError::Database { code }
            }
            _ => {
                tracing::warn!(error = %e, "registry database error");
                RegistryError::Database { code: None }
            }
        }
    }
}

fn short_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Io(_) => "connection failed",
        sqlx::Error::PoolTimedOut => "no connection available in time",
        sqlx::Error::PoolClosed => "pool closed",
        sqlx::Error::Tls(_) => "TLS to the database failed",
        _ => "database worker stopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_retryable_and_say_nothing_of_sql() {
        for e in [
            sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
        ] {
            let mapped = RegistryError::from(e);
            assert!(mapped.is_retryable(), "{mapped:?}");
            assert!(mapped.to_string().contains("retry later"));
        }
        let other = RegistryError::from(sqlx::Error::RowNotFound);
        assert_eq!(other, RegistryError::Database { code: None });
        assert!(!other.is_retryable());
    }
}
