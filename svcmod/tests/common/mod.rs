//! Shared by svcmod's integration tests: the two-edge world of the privileged tests, the probe
//! service and its stream client, and a fake SMO ([`fake_smo`]).
//!
//! The world (prefix `tsv-<letter>`, or another with [`Fabric::up_prefixed`], e.g. the LXC tests'
//! `tlx-<letter>`; everything in namespaces it makes):
//!
//! ```text
//!   <p>-ue: n6 20.0.0.1/16 (anycast gateway MAC), UE 192.168.1.2 on lo ──┐
//!                                                                        │ Linux bridge br0 in <p>-fab
//!   <p>-edge-x: OVS br-x (netdev, standalone), LOCAL 10.0.1.1/24, upl ───┤  (client segment and
//!   <p>-edge-y: OVS br-y (netdev, standalone), LOCAL 10.0.1.2/24, upl ───┘   backhaul share it)
//!   service p50: 20.0.0.50/16, 02:00:00:00:00:50, port s-p50 on br-x, later br-y
//! ```
//!
//! One shared L2 with the client on it, so after a migration the service's MAC is learned at its
//! new place exactly as in the testbed; the backhaul rides the same L2 (its own subnet).

#![allow(dead_code)]

pub mod daemon;
pub mod fake_smo;

use netkit::link::{self, End};
use netkit::ovs::OvsInstance;
use netkit::process::{pids_in_netns, terminate, Started};
use netkit::Netns;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use svcmod::container::EdgeSite;

pub const SERVICE_ID: &str = "p50";
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 50);
pub const SERVICE_MAC: &str = "02:00:00:00:00:50";
pub const UE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// Backhaul addresses of edges X and Y.
pub const X_BACKHAUL: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const Y_BACKHAUL: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: run as root (it makes network namespaces, OVS instances and runs CRIU)"
    );
}

