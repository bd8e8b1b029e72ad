//! Dynamic statements with `$N` placeholders on both backends.
//!
//! sqlx's `QueryBuilder<Any>` writes `?` placeholders, which PostgreSQL rejects; both SQLite and
//! PostgreSQL read `$N` by number, so this builder numbers the parameters itself.

use sqlx::any::AnyArguments;
use sqlx::{Any, Arguments, AssertSqlSafe, Encode, Type};

pub(crate) struct SqlBuilder {
    sql: String,
    args: AnyArguments,
    n: usize,
    error: Option<sqlx::error::BoxDynError>,
}

impl SqlBuilder {
    /// Starts a statement. `sql` must be a compile-time constant or built from constants: every
    /// value goes through [`SqlBuilder::bind`].
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        SqlBuilder {
            sql: sql.into(),
            args: AnyArguments::default(),
            n: 0,
            error: None,
        }
    }

    pub(crate) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends the next `$N` placeholder and binds `value` to it.
    pub(crate) fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: for<'q> Encode<'q, Any> + Type<Any>,
    {
        self.n += 1;
        self.sql.push('$');
        self.sql.push_str(&self.n.to_string());
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        self
    }

    pub(crate) fn build(self) -> crate::Result<sqlx::query::Query<'static, Any, AnyArguments>> {
        match self.error {
            None => Ok(sqlx::query_with(AssertSqlSafe(self.sql), self.args)),
            Some(e) => Err(crate::RegistryError::Invalid {
                what: "query parameter",
                detail: e.to_string(),
            }),
        }
    }
}
