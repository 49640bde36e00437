//! Dev mode: a generated HS256 secret kept in the data directory, so `veza-sfu token` run
//! from the same place mints tokens the running dev server accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::distr::Alphanumeric;

pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-secret")
}

/// Reads the dev secret, creating it (readable by its owner only) on first use.
pub fn ensure_secret(data_dir: &Path) -> std::io::Result<String> {
    if let Some(secret) = read_secret(data_dir)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(data_dir)?;
    let secret: String = rand::rng().sample_iter(&Alphanumeric).take(48).map(char::from).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(secret_path(data_dir)) {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())?;
            Ok(secret)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret(data_dir)?.ok_or_else(|| std::io::Error::other("dev secret vanished"))
        }
        Err(e) => Err(e),
    }
}

/// The dev secret, if a dev server created one here.
pub fn read_secret(data_dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(secret_path(data_dir)) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
