//! Private Open vSwitch instances: one `ovsdb-server` + `ovs-vswitchd` per network namespace, with their
//! own run/db/log directory, bridges on the userspace (`netdev`) datapath, OpenFlow 1.3.
//!
//! The machine has no `openvswitch` kernel module; the userspace datapath needs no module, and a private
//! instance per edge cloud keeps each edge's switch, flows and logs apart.

use std::path::{Path, PathBuf};

use crate::cmd::{CmdError, Tool};
use crate::process::{read_pidfile, Started};

/// Where the OVS database schema is installed by Debian's openvswitch-common.
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// An error managing an OVS instance.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{daemon} in {netns} did not write its pid file {pidfile}")]
    NoPid {
        daemon: &'static str,
        netns: String,
        pidfile: PathBuf,
    },
}

/// One private OVS instance living in a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsInstance {
    netns: String,
    dir: PathBuf,
}

impl OvsInstance {
    /// An instance in namespace `netns` keeping its database, sockets, pid files and logs in `dir`.
    pub fn new(netns: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            netns: netns.into(),
            dir: dir.into(),
        }
    }

    /// The instance's run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OVSDB socket, as `unix:PATH`.
    pub fn db_target(&self) -> String {
        format!("unix:{}", self.dir.join("db.sock").display())
    }

    /// The OpenFlow management socket of bridge `br`, as `unix:PATH`.
    pub fn of_target(&self, br: &str) -> String {
        format!("unix:{}", self.dir.join(format!("{br}.mgmt")).display())
    }

    /// Creates the database and starts `ovsdb-server` and `ovs-vswitchd` inside the namespace.
    /// Returns the processes started (also those started before a later step failed, through
    /// `on_started`, so the caller can record them for tear-down at once).
    pub fn start(&self, mut on_started: impl FnMut(Started)) -> Result<(), OvsError> {
        let io = |source| OvsError::Io {
            path: self.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let db = self.dir.join("conf.db");
        if !db.exists() {
            Tool::new("ovsdb-tool")
                .arg("create")
                .arg(&db)
                .arg(SCHEMA)
                .run()?;
        }
        let d = |name: &str| self.dir.join(name).display().to_string();
        Tool::in_netns(&self.netns, "ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=punix:{}", d("db.sock")))
            .arg(format!("--pidfile={}", d("ovsdb-server.pid")))
            .arg(format!("--unixctl={}", d("ovsdb-server.ctl")))
            .arg(format!("--log-file={}", d("ovsdb-server.log")))
            .args(["-vconsole:off", "--detach", "--no-chdir"])
            .run()?;
        on_started(self.started("ovsdb-server")?);
        self.vsctl(["--no-wait", "init"])?;
        Tool::in_netns(&self.netns, "ovs-vswitchd")
            .env("OVS_RUNDIR", &self.dir)
            .env("OVS_DBDIR", &self.dir)
            .env("OVS_LOGDIR", &self.dir)
            .arg(self.db_target())
            .arg(format!("--pidfile={}", d("ovs-vswitchd.pid")))
            .arg(format!("--unixctl={}", d("ovs-vswitchd.ctl")))
            .arg(format!("--log-file={}", d("ovs-vswitchd.log")))
            .args(["-vconsole:off", "--detach", "--no-chdir"])
            .run()?;
        on_started(self.started("ovs-vswitchd")?);
        Ok(())
    }

    fn started(&self, daemon: &'static str) -> Result<Started, OvsError> {
        let pidfile = self.dir.join(format!("{daemon}.pid"));
        let pid = read_pidfile(&pidfile).ok_or_else(|| OvsError::NoPid {
            daemon,
            netns: self.netns.clone(),
            pidfile: pidfile.clone(),
        })?;
        Ok(Started {
            name: format!("{daemon}@{}", self.netns),
            pid,
            marker: self.dir.display().to_string(),
        })
    }

    /// Runs `ovs-vsctl` against this instance's database.
    pub fn vsctl<I, S>(&self, args: I) -> Result<String, CmdError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Tool::new("ovs-vsctl")
            .arg(format!("--db={}", self.db_target()))
            .args(["--timeout=10"])
            .args(args)
            .stdout()
    }

    /// Adds a bridge on the userspace datapath speaking OpenFlow 1.3, in `secure` fail mode (no
    /// implicit NORMAL flow: the bridge forwards exactly what its flows say).
    pub fn add_bridge(&self, br: &str) -> Result<(), CmdError> {
        self.vsctl([
            "--may-exist",
            "add-br",
            br,
            "--",
            "set",
            "bridge",
            br,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            "fail_mode=secure",
        ])
        .map(drop)
    }

    /// Attaches an existing interface of the namespace to bridge `br`.
    pub fn add_port(&self, br: &str, port: &str) -> Result<(), CmdError> {
        self.vsctl(["--may-exist", "add-port", br, port]).map(drop)
    }

    /// Adds an internal port (a tap interface in the namespace) to bridge `br`.
    pub fn add_internal_port(&self, br: &str, port: &str) -> Result<(), CmdError> {
        self.vsctl([
            "--may-exist",
            "add-port",
            br,
            port,
            "--",
            "set",
            "interface",
            port,
            "type=internal",
        ])
        .map(drop)
    }

    /// The bridges of this instance.
    pub fn bridges(&self) -> Result<Vec<String>, CmdError> {
        Ok(lines(&self.vsctl(["list-br"])?))
    }

    /// The ports of bridge `br`.
    pub fn ports(&self, br: &str) -> Result<Vec<String>, CmdError> {
        Ok(lines(&self.vsctl(["list-ports", br])?))
    }

    /// Runs `ovs-ofctl -O OpenFlow13 CMD unix:BR.mgmt ARGS…`.
    pub fn ofctl(&self, cmd: &str, br: &str, args: &[&str]) -> Result<String, CmdError> {
        Tool::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", cmd])
            .arg(self.of_target(br))
            .args(args)
            .stdout()
    }

    /// Adds flows (in `ovs-ofctl` syntax) to bridge `br` in one atomic bundle.
    pub fn add_flows(&self, br: &str, flows: &[String]) -> Result<(), OvsError> {
        let file = self.dir.join(format!("{br}.flows"));
        std::fs::write(&file, flows.join("\n") + "\n").map_err(|source| OvsError::Io {
            path: file.clone(),
            source,
        })?;
        let path = file.display().to_string();
        self.ofctl("add-flows", br, &["--bundle", &path])?;
        let _ = std::fs::remove_file(&file);
        Ok(())
    }

    /// Deletes the flows of bridge `br` that match `spec` (e.g. `cookie=0x10/-1`).
    pub fn del_flows(&self, br: &str, spec: &str) -> Result<(), CmdError> {
        self.ofctl("del-flows", br, &[spec]).map(drop)
    }

    /// The flows of bridge `br`, one per line, without the reply header.
    pub fn dump_flows(&self, br: &str) -> Result<Vec<String>, CmdError> {
        let text = self.ofctl("dump-flows", br, &[])?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with("OFPST_FLOW") && !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .collect())
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}
