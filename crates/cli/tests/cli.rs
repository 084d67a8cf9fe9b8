//! The `teeshm` command as a user runs it.

use std::process::Command;

fn teeshm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_teeshm"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn demo_ends_ok_and_writes_the_picture() {
    let dir = std::env::temp_dir().join(format!("teeshm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("w.svg");
    let out = teeshm(&["demo", "--svg", svg.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.trim_end().ends_with("demo: OK"), "{stdout}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let out = teeshm(&["demo", "--json", "--svg", svg.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn stress_reports_zero_violations() {
    let out = teeshm(&[
        "stress",
        "--guests",
        "3",
        "--ops",
        "500",
        "--seed",
        "5",
        "--threads",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("violations: 0"));
    let out = teeshm(&["stress", "--guests", "2", "--ops", "50", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["violations"], 0);
}

#[test]
fn replay_and_inspect() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/two-guests.jsonl"
    );
    let out = teeshm(&["replay", example]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10, "nine operations and the summary");
    assert!(lines[..9].iter().all(|l| l["ok"] == true));
    assert_eq!(lines[9]["violations"], 0);
    let out = teeshm(&["inspect", "--json", "--scenario", example]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["guests"].as_array().unwrap().len(),
        1,
        "guest 2 was destroyed"
    );
    let out = teeshm(&["inspect"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("violations: 0"));
}

#[test]
fn a_malformed_file_is_refused_with_its_line_and_status_2() {
    let dir = std::env::temp_dir().join(format!("teeshm-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"op\":\"create_guest\",\"guest\":1}\n{\"op\":\"register\",\"guest\":1}\n",
    )
    .unwrap();
    let out = teeshm(&["replay", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("missing field"),
        "{stderr}"
    );
    let out = teeshm(&["replay", "/nonexistent/file"]);
    assert_eq!(out.status.code(), Some(2));
}
