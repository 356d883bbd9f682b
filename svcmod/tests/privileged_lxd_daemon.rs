//! Two LXD daemons, one per "edge" network namespace (`tlxd-x`, `tlxd-y`, a veth between
//! them, 10.0.1.1/24 and 10.0.1.2/24), started and stopped with `svcmod::lxd_daemon`: each
//! answers on its socket with its HTTPS address, has the btrfs pool and the image, they trust
//! each other over HTTPS, and stopping them (one with a running container) leaves nothing.
//! Run as root: `cargo test -p svcmod --test privileged_lxd_daemon -- --nocapture`.

use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;
use svcmod::lxd_daemon::{self, Daemon, DaemonError, DaemonSpec, IMAGE_ALIAS};

mod common;
use common::sh;

const PREFIX: &str = "tlxd";

/// The tests share the namespaces (and the machine's two cores): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn skip_reason() -> Option<String> {
    common::lxd_skip_reason(&["curl"])
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

fn ns(edge: char) -> String {
    format!("{PREFIX}-{edge}")
}

fn root() -> PathBuf {
    PathBuf::from(format!("/var/tmp/{PREFIX}-test"))
}

/// The namespaces and daemons of the test; dropping it removes all of it.
struct World {
    daemons: Vec<Daemon>,
}

impl World {
    fn up() -> World {
        sweep();
        for e in ['x', 'y'] {
            ip(&["netns", "add", &ns(e)]);
        }
        let w = World {
            daemons: Vec::new(),
        };
        ip(&[
            "link",
            "add",
            "tlxd-vx",
            "netns",
            &ns('x'),
            "type",
            "veth",
            "peer",
            "tlxd-vy",
            "netns",
            &ns('y'),
        ]);
        for (e, addr) in [('x', "10.0.1.1/24"), ('y', "10.0.1.2/24")] {
            let n = ns(e);
            ip(&["-n", &n, "addr", "add", addr, "dev", &format!("tlxd-v{e}")]);
            ip(&["-n", &n, "link", "set", "lo", "up"]);
            ip(&["-n", &n, "link", "set", &format!("tlxd-v{e}"), "up"]);
        }
        w
    }
}

fn sweep() {
    for e in ['x', 'y'] {
        let _ = lxd_daemon::sweep(&root().join(e.to_string()));
    }
    for e in ['x', 'y'] {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns(e)])
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(root());
}

impl Drop for World {
    fn drop(&mut self) {
        for d in &self.daemons {
            if let Err(e) = lxd_daemon::stop(d) {
                println!("cleanup: {e}");
            }
        }
        sweep();
    }
}

fn spec(e: char, host: u8) -> DaemonSpec {
    let mut s = DaemonSpec::new(
        root().join(e.to_string()),
        ns(e),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, host), 8443),
    );
    s.pool_size_mib = 256;
    s
}

/// (device, inode) of the daemon's pool file, and the loop devices backed by it.
fn pool_loops(d: &Daemon) -> ((u64, u64), Vec<String>) {
    let img = d.dir.join("lxd/disks/default.img");
    let m = std::fs::metadata(&img).expect("pool file");
    ((m.dev(), m.ino()), lxd_daemon::loops_under(&d.dir))
}

/// Loop devices whose backing file has inode `ino` (on any device: the check is generous).
fn loops_with_inode(ino: u64) -> Vec<String> {
    let out = sh(Command::new("losetup").args(["-l", "-n", "-O", "NAME,BACK-INO"]));
    out.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|i| i.parse::<u64>().ok())
                == Some(ino)
        })
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

fn lxc_cgroups(instance: &str) -> Vec<String> {
    let mut found = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroups")
        .flatten()
    {
        for cg in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            let name = cg.file_name().to_string_lossy().into_owned();
            if lxd_daemon::is_instance_cgroup(&name, instance) {
                found.push(cg.path().display().to_string());
            }
        }
    }
    found
}

fn create_and_start(d: &Daemon, name: &str) {
    let body = json!({
        "name": name,
        "source": {"type": "image", "alias": IMAGE_ALIAS},
        "config": {
            "security.privileged": "true",
            "raw.lxc": "lxc.console.path = none\nlxc.init.cmd = /sbin/testbed-init",
            "environment.TESTBED_CMD": "exec sleep 100000",
        },
        "devices": {},
    });
    let op = d
        .request("POST", "/1.0/instances", Some(&body))
        .expect("create");
    d.wait_operation(op["metadata"]["id"].as_str().expect("op id"), 30)
        .expect("created");
    let op = d
        .request(
            "PUT",
            &format!("/1.0/instances/{name}/state"),
            Some(&json!({"action": "start", "timeout": 30})),
        )
        .expect("start");
    d.wait_operation(op["metadata"]["id"].as_str().expect("op id"), 30)
        .expect("started");
    let state = d
        .request("GET", &format!("/1.0/instances/{name}/state"), None)
        .expect("state");
    assert_eq!(state["metadata"]["status"], "Running", "{state}");
}

