//! The admin token (API.md, "Running"): `ZQ_ADMIN_TOKEN`, or, for the embedded `up` only, one
//! generated on first start and kept in `<data-dir>/admin-token` (mode 0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use booking_api::auth::AdminToken;

/// The admin token to use, and the file it is kept in when generated.
pub fn resolve(
    configured: Option<&str>,
    embedded_data_dir: Option<&Path>,
) -> anyhow::Result<(AdminToken, Option<PathBuf>)> {
    if let Some(token) = configured.filter(|token| !token.trim().is_empty()) {
        return Ok((AdminToken::new(token.trim()), None));
    }
    let Some(data_dir) = embedded_data_dir else {
        anyhow::bail!(
            "ZQ_ADMIN_TOKEN is not set: outside the embedded default every process refuses to \
             start without an admin token"
        );
    };
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim();
        anyhow::ensure!(!token.is_empty(), "{} is empty", path.display());
        return Ok((AdminToken::new(token), Some(path)));
    }
    // 244 random bits: two version-4 UUIDs, whose random parts come from the OS's source.
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{token}")?;
    Ok((AdminToken::new(token), Some(path)))
}
