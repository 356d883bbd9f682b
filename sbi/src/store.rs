//! The network functions' embedded store: one JSON file per item, a directory per table, each
//! file written to a temporary file, synced and renamed over the old one, so a crash (SIGKILL
//! included) leaves the old or the new version of an item, never half of one.
//!
//! ```text
//! STATE_DIR/<table>/<id>.json
//! ```
//!
//! Ids become file names: every byte outside `[A-Za-z0-9._-]` is written as `_`, so callers keep
//! their ids in that set (subscription ids, SUPIs, …). [`Store::memory`] keeps nothing (tests,
//! and network functions run without a state directory).

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A store failure, with the file or directory it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store {} does not parse", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The store: a directory, or nothing ([`Store::memory`]).
#[derive(Debug, Clone)]
pub struct Store {
    dir: Option<PathBuf>,
}

impl Store {
    /// A store in `dir` with `tables` (the directories are created if missing).
    pub fn open(dir: impl Into<PathBuf>, tables: &[&str]) -> Result<Self, StoreError> {
        let dir = dir.into();
        for t in tables {
            let path = dir.join(t);
            std::fs::create_dir_all(&path).map_err(|source| StoreError::Io { path, source })?;
        }
        Ok(Self { dir: Some(dir) })
    }

    /// A store that forgets everything.
    pub fn memory() -> Self {
        Self { dir: None }
    }

    /// Whether items outlive the process.
    pub fn is_persistent(&self) -> bool {
        self.dir.is_some()
    }

    fn file(dir: &Path, table: &str, id: &str) -> PathBuf {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(table).join(format!("{safe}.json"))
    }

    /// Writes item `id` of `table` (temporary file, fsync, rename).
    pub fn put<T: Serialize + ?Sized>(
        &self,
        table: &str,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = Self::file(dir, table, id);
        let tmp = path.with_extension("json.tmp");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Removes item `id` of `table` (no error if it is not there).
    pub fn delete(&self, table: &str, id: &str) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = Self::file(dir, table, id);
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source })
            }
            _ => Ok(()),
        }
    }

    /// Item `id` of `table`, if it is there.
    pub fn get<T: DeserializeOwned>(&self, table: &str, id: &str) -> Result<Option<T>, StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = Self::file(dir, table, id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Parse { path, source }),
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Every item of `table`, ordered by file name; temporary files of writes a crash cut short
    /// are left out (the item's previous version is the one read).
    pub fn all<T: DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let d = dir.join(table);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let path = entry.map_err(io(&d))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse { path, source })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sbi-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn items_survive_a_new_store_on_the_same_directory() {
        let dir = scratch("reopen");
        let s = Store::open(&dir, &["subs", "meta"]).expect("open");
        assert!(s.is_persistent());
        s.put("subs", "sub-2", &serde_json::json!({"n": 2}))
            .expect("put");
        s.put("subs", "sub-1", &serde_json::json!({"n": 1}))
            .expect("put");
        s.put("subs", "sub-1", &serde_json::json!({"n": 11}))
            .expect("overwrite");
        s.put("meta", "next", &7u64).expect("put");
        // A write a crash cut short leaves its temporary file: not an item.
        std::fs::write(dir.join("subs/sub-3.json.tmp"), b"{\"n\":").expect("tmp");
        let again = Store::open(&dir, &["subs", "meta"]).expect("reopen");
        let all: Vec<serde_json::Value> = again.all("subs").expect("all");
        assert_eq!(
            all,
            [serde_json::json!({"n": 11}), serde_json::json!({"n": 2})]
        );
        assert_eq!(again.get::<u64>("meta", "next").expect("get"), Some(7));
        assert_eq!(again.get::<u64>("meta", "none").expect("get"), None);
        again.delete("subs", "sub-2").expect("delete");
        again.delete("subs", "sub-2").expect("delete twice");
        assert_eq!(
            again.all::<serde_json::Value>("subs").expect("all").len(),
            1
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_stay_inside_their_table_and_damage_is_reported_with_the_file() {
        let dir = scratch("ids");
        let s = Store::open(&dir, &["t"]).expect("open");
        s.put("t", "../../etc/x y", &1u8).expect("put");
        assert!(dir.join("t/.._.._etc_x_y.json").is_file());
        std::fs::write(dir.join("t/bad.json"), b"{").expect("write");
        let e = s.all::<u8>("t").expect_err("damaged");
        assert!(
            matches!(&e, StoreError::Parse { path, .. } if path.ends_with("t/bad.json")),
            "{e:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_keeps_nothing() {
        let s = Store::memory();
        assert!(!s.is_persistent());
        s.put("t", "a", &1u8).expect("put");
        assert_eq!(s.get::<u8>("t", "a").expect("get"), None);
        assert!(s.all::<u8>("t").expect("all").is_empty());
        s.delete("t", "a").expect("delete");
    }
}
