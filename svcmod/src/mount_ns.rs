//! Leaving the private mount namespace of `ip netns exec`.
//!
//! `ip netns exec NS CMD` runs CMD in a **new mount namespace** whose mounts are slaves of the
//! host's (`mount --make-rslave /`, then a fresh `/sys`). A namespace the daemon then makes with
//! `ip netns add` is a bind mount on `/run/netns/NAME` *in that private mount namespace*: slave
//! mounts do not propagate back, so the host sees an empty file instead (checked on this machine:
//! `ip netns exec tb-edge-x ip netns add a` leaves the host with a `/run/netns/a` it cannot enter).
//! The service namespaces would be invisible to `testbed down`, the tests and the other edge's
//! module, and the processes in them impossible to find by namespace.
//!
//! So the daemon, while it still has one thread, goes back to the mount namespace its own
//! `/run/netns` is a slave of: the one where `/run/netns` is the shared mount with that peer
//! group (`shared:N` where ours says `master:N`, see `proc(5)` mountinfo). The network namespace
//! (the edge's) is unaffected. Started with `nsenter --net=…` (no private mount namespace) it
//! does nothing.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Where namespace handles live.
const NETNS_DIR: &str = "/run/netns";

/// What [`join_host_mount_namespace`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountNamespace {
    /// `/run/netns` propagates to the host already (or is no mount at all): nothing to do.
    Unchanged,
    /// Joined the mount namespace of process `pid`, the master of ours.
    Joined { pid: i32 },
}

/// Why the host's mount namespace could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum MountNsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "running in a private mount namespace (as `ip netns exec` makes) whose /run/netns is a \
         slave of peer group {group}, and no process of the host's mount namespace was found; \
         start svcmod with `nsenter --net=/run/netns/EDGE --` instead"
    )]
    NoHost { group: u32 },
    #[error("cannot join the mount namespace of PID {pid}")]
    Setns {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// The optional fields of the last mount on `mount_point` in a mountinfo text (`shared:N`,
/// `master:N`, …), or `None` when nothing is mounted there.
fn optional_fields<'a>(mountinfo: &'a str, mount_point: &str) -> Option<Vec<&'a str>> {
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&mount_point)).then(|| {
            fields
                .iter()
                .skip(6)
                .take_while(|f| **f != "-")
                .copied()
                .collect()
        })
    })
}

fn tagged(fields: &[&str], tag: &str) -> Option<u32> {
    fields
        .iter()
        .find_map(|f| f.strip_prefix(tag)?.strip_prefix(':')?.parse().ok())
}

/// The peer group `/run/netns` is a slave of, when it is one (`master:N`).
pub fn netns_master(mountinfo: &str) -> Option<u32> {
    tagged(&optional_fields(mountinfo, NETNS_DIR)?, "master")
}

/// Whether `/run/netns` is the shared mount of peer group `group` and a slave of nothing: the
/// mount namespace a slave of `group` should join.
pub fn is_master_of(mountinfo: &str, group: u32) -> bool {
    optional_fields(mountinfo, NETNS_DIR)
        .is_some_and(|f| tagged(&f, "shared") == Some(group) && tagged(&f, "master").is_none())
}

/// Joins the host's mount namespace when this process runs in a private one whose `/run/netns`
/// does not propagate back (see the module docs). **Call it while the process has one thread**
/// (before any runtime starts): `setns(CLONE_NEWNS)` refuses threads that share their file
/// system attributes. Keeps the working directory when it exists in the joined namespace.
pub fn join_host_mount_namespace() -> Result<MountNamespace, MountNsError> {
    let own = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(own).map_err(|source| MountNsError::Read {
        path: own.into(),
        source,
    })?;
    let Some(group) = netns_master(&text) else {
        return Ok(MountNamespace::Unchanged);
    };
    let own_ns = std::fs::metadata("/proc/self/ns/mnt").map(|m| m.ino()).ok();
    let mut seen: HashSet<u64> = own_ns.into_iter().collect();
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map_err(|source| MountNsError::Read {
            path: "/proc".into(),
            source,
        })?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let ns = format!("/proc/{pid}/ns/mnt");
        // Unreadable (another user's, or gone): skip.
        let Ok(inode) = std::fs::metadata(&ns).map(|m| m.ino()) else {
            continue;
        };
        if !seen.insert(inode) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        if !is_master_of(&info, group) {
            continue;
        }
        let Ok(handle) = std::fs::File::open(&ns) else {
            continue;
        };
        let cwd = std::env::current_dir().ok();
        nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
            MountNsError::Setns {
                pid,
                source: e.into(),
            }
        })?;
        if let Some(dir) = cwd.filter(|d| Path::new(d).is_dir()) {
            let _ = std::env::set_current_dir(dir);
        }
        return Ok(MountNamespace::Joined { pid });
    }
    Err(MountNsError::NoHost { group })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Taken on this machine: the host, and a shell under `ip netns exec`.
    const HOST: &str = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
        42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw\n";
    const IP_NETNS_EXEC: &str = "45 44 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
        65 45 254:0 /run/netns /run/netns rw,relatime master:1 - ext4 /dev/vda rw\n\
        66 65 0:4 net:[4026532177] /run/netns/tdm-a rw master:2 - nsfs nsfs rw\n";
    /// `ip netns add` inside made it shared as well (shared and slave).
    const SHARED_SLAVE: &str =
        "65 45 254:0 /run/netns /run/netns rw,relatime shared:7 master:1 - ext4 /dev/vda rw\n";

    #[test]
    fn a_slave_run_netns_names_its_master_group() {
        assert_eq!(netns_master(HOST), None);
        assert_eq!(netns_master(IP_NETNS_EXEC), Some(1));
        assert_eq!(netns_master(SHARED_SLAVE), Some(1));
        assert_eq!(netns_master("27 1 254:0 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn only_the_shared_master_is_the_host() {
        assert!(is_master_of(HOST, 1));
        assert!(!is_master_of(HOST, 2));
        assert!(!is_master_of(IP_NETNS_EXEC, 1));
        assert!(!is_master_of(SHARED_SLAVE, 7), "a slave itself");
        assert!(!is_master_of("", 1));
    }

    #[test]
    fn the_last_mount_on_the_point_counts() {
        let stacked = format!("{HOST}90 42 0:50 / /run/netns rw shared:9 - tmpfs tmpfs rw\n");
        assert!(is_master_of(&stacked, 9));
        assert!(!is_master_of(&stacked, 1));
    }
}
