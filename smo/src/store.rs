//! The embedded store: the SMO's databases as one JSON file per entry under the state
//! directory, each written to a temporary file, synced and renamed over the old one, so a crash
//! leaves either the old or the new version, never half of one. Relocations are written after
//! every step of their state machine; that is what lets a restarted SMO finish or fail them.
//!
//! ```text
//! STATE_DIR/modules/<moduleId>.json          registered service modules
//! STATE_DIR/services/<serviceId>.json        service database (service → module)
//! STATE_DIR/relocations/<relocationId>.json  state machines (source or target)
//! ```

use crate::core::{SourceRelocation, TargetRelocation};
use model::smo::{Service, ServiceModule};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A persisted relocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum StoredRelocation {
    Source(Box<SourceRelocation>),
    Target(Box<TargetRelocation>),
}

/// A service database entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostedService {
    pub module_id: String,
    pub service: Service,
}

/// A store failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("store {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The store; `Store::memory()` keeps nothing on disk (tests).
#[derive(Debug, Clone)]
pub struct Store {
    dir: Option<PathBuf>,
}

const TABLES: [&str; 3] = ["modules", "services", "relocations"];

impl Store {
    /// A store in `dir` (created with its tables if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        for t in TABLES {
            let p = dir.join(t);
            std::fs::create_dir_all(&p).map_err(|source| StoreError { path: p, source })?;
        }
        Ok(Self { dir: Some(dir) })
    }

    /// A store that forgets everything (unit tests).
    pub fn memory() -> Self {
        Self { dir: None }
    }

    pub fn put_module(&self, m: &ServiceModule) -> Result<(), StoreError> {
        self.put("modules", &m.module_id, m)
    }

    pub fn delete_module(&self, id: &str) -> Result<(), StoreError> {
        self.delete("modules", id)
    }

    pub fn modules(&self) -> Result<Vec<ServiceModule>, StoreError> {
        self.all("modules")
    }

    pub fn put_service(&self, s: &HostedService) -> Result<(), StoreError> {
        self.put("services", &s.service.service_id, s)
    }

    pub fn delete_service(&self, id: &str) -> Result<(), StoreError> {
        self.delete("services", id)
    }

    pub fn services(&self) -> Result<Vec<HostedService>, StoreError> {
        self.all("services")
    }

    pub fn put_relocation(&self, id: &str, r: &StoredRelocation) -> Result<(), StoreError> {
        self.put("relocations", id, r)
    }

    pub fn relocations(&self) -> Result<Vec<StoredRelocation>, StoreError> {
        self.all("relocations")
    }

    fn file(dir: &Path, table: &str, id: &str) -> PathBuf {
        // Ids are checked by the API (`[A-Za-z0-9._-]`); keep any other byte out of file names.
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(table).join(format!("{safe}.json"))
    }

    fn put<T: Serialize>(&self, table: &str, id: &str, value: &T) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = Self::file(dir, table, id);
        let tmp = path.with_extension("json.tmp");
        let err = |source| StoreError {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| err(e.into()))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_data().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    fn delete(&self, table: &str, id: &str) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = Self::file(dir, table, id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn all<T: DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let d = dir.join(table);
        let rd = std::fs::read_dir(&d).map_err(|source| StoreError {
            path: d.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let p = entry.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read(&p).map_err(|source| StoreError {
                path: p.clone(),
                source,
            })?;
            match serde_json::from_slice(&text) {
                Ok(v) => out.push(v),
                // A file this version cannot read is reported and skipped, not fatal.
                Err(e) => tracing::warn!(path = %p.display(), "unreadable store entry: {e}"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::smo::{RelocationType, ServiceModuleRegistration};

    fn module(id: &str) -> ServiceModule {
        ServiceModule {
            module_id: id.into(),
            registration: ServiceModuleRegistration {
                relocation_type: RelocationType::Test,
                resource_requirements: Default::default(),
                get_service_notif_uri: "http://m/s".into(),
                served_service_notif_uri: "http://m/ss".into(),
                execute_notif_uri: "http://m/e".into(),
                notif_address: "10.0.1.1:9100".parse().expect("addr"),
            },
        }
    }

    #[test]
    fn entries_survive_reopening_and_deletes_stick() {
        let dir = std::env::temp_dir().join(format!("smo-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir).expect("open");
        s.put_module(&module("m1")).expect("put");
        s.put_module(&module("m/../2")).expect("put odd id");
        s.delete_module("m1").expect("delete");
        s.delete_module("never")
            .expect("deleting a missing entry is fine");
        let again = Store::open(&dir).expect("reopen");
        let ids: Vec<String> = again
            .modules()
            .expect("list")
            .into_iter()
            .map(|m| m.module_id)
            .collect();
        assert_eq!(ids, vec!["m/../2".to_owned()]);
        assert!(!dir.join("modules").join("m1.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_store_keeps_nothing() {
        let s = Store::memory();
        s.put_module(&module("m1")).expect("put");
        assert!(s.modules().expect("list").is_empty());
    }
}
