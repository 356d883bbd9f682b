//! `testbed doctor`: checks that this machine can run the testbed and says how to fix what is missing.

use netkit::cmd::{on_path, Tool};
use netkit::ovs::OvsInstance;
use netkit::process;
use netkit::Netns;
use serde::Serialize;
use std::time::Duration;

/// The fix for everything the set-up script installs.
pub const SETUP_FIX: &str = "run scripts/setup (as root)";
/// Lowest CRIU version that dumps TCP sockets on this kernel.
pub const CRIU_MIN: (u32, u32) = (4, 2);
/// Free space wanted under /run (tmpfs: state, OVS databases) and /var/tmp (images, captures).
pub const MIN_FREE_BYTES: u64 = 1 << 30;

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// How to fix it, when not ok.
    pub fix: Option<String>,
}

fn check(name: &'static str, res: Result<String, (String, String)>) -> Check {
    match res {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
            fix: None,
        },
        Err((detail, fix)) => Check {
            name,
            ok: false,
            detail,
            fix: Some(fix),
        },
    }
}

/// Runs every check. Checks that need root are reported as failing (not skipped) without it.
pub fn run() -> Vec<Check> {
    let root = nix::unistd::geteuid().is_root();
    let need_root = || {
        (
            "needs root".to_owned(),
            "run as root (in a root shell, or through sudo)".to_owned(),
        )
    };
    let scratch = Netns::new(format!("tbdoctor-{}", std::process::id()));
    let mut checks = vec![check(
        "root",
        if root {
            Ok("running as root".into())
        } else {
            Err(need_root())
        },
    )];
    let tools = [
        ("iproute2", "ip"),
        ("ethtool", "ethtool"),
        ("nftables", "nft"),
        ("ovs", "ovs-vswitchd"),
        ("ovsdb", "ovsdb-server"),
        ("tcpdump", "tcpdump"),
        ("tshark", "tshark"),
        ("iperf3", "iperf3"),
        ("lxc", "lxc-checkpoint"),
        ("lxd", "lxd"),
        ("btrfs", "mkfs.btrfs"),
        ("losetup", "losetup"),
        ("nginx", "nginx"),
        ("ffmpeg", "ffmpeg"),
        ("nsenter", "nsenter"),
    ];
    for (name, program) in tools {
        let found = on_path(program) || on_path(&format!("/usr/sbin/{program}"));
        checks.push(check(
            name,
            if found {
                Ok(format!("{program} found"))
            } else {
                Err((format!("{program} not found"), SETUP_FIX.into()))
            },
        ));
    }
    checks.push(check(
        "nginx-rtmp",
        if std::path::Path::new("/usr/share/nginx/modules-available/mod-rtmp.conf").exists()
            || std::path::Path::new("/usr/lib/nginx/modules/ngx_rtmp_module.so").exists()
        {
            Ok("RTMP module installed".into())
        } else {
            Err(("libnginx-mod-rtmp not installed".into(), SETUP_FIX.into()))
        },
    ));
    checks.push(check("criu", criu()));
    let ns_ok = root && scratch.create().is_ok();
    checks.push(check(
        "netns",
        if !root {
            Err(need_root())
        } else if ns_ok {
            Ok(format!("created {scratch}"))
        } else {
            Err((
                "cannot create a network namespace".into(),
                "the kernel needs CONFIG_NET_NS and the iproute2 package".into(),
            ))
        },
    ));
    checks.push(check(
        "veth",
        if !ns_ok {
            Err(("needs a namespace".into(), "fix netns first".into()))
        } else {
            scratch
                .ip(["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
                .map(|()| "created a veth pair".into())
                .map_err(|e| (e.to_string(), "the kernel needs the veth driver".into()))
        },
    ));
    checks.push(check(
        "tun",
        if !ns_ok {
            Err(("needs a namespace".into(), "fix netns first".into()))
        } else {
            scratch
                .ip(["tuntap", "add", "dev", "t0", "mode", "tun"])
                .map(|()| "created a TUN device".into())
                .map_err(|e| {
                    (
                        e.to_string(),
                        "the kernel needs the tun driver and /dev/net/tun".into(),
                    )
                })
        },
    ));
    checks.push(check(
        "nft",
        if !ns_ok {
            Err(("needs a namespace".into(), "fix netns first".into()))
        } else {
            scratch
                .tool("nft")
                .args(["add", "table", "inet", "tbdoctor"])
                .run()
                .map(|()| "created an nftables table".into())
                .map_err(|e| (e.to_string(), SETUP_FIX.into()))
        },
    ));
    checks.push(check(
        "ovs-userspace",
        if !ns_ok {
            Err(("needs a namespace".into(), "fix netns first".into()))
        } else {
            ovs_scratch(&scratch)
        },
    ));
    if ns_ok {
        let _ = scratch.delete();
    }
    for dir in ["/run", "/var/tmp"] {
        checks.push(check("disk", free_space(dir)));
    }
    checks
}

fn criu() -> Result<String, (String, String)> {
    let out = Tool::new("criu")
        .arg("--version")
        .stdout()
        .map_err(|e| (e.to_string(), SETUP_FIX.to_owned()))?;
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .unwrap_or("")
        .to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if v < CRIU_MIN {
        return Err((
            format!(
                "criu {version} is older than {}.{} (cannot dump TCP on this kernel)",
                CRIU_MIN.0, CRIU_MIN.1
            ),
            SETUP_FIX.into(),
        ));
    }
    Tool::new("criu")
        .arg("check")
        .stdout()
        .map(|_| format!("criu {version}, `criu check` passed"))
        .map_err(|e| (format!("criu {version}: {e}"), SETUP_FIX.into()))
}

fn ovs_scratch(ns: &Netns) -> Result<String, (String, String)> {
    let dir = std::env::temp_dir().join(format!("tbdoctor-ovs-{}", std::process::id()));
    let ovs = OvsInstance::new(ns.name(), &dir);
    let mut started = Vec::new();
    let res = ovs
        .start(|p| started.push(p))
        .map_err(|e| e.to_string())
        .and_then(|()| ovs.add_bridge("brdoc").map_err(|e| e.to_string()))
        .and_then(|()| {
            ovs.vsctl(["del-br", "brdoc"])
                .map(drop)
                .map_err(|e| e.to_string())
        });
    for p in started.iter().rev() {
        process::terminate(p, Duration::from_secs(3));
    }
    let _ = std::fs::remove_dir_all(&dir);
    res.map(|()| "added and deleted a bridge on the userspace datapath".into())
        .map_err(|e| (e, SETUP_FIX.into()))
}

fn free_space(dir: &str) -> Result<String, (String, String)> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        (
            format!("cannot stat {dir}: {e}"),
            "check the file system".into(),
        )
    })?;
    let free = st.blocks_available() * st.fragment_size();
    let msg = format!("{dir}: {} MiB free", free >> 20);
    if free >= MIN_FREE_BYTES {
        Ok(msg)
    } else {
        Err((
            msg,
            format!("free at least {} MiB in {dir}", MIN_FREE_BYTES >> 20),
        ))
    }
}

/// Renders the checks as a table.
pub fn table(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(4);
    let mut out = format!("{:w$}  {:7}  DETAIL\n", "CHECK", "OK");
    for c in checks {
        let ok = if c.ok { "ok" } else { "MISSING" };
        out.push_str(&format!("{:w$}  {ok:7}  {}", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("  -> fix: {fix}"));
        }
        out.push('\n');
    }
    out
}
