//! Processes the testbed starts: recorded by PID, checked before they are signalled, ended by PID only.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A process the testbed started, as recorded in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// What it is, e.g. `ovs-vswitchd@edge-x`.
    pub name: String,
    pub pid: i32,
    /// A string its command line contains (e.g. its private run directory), checked before signalling
    /// so that a PID reused by an unrelated process is never touched.
    pub marker: String,
}

impl Started {
    /// Whether this very process is still running (alive, not a zombie, and still ours).
    pub fn is_running(&self) -> bool {
        is_alive(self.pid) && cmdline(self.pid).is_some_and(|c| c.contains(&self.marker))
    }
}

/// Marks every descriptor of this process above stderr close-on-exec, so that what it starts
/// from now on inherits only stdin, stdout and stderr. A long-lived child (a network function,
/// and the services it starts in turn) must not hold the caller's descriptors: a locked file
/// among them (`flock FILE cmd` hands its lock down) makes CRIU refuse to dump the service
/// ("Some file locks are hold by dumping tasks!"), and an open pipe keeps a reader waiting.
#[allow(unsafe_code)]
pub fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD / F_SETFD read and set one descriptor's flags and touch no memory; a
        // descriptor closed meanwhile (the directory's own) answers EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold spaces or ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The command line of `pid`, arguments joined with spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The parent PID of `pid` (from `/proc/PID/stat`; the command name may hold spaces and `)`),
/// if it still runs.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reads a PID file as daemons write it.
pub fn read_pidfile(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Ends a recorded process: SIGTERM, then SIGKILL after `grace`. Returns whether it had to be
/// signalled at all (false when it was already gone or the PID now belongs to someone else).
pub fn terminate(p: &Started, grace: Duration) -> bool {
    if !p.is_running() {
        return false;
    }
    signal_and_wait(p.pid, grace);
    true
}

/// SIGTERM, wait up to `grace`, then SIGKILL and wait briefly. For PIDs already checked to be ours.
pub fn signal_and_wait(pid: i32, grace: Duration) {
    let target = Pid::from_raw(pid);
    let _ = kill(target, Signal::SIGTERM);
    if wait_gone(pid, grace) {
        return;
    }
    tracing::warn!(pid, "process ignored SIGTERM, sending SIGKILL");
    let _ = kill(target, Signal::SIGKILL);
    wait_gone(pid, Duration::from_secs(2));
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !is_alive(pid)
}

/// The PIDs of all live processes whose network namespace has inode `netns_inode`.
pub fn pids_in_netns(netns_inode: u64) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == netns_inode)
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_is_the_kernels() {
        let me = std::process::id() as i32;
        assert_eq!(parent_pid(me), Some(nix::unistd::getppid().as_raw()));
        assert_eq!(parent_pid(-1), None);
    }

    #[test]
    fn own_process_is_alive_and_has_a_cmdline() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(cmdline(me).is_some_and(|c| !c.is_empty()));
        assert!(!is_alive(i32::MAX));
    }

    #[test]
    fn terminate_ends_only_a_matching_process() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        // Until the child has exec'd, its command line is still the test binary's.
        let start = Instant::now();
        while !cmdline(pid).is_some_and(|c| c.contains("sleep 30"))
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let wrong = Started {
            name: "sleep".into(),
            pid,
            marker: "not-in-its-cmdline".into(),
        };
        assert!(!terminate(&wrong, Duration::from_millis(100)));
        assert!(
            is_alive(pid),
            "a non-matching marker must leave the process alone"
        );
        let right = Started {
            marker: "sleep 30".into(),
            ..wrong
        };
        // Reap in the background so the child does not linger as a zombie.
        let reaper = std::thread::spawn(move || {
            let mut child = child;
            child.wait()
        });
        assert!(terminate(&right, Duration::from_secs(2)));
        let status = reaper.join().expect("reaper").expect("wait");
        assert!(!status.success());
        assert!(!right.is_running());
    }
    #[test]
    fn inherited_descriptors_become_close_on_exec() {
        let f = std::fs::File::open("/proc/self/status").expect("open");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        cloexec_inherited_fds();
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        let octal = flags
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(str::trim)
            .expect("flags line");
        let v = u32::from_str_radix(octal, 8).expect("octal");
        assert_ne!(v & 0o2000000, 0, "O_CLOEXEC not set: {octal}");
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("[ -e /proc/$$/fd/{fd} ]"))
            .status()
            .expect("sh");
        assert!(!child.success(), "the child still has fd {fd}");
    }
}
