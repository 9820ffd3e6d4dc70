//! Where ZingQueue keeps its data: the embedded default (SQLite in a data folder) or the servers
//! the environment names. One resolution, used by every command.

use std::path::{Path, PathBuf};

/// The data folder when none is given (`--data-dir` / `ZQ_DATA_DIR`).
pub const DEFAULT_DATA_DIR: &str = "./zingqueue-data";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the data folder path {0} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
}

/// Which event store a process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `ZQ_DATABASE_URL` named a server (or a SQLite file) explicitly.
    Configured(String),
    /// The embedded default: a SQLite file in the data folder.
    Embedded { url: String, path: PathBuf },
}

impl StoreLocation {
    /// Resolve from `ZQ_DATABASE_URL` (when set and not empty) or the data folder, creating the
    /// folder for the embedded default.
    pub fn resolve(
        database_url: Option<&str>,
        data_dir: &Path,
    ) -> Result<StoreLocation, ConfigError> {
        if let Some(url) = database_url.filter(|url| !url.trim().is_empty()) {
            return Ok(StoreLocation::Configured(url.to_string()));
        }
        std::fs::create_dir_all(data_dir).map_err(|source| ConfigError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("zingqueue.db");
        let url = format!(
            "sqlite://{}",
            path.to_str()
                .ok_or_else(|| ConfigError::NonUtf8Path(path.clone()))?
        );
        Ok(StoreLocation::Embedded { url, path })
    }

    pub fn url(&self) -> &str {
        match self {
            StoreLocation::Configured(url) | StoreLocation::Embedded { url, .. } => url,
        }
    }

    /// The URL with any password replaced, for logs and screens.
    pub fn display_url(&self) -> String {
        redact_password(self.url())
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`.
pub fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let Some(at) = url[scheme_end..].find('@').map(|i| i + scheme_end) else {
        return url.to_string();
    };
    match url[scheme_end..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_wins_over_the_data_folder() {
        let location =
            StoreLocation::resolve(Some("postgres://u:p@db/zq"), Path::new("/nonexistent"))
                .unwrap();
        assert_eq!(
            location,
            StoreLocation::Configured("postgres://u:p@db/zq".into())
        );
        assert_eq!(location.display_url(), "postgres://u:***@db/zq");
    }

    #[test]
    fn the_embedded_default_lives_in_the_data_folder() {
        let dir = std::env::temp_dir().join(format!("zq-config-test-{}", std::process::id()));
        let location = StoreLocation::resolve(Some(" "), &dir).unwrap();
        match &location {
            StoreLocation::Embedded { url, path } => {
                assert!(url.starts_with("sqlite://") && url.ends_with("zingqueue.db"));
                assert_eq!(path, &dir.join("zingqueue.db"));
            }
            other => panic!("expected the embedded default, got {other:?}"),
        }
        assert!(dir.is_dir());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn urls_without_passwords_are_left_alone() {
        assert_eq!(redact_password("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
    }
}
