//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::cmd::{CmdError, Tool};

/// Where `ip netns` keeps the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Refers to the namespace `name` (it need not exist).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle in the file system.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Whether the namespace exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Creates the namespace and brings its loopback up.
    pub fn create(&self) -> Result<(), CmdError> {
        Tool::new("ip").args(["netns", "add", &self.name]).run()?;
        self.ip(["link", "set", "lo", "up"])
    }

    /// Deletes the namespace (and with it every interface in it and the peers of its veths).
    pub fn delete(&self) -> Result<(), CmdError> {
        Tool::new("ip").args(["netns", "delete", &self.name]).run()
    }

    /// Runs `ip -n NS ARGS…`.
    pub fn ip<I, S>(&self, args: I) -> Result<(), CmdError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Tool::new("ip").args(["-n", &self.name]).args(args).run()
    }

    /// Runs a program inside the namespace.
    pub fn tool(&self, program: &str) -> Tool {
        Tool::in_netns(&self.name, program)
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), CmdError> {
        self.tool("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")])
            .run()
    }

    /// The namespace's inode: processes whose `/proc/PID/ns/net` has the same inode live in it.
    pub fn inode(&self) -> Option<u64> {
        std::fs::metadata(self.path()).ok().map(|m| m.ino())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result. Sockets
    /// `f` creates live in the namespace, so a process in the root namespace can talk to addresses
    /// that only exist inside it (e.g. a gNB's control API).
    pub fn run_in<F, R>(&self, f: F) -> std::io::Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = std::fs::File::open(self.path())?;
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("thread in namespace panicked"))?
    }

    /// The names of all namespaces that start with `prefix`.
    pub fn list_with_prefix(prefix: &str) -> Vec<Netns> {
        let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.into_iter().map(Netns::new).collect()
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}