/// The probe binary built from the testbed crate.
pub fn tbprobe() -> PathBuf {
    if let Some(p) = std::env::var_os("TBPROBE") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test>-… → target/<profile>/tbprobe
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("tbprobe"))
        .expect("target dir");
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p testbed --bin tbprobe` (same CARGO_TARGET_DIR) or set TBPROBE",
        p.display()
    );
    p
}

pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn in_netns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// `SVCMOD_KEEP_WORK=1` keeps images, CRIU and OVS logs for debugging.
pub fn keep_work() -> bool {
    std::env::var_os("SVCMOD_KEEP_WORK").is_some()
}

/// The two edges, the fabric and the UE; dropping it removes all of it (also when the test
/// fails).
pub struct Fabric {
    pub prefix: String,
    /// The world's directory (OVS run directories, work directories, logs).
    pub root: PathBuf,
    daemons: Vec<Started>,
    pub x: EdgeSite,
    pub y: EdgeSite,
}

impl Fabric {
    /// Builds the world `tsv-<letter>` (removing leftovers of an earlier run first).
    pub fn up(letter: char) -> Fabric {
        Self::up_prefixed(&format!("tsv-{letter}"))
    }

    /// Builds the world with namespace prefix `prefix` (removing leftovers of an earlier run
    /// first).
    pub fn up_prefixed(prefix: &str) -> Fabric {
        require_root();
        let prefix = prefix.to_owned();
        let root = PathBuf::from(format!("/dev/shm/{prefix}-test"));
        sweep(&prefix, &root, &[]);
        std::fs::create_dir_all(&root).expect("world dir");
        let mut daemons = Vec::new();
        let (x, y) = match build(&prefix, &root, &mut daemons) {
            Ok(sites) => sites,
            Err(e) => {
                sweep(&prefix, &root, &daemons);
                panic!("cannot build the test world: {e}");
            }
        };
        let fabric = Fabric {
            prefix,
            root,
            daemons,
            x,
            y,
        };
        // The backhaul works (through both userspace datapaths).
        let out = sh(in_netns(&fabric.ns("edge-x"), "ping").args(["-c1", "-W2", "10.0.1.2"]));
        assert!(out.contains("1 received"), "{out}");
        fabric
    }

    /// The namespace `<prefix>-<name>`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Starts the stream client at the UE (one connection to the service, never reconnects).
    pub fn start_client(&self, seconds: f64) -> Child {
        in_netns(&self.ns("ue"), &tbprobe().display().to_string())
            .args([
                "stream",
                &format!("{SERVICE_IP}:5000"),
                "--seconds",
                &seconds.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client")
    }

    /// Waits until something listens on TCP `port` in namespace `ns`.
    pub async fn wait_listening(&self, ns: &str, port: u16, limit: Duration) {
        let start = Instant::now();
        loop {
            let out = sh(in_netns(ns, "ss").args(["-tlnH"]));
            if out.contains(&format!(":{port}")) {
                return;
            }
            assert!(start.elapsed() < limit, "nothing listens on {port} in {ns}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        sweep(&self.prefix, &self.root, &self.daemons);
    }
}

/// Removes everything with the prefix: processes inside its namespaces (by PID), the OVS
/// daemons (by recorded PID), the namespaces, the world's directory.
pub fn sweep(prefix: &str, root: &Path, daemons: &[Started]) {
    for d in daemons {
        terminate(d, Duration::from_secs(2));
    }
    let mine = Netns::list_with_prefix(&format!("{prefix}-"));
    for ns in &mine {
        if let Some(inode) = ns.inode() {
            for pid in pids_in_netns(inode) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    for ns in &mine {
        let _ = ns.delete();
    }
    if keep_work() {
        println!("kept {} (SVCMOD_KEEP_WORK)", root.display());
    } else {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Builds the two edges, the fabric and the UE; returns the edge sites.
fn build(
    prefix: &str,
    root: &Path,
    daemons: &mut Vec<Started>,
) -> Result<(EdgeSite, EdgeSite), Box<dyn std::error::Error>> {
    let name = |n: &str| format!("{prefix}-{n}");
    let fab = Netns::new(name("fab"));
    fab.create()?;
    link::create_bridge(&fab, "br0")?;
    let mut sites = Vec::new();
    for (i, e) in ["x", "y"].into_iter().enumerate() {
        let ns = Netns::new(name(&format!("edge-{e}")));
        ns.create()?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        let ovs = OvsInstance::new(ns.name(), root.join(format!("ovs-{e}")));
        ovs.start(|s| daemons.push(s))?;
        let br = format!("br-{e}");
        ovs.vsctl([
            "add-br",
            &br,
            "--",
            "set",
            "bridge",
            &br,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            "fail_mode=standalone",
        ])?;
        link::create_veth(
            &End {
                netns: ns.name().into(),
                ifname: "upl".into(),
            },
            &End {
                netns: fab.name().into(),
                ifname: format!("up-{e}"),
            },
            1500,
        )?;
        link::tx_checksum_off(&ns, "upl")?;
        link::tx_checksum_off(&fab, &format!("up-{e}"))?;
        link::attach_to_bridge(&fab, &format!("up-{e}"), "br0")?;
        ovs.add_port(&br, "upl")?;
        link::set_up(&ns, &br)?;
        link::add_addr(&ns, &br, format!("10.0.1.{}/24", 1 + i).parse()?)?;
        sites.push(EdgeSite {
            edge: e.into(),
            netns: ns,
            ovs,
            bridge: br,
        });
    }
    let ue = Netns::new(name("ue"));
    ue.create()?;
    ue.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    link::create_veth(
        &End {
            netns: ue.name().into(),
            ifname: "n6".into(),
        },
        &End {
            netns: fab.name().into(),
            ifname: "ue".into(),
        },
        1500,
    )?;
    link::attach_to_bridge(&fab, "ue", "br0")?;
    link::set_mac(&ue, "n6", "02:14:00:00:00:01")?;
    link::add_addr(&ue, "n6", "20.0.0.1/16".parse()?)?;
    link::add_addr(&ue, "lo", format!("{UE_IP}/32").parse()?)?;
    // The UE's connections leave from its pool address, as they would through a UPF.
    ue.ip([
        "route",
        "replace",
        "20.0.0.0/16",
        "dev",
        "n6",
        "src",
        &UE_IP.to_string(),
    ])?;
    let y = sites.pop().ok_or("no edge y")?;
    let x = sites.pop().ok_or("no edge x")?;
    Ok((x, y))
}

/// What `tbprobe stream` printed.
#[derive(Debug, serde::Deserialize)]
pub struct StreamReport {
    pub records: u64,
    pub bytes: u64,
    pub corrupt_records: u64,
    pub max_gap_ms: f64,
    pub max_gap_end_ms: f64,
    pub disconnected: Option<String>,
    pub intact: bool,
    /// Why not intact, naming what was expected.
    #[serde(default)]
    pub problem: Option<String>,
}

impl StreamReport {
    /// Prints the report under `label` and checks what a stream that survived must show: intact
    /// (records kept coming), never disconnected, nothing corrupt.
    pub fn print_and_check(&self, label: &str) {
        println!(
            "{label}: {} records, largest gap {:.1} ms (ended at {:.0} ms), corrupt {}, disconnected {:?}",
            self.records, self.max_gap_ms, self.max_gap_end_ms, self.corrupt_records, self.disconnected
        );
        assert!(self.intact, "{self:?}");
        assert!(self.disconnected.is_none(), "{self:?}");
        assert_eq!(self.corrupt_records, 0, "{self:?}");
    }
}

pub async fn client_report(child: Child) -> StreamReport {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("client output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client printed no report ({e}): stdout {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn iface(ns: &str, ifname: &str) -> netkit::link::IfaceInfo {
    netkit::link::list_ifaces(&Netns::new(ns))
        .expect("ip addr")
        .into_iter()
        .find(|i| i.name == ifname)
        .unwrap_or_else(|| panic!("{ifname} missing in {ns}"))
}

pub fn tx_checksum_is_off(ns: &str, ifname: &str) -> bool {
    sh(in_netns(ns, "ethtool").args(["-k", ifname]))
        .lines()
        .any(|l| l.trim() == "tx-checksumming: off")
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Why an LXD test cannot run here, if it cannot: not root, one of the tools LXD daemons need
/// (or of `more`) not installed, no busybox (the image), no `/var/lib/lxd` (the lxd package).
pub fn lxd_skip_reason(more: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (LXD, namespaces, loop devices and OVS need it)".into());
    }
    let base = [
        "lxd",
        "lxc",
        "mkfs.btrfs",
        "nsenter",
        "unshare",
        "setsid",
        "losetup",
        "tar",
    ];
    if let Some(tool) = base.iter().chain(more).find(|t| !netkit::cmd::on_path(t)) {
        return Some(format!("`{tool}` is not installed (scripts/setup)"));
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox is missing (busybox-static)".into());
    }
    if !Path::new("/var/lib/lxd").is_dir() {
        return Some("/var/lib/lxd is missing (the lxd package)".into());
    }
    None
}
