//! The CLI without privileges: the doctor on a machine without the set-up, plans, and bad input.

use std::process::Command;

fn testbed(args: &[&str], path: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
    cmd.args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().expect("run testbed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn doctor_without_the_tools_says_what_is_missing_and_how_to_fix_it() {
    let empty = std::env::temp_dir().join(format!("tb-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    let (ok, out) = testbed(&["doctor"], empty.to_str());
    assert!(!ok, "doctor must fail without tools:\n{out}");
    for want in ["ovs", "criu", "MISSING", "scripts/setup", "tshark"] {
        assert!(out.contains(want), "doctor output lacks `{want}`:\n{out}");
    }
    let (ok, json) = testbed(&["doctor", "--json"], empty.to_str());
    assert!(!ok);
    let checks: serde_json::Value = serde_json::from_str(&json).expect("json");
    let failed = checks
        .as_array()
        .expect("array")
        .iter()
        .filter(|c| c["ok"] == false)
        .count();
    assert!(failed >= 5, "{json}");
    let _ = std::fs::remove_dir(&empty);
}

#[test]
fn plan_prints_the_embedded_default() {
    let (ok, out) = testbed(&["plan"], None);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["name"], "two-site");
    assert_eq!(v["switches"].as_array().map(Vec::len), Some(2));
}

#[test]
fn bad_topology_file_is_a_clear_error() {
    let file = std::env::temp_dir().join(format!("tb-bad-{}.toml", std::process::id()));
    std::fs::write(&file, "name = \"x\"\nsites = []\nspeed = 3\n").expect("write");
    let (ok, out) = testbed(&["plan", "--topology", file.to_str().expect("utf8")], None);
    assert!(!ok);
    assert!(out.contains("speed") && out.contains("error"), "{out}");
    let (ok, out) = testbed(&["plan", "five-site"], None);
    assert!(!ok);
    assert!(out.contains("unknown built-in topology"), "{out}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn experiment_schedule_prints_a_chaos_runs_seeded_events() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let short = dir.join("chaos-short.toml");
    let (ok, out) = testbed(
        &[
            "experiment",
            "schedule",
            short.to_str().expect("utf8"),
            "--run",
            "2",
            "--json",
        ],
        None,
    );
    assert!(ok, "{out}");
    let events: Vec<testbed::chaos::ChaosEvent> = serde_json::from_str(&out).expect("json");
    let (sc, _) = testbed::experiment::load(&short).expect("scenario");
    let spec = sc.chaos.expect("[chaos]");
    let sites = ["site-a".to_owned(), "site-b".to_owned()];
    assert_eq!(
        events,
        testbed::chaos::schedule(&spec, spec.run_seed(2), &sites, "site-a")
    );
    let (ok, text) = testbed(
        &["experiment", "schedule", short.to_str().expect("utf8")],
        None,
    );
    assert!(ok, "{text}");
    assert!(
        text.starts_with("chaos-short run 1: seed 13, 15 events"),
        "{text}"
    );
    let thesis = dir.join("thesis-5.4.toml");
    let (ok, out) = testbed(
        &["experiment", "schedule", thesis.to_str().expect("utf8")],
        None,
    );
    assert!(!ok && out.contains("has no [chaos] table"), "{out}");
}
