//! Opening a store on a real backend for a test, and small builders.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::sync::Arc;

use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database for one test: a fresh Postgres database from testkit, or a SQLite file in a
/// temporary folder that lives as long as this value.
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Postgres => TestDatabase {
                backend,
                url: testkit::postgres().url,
                _dir: None,
            },
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite://{}/events.db", dir.path().display());
                TestDatabase {
                    backend,
                    url,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// A store on this database (each call opens another one, like another process would).
    pub async fn open(&self) -> Arc<dyn EventStore> {
        event_store::open(&self.url)
            .await
            .unwrap_or_else(|error| panic!("opening {}: {error}", self.url))
    }

    /// Run raw SQL on the database, for test fixtures (triggers, corrupt rows).
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection;
        match self.backend {
            Backend::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::raw_sql(sql)
                    .execute(&mut connection)
                    .await
                    .expect("fixture SQL");
            }
            Backend::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::raw_sql(sql)
                    .execute(&mut connection)
                    .await
                    .expect("fixture SQL");
            }
        }
    }
}

pub fn event(event_type: &str, data: serde_json::Value) -> NewEvent {
    NewEvent::new(Uuid::now_v7(), event_type, &data, EventMetadata::default()).expect("JSON data")
}

pub fn events(count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|i| event("test.happened.v1", serde_json::json!({ "n": i })))
        .collect()
}

pub fn to(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend::new(stream, expected, events)
}
