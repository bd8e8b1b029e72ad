//! Files that hold secrets (the generated KEK, TLS private keys): created owner-only (0600).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Whether an existing file may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Fail if the file exists (a KEK must never be overwritten: what it sealed would be lost).
    Refuse,
    /// Replace it (a regenerated key).
    Replace,
}

pub(crate) fn write(path: &Path, contents: &[u8], existing: Existing) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Replace => options.create(true).truncate(true),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}
