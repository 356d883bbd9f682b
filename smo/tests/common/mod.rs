//! Shared by the SMO's integration tests: the OpenAPI description loaded together with the 3GPP
//! files it references, as JSON Schemas.

#![allow(dead_code)]

pub mod reach;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use model::schema::SchemaSet;

/// The file name `smo/openapi.yaml` gets in the schema set.
pub const SMO_FILE: &str = "SMO_ServiceMobility.yaml";

/// The schema `name` of `smo/openapi.yaml`, as [`SchemaSet::validate`] names it.
pub fn smo_schema(name: &str) -> String {
    format!("{SMO_FILE}#/components/schemas/{name}")
}

/// `smo/openapi.yaml`.
pub fn openapi_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml")
}

/// Removes its directory when dropped.
pub struct Schemas {
    pub set: SchemaSet,
    dir: PathBuf,
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Schemas {
    /// Panics with every error when `value` does not match schema `name`.
    pub fn check(&self, name: &str, value: &serde_json::Value) {
        if let Err(errors) = self.set.validate(name, value) {
            panic!("{value:#} does not match {name}: {errors:#?}");
        }
    }
}

/// The 3GPP files and `smo/openapi.yaml` (as [`SMO_FILE`]) in one [`SchemaSet`].
pub fn schemas() -> Schemas {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "smo-openapi-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let threegpp = SchemaSet::default_dir();
    for entry in std::fs::read_dir(&threegpp).expect("3gpp dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("file name");
            std::os::unix::fs::symlink(&path, dir.join(name)).expect("symlink");
        }
    }
    std::fs::copy(openapi_path(), dir.join(SMO_FILE)).expect("copy openapi.yaml");
    let set = SchemaSet::load(&dir).expect("schemas load");
    Schemas { set, dir }
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Polls `done` every millisecond (of tokio's clock: instant when it is paused) until it holds;
/// panics naming `what` after 100 000 tries.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::time::sleep(ms(1)).await;
    }
    panic!("never happened: {what}");
}

/// A state directory per test, removed at the end.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "smo-test-{}-{n}-{}",
            std::process::id(),
            model::ran::unix_now_us()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
