//! The whole system: the demo scenario, stress runs on several CPUs, scenario files.

use std::sync::Arc;
use teeshm_sim::scenario::{self, Runner};
use teeshm_sim::{System, SystemConfig, demo, stress};

#[test]
fn the_demo_passes_every_check() {
    let outcome = demo::scenario().expect("demo runs");
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    assert_eq!(outcome.lines.len(), 4);
    for line in &outcome.lines {
        assert!(line.cache_hit, "guest {}", line.guest);
        assert_eq!(line.rpc_bytes, 100_000);
        assert_eq!(line.invokes, 7);
    }
    let svg = demo::picture(&outcome.system);
    assert!(svg.starts_with("<svg") && svg.contains("<title>guest 1 "));
    assert!(
        !svg.contains("<title>guest 3 "),
        "no mapping of the destroyed guest is drawn"
    );
}

#[test]
fn stress_on_three_cpus_finds_no_violation() {
    let system = Arc::new(
        System::new(SystemConfig {
            guests: 6,
            ..SystemConfig::default()
        })
        .unwrap(),
    );
    let outcome = stress::run(
        system.clone(),
        stress::StressPlan {
            threads: 3,
            ..stress::StressPlan::new(6, 3000, 42)
        },
        &|_| {},
    );
    assert!(outcome.violation.is_none(), "{:?}", outcome.violation);
    assert_eq!(outcome.ops, 3000);
    assert!(outcome.succeeded > 2500);
    assert!(system.check().is_empty());
}

#[test]
fn a_stress_log_replays_to_the_same_state() {
    let system = Arc::new(System::new(SystemConfig::default()).unwrap());
    let outcome = stress::run(system.clone(), stress::StressPlan::new(4, 400, 9), &|_| {});
    assert!(outcome.violation.is_none());
    let text: String = outcome
        .log
        .iter()
        .map(|op| serde_json::to_string(op).unwrap() + "\n")
        .collect();
    let replayed = Arc::new(System::new(SystemConfig::default()).unwrap());
    let mut runner = Runner::new(replayed.clone());
    for (_, op) in scenario::parse(&text).unwrap() {
        runner.run(&op);
    }
    let snap = |s: &System| {
        let mut v: Vec<_> = s
            .tee
            .snapshots()
            .into_iter()
            .map(|g| (g.id, g.registered_buffers, g.registered_pages))
            .collect();
        v.sort();
        v
    };
    assert_eq!(snap(&system), snap(&replayed));
    assert!(replayed.check().is_empty());
}

#[test]
fn the_example_scenario_runs_clean() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/two-guests.jsonl"
    ))
    .unwrap();
    let system = Arc::new(System::new(SystemConfig::default()).unwrap());
    let mut runner = Runner::new(system.clone());
    for (line, op) in scenario::parse(&text).unwrap() {
        let r = runner.run(&op);
        assert!(r.ok, "line {line}: {r:?}");
    }
    assert!(system.check().is_empty());
}

#[test]
fn malformed_scenarios_name_the_line() {
    for (text, line, needle) in [
        (
            "{\"op\":\"create_guest\",\"guest\":1}\n{\"op\":\"fly\"}\n",
            2,
            "unknown variant",
        ),
        (
            "\n# comment\n{\"op\":\"register\",\"guest\":1,\"cookie\":1,\"size\":0}\n",
            3,
            "size 0",
        ),
        (
            "{\"op\":\"register\",\"guest\":1,\"cookie\":1,\"size\":5,\"colour\":3}\n",
            1,
            "unknown field",
        ),
        (
            "{\"op\":\"write\",\"guest\":1,\"ipa\":0,\"hex\":\"abc\"}\n",
            1,
            "hex",
        ),
        (
            "{\"op\":\"invoke\",\"guest\":1,\"cmd\":1,\"params\":[{\"value\":{\"dir\":\"in\"}},{\"value\":{\"dir\":\"in\"}},{\"value\":{\"dir\":\"in\"}},{\"value\":{\"dir\":\"in\"}},{\"value\":{\"dir\":\"in\"}}]}\n",
            1,
            "at most 4",
        ),
        ("not json\n", 1, "expected"),
    ] {
        let e = scenario::parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn hostile_raw_smcs_leave_the_system_in_agreement() {
    let system = Arc::new(System::new(SystemConfig::default()).unwrap());
    let mut runner = Runner::new(system.clone());
    let text = r#"
{"op":"create_guest","guest":1}
{"op":"create_guest","guest":2}
{"op":"register","guest":2,"cookie":5,"size":9000}
{"op":"write","guest":1,"ipa":1073741824,"hex":"0400000000000000000000000000000000000000000000000000000001000000"}
{"op":"smc","guest":1,"regs":[838860804,0,1073741824]}
{"op":"smc","guest":1,"regs":[838860804,0,0]}
{"op":"smc","guest":1,"regs":[838860804,4294967295,4294967295]}
{"op":"smc","guest":1,"regs":[838860803,0,0,0]}
{"op":"smc","guest":1,"regs":[2986344461,7]}
{"op":"smc","guest":1,"regs":[2986344462,2]}
{"op":"invoke","guest":2,"cmd":4,"params":[{"registered":{"dir":"in","cookie":5,"size":9000}},{"value":{"dir":"out"}}]}
{"op":"check"}
"#;
    for (line, op) in scenario::parse(text).unwrap() {
        let r = runner.run(&op);
        if line == 12 || line == 13 {
            assert!(r.ok, "line {line}: {r:?}");
        }
    }
    assert!(system.guest(2).is_some(), "guest 1 cannot destroy guest 2");
}