#[test]
fn two_lxd_daemons_start_trust_each_other_and_leave_nothing() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut world = World::up();
    let specs = [spec('x', 1), spec('y', 2)];
    for s in &specs {
        let began = Instant::now();
        let d = lxd_daemon::start(s).unwrap_or_else(|e| panic!("start {}: {e}", s.netns));
        println!("{}: started in {} ms", s.netns, began.elapsed().as_millis());
        world.daemons.push(d);
    }
    let (x, y) = (world.daemons[0].clone(), world.daemons[1].clone());

    // A second start on a live directory is refused.
    match lxd_daemon::start(&specs[0]) {
        Err(DaemonError::AlreadyRunning { pid, .. }) => assert_eq!(pid, x.pid),
        other => panic!("second start: {other:?}"),
    }
    // The record is what the state file holds.
    assert_eq!(lxd_daemon::load(&x.dir).expect("load"), Some(x.clone()));

    let mut fingerprints = Vec::new();
    for d in [&x, &y] {
        let server = d.request("GET", "/1.0", None).expect("GET /1.0");
        assert_eq!(
            server["metadata"]["config"]["core.https_address"],
            d.https_addr.to_string(),
            "{server}"
        );
        let pool = d
            .request("GET", "/1.0/storage-pools/default", None)
            .expect("pool");
        assert_eq!(pool["metadata"]["driver"], "btrfs", "{pool}");
        let profile = d
            .request("GET", "/1.0/profiles/default", None)
            .expect("profile");
        let devices = profile["metadata"]["devices"].as_object().expect("devices");
        assert!(devices.contains_key("root") && devices.values().all(|v| v["type"] != "nic"));
        let alias = d
            .request("GET", &format!("/1.0/images/aliases/{IMAGE_ALIAS}"), None)
            .expect("image alias");
        fingerprints.push(alias["metadata"]["target"].clone());
        assert!(d.server_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        // The daemon sees its edge's interfaces (its own sysfs and netns).
        let n = d.netns.clone();
        let resources = d.request("GET", "/1.0/networks", None).expect("networks");
        assert!(
            resources
                .to_string()
                .contains(&format!("tlxd-v{}", n.chars().last().expect("edge letter"))),
            "{resources}"
        );
    }
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "the same image bytes on both"
    );
    assert_ne!(fingerprints[0], Value::Null);

    // Trust: each lists the other's certificate, and X's certificate is trusted at Y's HTTPS
    // address from X's namespace (and the other way round).
    lxd_daemon::trust_each_other(&x, &y).expect("trust");
    lxd_daemon::trust_each_other(&x, &y).expect("trust again is fine");
    for (a, b) in [(&x, &y), (&y, &x)] {
        let certs = a
            .request("GET", "/1.0/certificates?recursion=1", None)
            .expect("certificates");
        assert!(
            certs.to_string().contains(&b.cert_base64()[..40]),
            "{certs}"
        );
        let out = sh(Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", a.netns))
            .args(["--", "curl", "-sS", "-k", "--max-time", "5", "--cert"])
            .arg(a.dir.join("lxd/server.crt"))
            .arg("--key")
            .arg(a.dir.join("lxd/server.key"))
            .arg(format!("https://{}/1.0", b.https_addr)));
        assert!(out.contains(r#""auth":"trusted""#), "{out}");
    }

    // A running container at X: stop must end it too.
    let began = Instant::now();
    create_and_start(&x, "tlxd-c1");
    println!(
        "container created and started in {} ms",
        began.elapsed().as_millis()
    );
    assert!(!lxc_cgroups("tlxd-c1").is_empty());

    for d in [&x, &y] {
        let ((_, ino), loops) = pool_loops(d);
        assert!(!loops.is_empty(), "the pool is loop-backed");
        let mnt_ns = d.mnt_ns;
        assert!(!lxd_daemon::pids_in_mnt_ns(mnt_ns).is_empty());
        let began = Instant::now();
        lxd_daemon::stop(d).unwrap_or_else(|e| panic!("stop {}: {e}", d.netns));
        println!("{}: stopped in {} ms", d.netns, began.elapsed().as_millis());
        assert!(!d.is_running());
        assert!(!netkit::process::is_alive(d.pid));
        assert_eq!(lxd_daemon::pids_in_mnt_ns(mnt_ns), Vec::<i32>::new());
        assert_eq!(loops_with_inode(ino), Vec::<String>::new());
        let dir = d.dir.display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mountinfo.contains(&dir), "{mountinfo}");
        assert!(!d.dir.exists());
    }
    assert_eq!(lxc_cgroups("tlxd-c1"), Vec::<String>::new());
    world.daemons.clear();
}

