//! Host-wide kernel settings the testbed changes while any testbed is up, and puts back when
//! the last one goes down.
//!
//! | setting | while up | why |
//! |---|---|---|
//! | `net.netfilter.nf_conntrack_buckets` | 4096 (if larger) | CRIU dumps the conntrack table of a migrating service's network namespace, and the kernel walks the whole, host-wide hash for it: with the default 262144 buckets that is 15–30 ms inside the service's freeze, with 4096 ≈ 0.2 ms. The testbed's flows are few. |
//!
//! The first `up` records the original values in [`SAVED`] (only if no record is there yet, so
//! a second testbed never records the tuned values as originals); the last `down` writes them
//! back and removes the record.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::plan::STATE_ROOT;

/// Where the original values are kept while a testbed is up.
pub fn saved_path() -> PathBuf {
    Path::new(STATE_ROOT).join("host-settings.json")
}

/// The settings: `/proc/sys` path below `/proc/sys/`, the value while up, and whether it only
/// ever lowers the value.
pub const TUNING: &[(&str, u64)] = &[("net/netfilter/nf_conntrack_buckets", 4096)];

/// A setting's original value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub key: String,
    pub value: String,
}

fn proc_sys(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key)
}

/// What to write for each setting now, given its current value: lower it to the tuned value,
/// never raise it; settings the kernel lacks are skipped.
pub fn plan(read: impl Fn(&str) -> Option<String>) -> Vec<(Saved, u64)> {
    TUNING
        .iter()
        .filter_map(|(key, want)| {
            let now = read(key)?;
            let current: u64 = now.trim().parse().ok()?;
            (current > *want).then(|| {
                (
                    Saved {
                        key: (*key).to_owned(),
                        value: now.trim().to_owned(),
                    },
                    *want,
                )
            })
        })
        .collect()
}

/// Applies [`TUNING`] (recording the originals first). Problems are returned, never fatal: the
/// testbed works without the tuning, only migrations freeze longer.
pub fn apply() -> Vec<String> {
    let mut problems = Vec::new();
    let saved = saved_path();
    let todo = plan(|k| std::fs::read_to_string(proc_sys(k)).ok());
    if todo.is_empty() {
        return problems;
    }
    if !saved.exists() {
        let originals: Vec<&Saved> = todo.iter().map(|(s, _)| s).collect();
        let text = serde_json::to_string_pretty(&originals).unwrap_or_default();
        if let Err(e) =
            std::fs::create_dir_all(STATE_ROOT).and_then(|()| std::fs::write(&saved, text))
        {
            problems.push(format!(
                "cannot record host settings in {}: {e}",
                saved.display()
            ));
            return problems;
        }
    }
    for (s, want) in todo {
        if let Err(e) = std::fs::write(proc_sys(&s.key), want.to_string()) {
            problems.push(format!("cannot set {} to {want}: {e}", s.key));
        }
    }
    problems
}

/// Writes the recorded originals back and removes the record (call when no testbed is up).
/// Returns what was restored and the problems.
pub fn restore() -> (Vec<String>, Vec<String>) {
    let saved = saved_path();
    let Ok(text) = std::fs::read_to_string(&saved) else {
        return (Vec::new(), Vec::new());
    };
    let mut done = Vec::new();
    let mut problems = Vec::new();
    match serde_json::from_str::<Vec<Saved>>(&text) {
        Ok(list) => {
            for s in list {
                match std::fs::write(proc_sys(&s.key), &s.value) {
                    Ok(()) => done.push(format!("{} = {}", s.key, s.value)),
                    Err(e) => {
                        problems.push(format!("cannot restore {} to {}: {e}", s.key, s.value))
                    }
                }
            }
        }
        Err(e) => problems.push(format!("{} is corrupt: {e}", saved.display())),
    }
    if let Err(e) = std::fs::remove_file(&saved) {
        problems.push(format!("cannot remove {}: {e}", saved.display()));
    }
    (done, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowers_and_skips_what_the_kernel_lacks() {
        let big = plan(|_| Some("262144\n".into()));
        assert_eq!(
            big,
            [(
                Saved {
                    key: "net/netfilter/nf_conntrack_buckets".into(),
                    value: "262144".into()
                },
                4096
            )]
        );
        assert!(plan(|_| Some("1024".into())).is_empty());
        assert!(plan(|_| None).is_empty());
        assert!(plan(|_| Some("garbage".into())).is_empty());
    }
}
