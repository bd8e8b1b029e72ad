//! `fleetward migrate` and `fleetward keys …`: database and key-encryption-key administration.

use super::Outcome;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use registry::{Kek, Keyring, Registry};
use std::io::Write;
use std::path::PathBuf;

/// Where the fleet database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL (`postgres://user@host/db`) or SQLite (`sqlite://path`) URL. Default: SQLite in
    /// the data directory.
    #[arg(long, env = "FLEETWARD_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// The data directory (the embedded SQLite database lives here).
    #[arg(
        long,
        env = "FLEETWARD_DATA_DIR",
        default_value = "./fleetward-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
}

impl DbArgs {
    pub fn url(&self) -> Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => {
                std::fs::create_dir_all(&self.data_dir)
                    .with_context(|| format!("cannot create data directory {}", self.data_dir.display()))?;
                Ok(Registry::sqlite_url(&self.data_dir))
            }
        }
    }
}

/// Where the key-encryption keys are.
#[derive(Debug, Args)]
pub struct KekArgs {
    /// A file of `ID HEX` lines (64 hex characters each): the first line seals, later lines are
    /// previous KEKs kept to open what they sealed until `fleetward keys rotate`.
    #[arg(long, env = "FLEETWARD_KEK_FILE", value_name = "FILE")]
    pub kek_file: Option<PathBuf>,
    /// One KEK as `ID:HEX` (instead of a file).
    #[arg(long, env = "FLEETWARD_KEK", hide_env_values = true, value_name = "ID:HEX")]
    pub kek: Option<String>,
}

impl KekArgs {
    pub fn keyring(&self) -> Result<Option<Keyring>> {
        if let Some(spec) = &self.kek {
            let (id, hex) = spec.split_once(':').context("FLEETWARD_KEK / --kek must be ID:HEX")?;
            return Ok(Some(Keyring::new(Kek::from_hex(id, hex)?)));
        }
        let Some(path) = &self.kek_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read KEK file {}", path.display()))?;
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
            .map(|(i, line)| {
                let (id, hex) = line
                    .split_once(char::is_whitespace)
                    .with_context(|| format!("{} line {}: expected `ID HEX`", path.display(), i + 1))?;
                Kek::from_hex(id, hex.trim()).with_context(|| format!("{} line {}", path.display(), i + 1))
            });
        let current = keys
            .next()
            .with_context(|| format!("{} holds no key", path.display()))??;
        let mut ring = Keyring::new(current);
        for previous in keys {
            ring = ring.with_previous(previous?);
        }
        Ok(Some(ring))
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-seal every stored secret under the first KEK of the key file (the others must still be
    /// listed until this finishes).
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        kek: KekArgs,
    },
    /// Print a new random KEK line (`ID HEX`) to put first in the key file.
    Generate {
        /// The new KEK's id (e.g. the month it was made).
        #[arg(long, value_name = "ID")]
        id: String,
    },
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(super) fn migrate(db: DbArgs, out: &mut dyn Write) -> Result<Outcome> {
    let url = db.url()?;
    let applied = runtime()?.block_on(async {
        let registry = Registry::connect(&url, None)
            .await
            .context("cannot reach the database")?;
        let applied = registry.migrate().await.context("migration failed")?;
        registry.close().await;
        anyhow::Ok(applied)
    })?;
    writeln!(
        out,
        "migrated {}: {applied} migration(s) applied, schema up to date",
        redact(&url)
    )?;
    Ok(Outcome::Valid)
}

pub(super) fn keys(cmd: KeysCommand, out: &mut dyn Write) -> Result<Outcome> {
    match cmd {
        KeysCommand::Generate { id } => {
            let mut key = [0u8; 32];
            aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no system randomness"))?;
            Kek::new(&id, &key)?; // validates the id
            writeln!(out, "{id} {}", hex::encode(key))?;
            Ok(Outcome::Valid)
        }
        KeysCommand::Rotate { db, kek } => {
            let Some(ring) = kek.keyring()? else {
                bail!("keys rotate needs the KEKs: --kek-file FILE (new key first, old ones after)");
            };
            let current = ring.current_id().to_owned();
            let url = db.url()?;
            let resealed = runtime()?.block_on(async {
                let registry = Registry::open(&url, ring).await.context("cannot open the database")?;
                let n = registry.rotate_keys().await.context("rotation stopped")?;
                registry.close().await;
                anyhow::Ok(n)
            })?;
            writeln!(
                out,
                "re-sealed {resealed} secret(s) under KEK `{current}`; older KEKs may now be removed from the key file"
            )?;
            Ok(Outcome::Valid)
        }
    }
}

/// A database URL without its password, for output.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://fw:s3cret@db/fleet"),
            "postgres://fw:***@db/fleet"
        );
        assert_eq!(
            super::redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(super::redact("sqlite://./x.db"), "sqlite://./x.db");
    }
}