fn op_id(v: &Value) -> String {
    v["metadata"]["id"]
        .as_str()
        .expect("operation id")
        .to_owned()
}

/// One live move of `name` from `src` to `dst` with the REST API only (pull mode); returns the
/// time until the target's operation succeeded, then deletes the source (retrying while LXD
/// still says "busy running a stop operation").
fn live_move(src: &Daemon, dst: &Daemon, name: &str) -> (u128, u128) {
    let began = Instant::now();
    let inst = src
        .request("GET", &format!("/1.0/instances/{name}"), None)
        .expect("instance");
    let op = src
        .request(
            "POST",
            &format!("/1.0/instances/{name}"),
            Some(&json!({"migration": true, "live": true, "instance_only": true})),
        )
        .expect("source POST");
    let src_op = op_id(&op);
    let config: serde_json::Map<String, Value> = inst["metadata"]["config"]
        .as_object()
        .expect("config")
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let body = json!({
        "name": name,
        "architecture": inst["metadata"]["architecture"],
        "profiles": inst["metadata"]["profiles"],
        "config": config,
        "devices": inst["metadata"]["devices"],
        "source": {
            "type": "migration",
            "mode": "pull",
            "operation": format!("https://{}/1.0/operations/{src_op}", src.https_addr),
            "certificate": src.server_cert_pem,
            "secrets": op["metadata"]["metadata"],
            "live": true,
            "instance_only": true,
        },
    });
    let top = dst
        .request("POST", "/1.0/instances", Some(&body))
        .expect("target POST");
    dst.wait_operation(&op_id(&top), 30).expect("target op");
    let moved_ms = began.elapsed().as_millis();
    src.wait_operation(&src_op, 10).expect("source op");
    let began = Instant::now();
    loop {
        let deleted = src
            .request("DELETE", &format!("/1.0/instances/{name}"), None)
            .and_then(|op| src.wait_operation(&op_id(&op), 10));
        match deleted {
            Ok(_) => break,
            Err(e) => {
                assert!(began.elapsed().as_secs() < 10, "source delete: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    (moved_ms, began.elapsed().as_millis())
}

fn ping_from(netns: &str, host_side: &str) -> bool {
    let _ = Command::new("ip")
        .args(["-n", netns, "addr", "add", "20.0.0.1/16", "dev", host_side])
        .status();
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["--", "ping", "-c1", "-W2", "20.0.0.51"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_container_with_a_p2p_nic_moves_live_there_and_back() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut world = World::up();
    for s in [spec('x', 1), spec('y', 2)] {
        world
            .daemons
            .push(lxd_daemon::start(&s).unwrap_or_else(|e| panic!("start {}: {e}", s.netns)));
    }
    let (x, y) = (world.daemons[0].clone(), world.daemons[1].clone());
    lxd_daemon::trust_each_other(&x, &y).expect("trust");

    let name = "tlxd-m1";
    let body = json!({
        "name": name,
        "source": {"type": "image", "alias": IMAGE_ALIAS},
        "config": {
            "security.privileged": "true",
            "raw.lxc": "lxc.console.path = none\nlxc.init.cmd = /sbin/testbed-init",
            "environment.TESTBED_CMD":
                "ip addr add 20.0.0.51/16 dev eth0; ip link set eth0 up; exec sleep 100000",
        },
        "devices": {"eth0": {"type": "nic", "nictype": "p2p", "name": "eth0",
            "host_name": "tlxd-s1", "hwaddr": "02:00:00:00:00:51"}},
    });
    let op = x
        .request("POST", "/1.0/instances", Some(&body))
        .expect("create");
    x.wait_operation(&op_id(&op), 30).expect("created");
    let op = x
        .request(
            "PUT",
            &format!("/1.0/instances/{name}/state"),
            Some(&json!({"action": "start", "timeout": 30})),
        )
        .expect("start");
    x.wait_operation(&op_id(&op), 30).expect("started");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(ping_from(&x.netns, "tlxd-s1"), "reachable at X");

    for (src, dst) in [(&x, &y), (&y, &x)] {
        let (moved_ms, delete_ms) = live_move(src, dst, name);
        println!(
            "{} -> {}: moved in {moved_ms} ms, source deleted after {delete_ms} ms",
            src.netns, dst.netns
        );
        // The host side of the p2p veth is back under the same name at the target, and the
        // address the container's init set is kept.
        assert!(
            ping_from(&dst.netns, "tlxd-s1"),
            "reachable at {}",
            dst.netns
        );
    }
    for d in [&x, &y] {
        lxd_daemon::stop(d).unwrap_or_else(|e| panic!("stop {}: {e}", d.netns));
    }
    assert_eq!(lxc_cgroups(name), Vec::<String>::new());
    world.daemons.clear();
}
