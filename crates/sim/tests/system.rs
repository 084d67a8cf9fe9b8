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
        // FILL, two CHECKs, CALL_PEER (and after the destruction one more CALL_PEER for the
        // survivors); guest 2 also a CHECK after its second instance died.
        let survivor = u64::from(line.guest != 3);
        let killer = u64::from(line.guest == 2);
        assert_eq!(
            line.ta_invokes,
            4 + survivor + killer,
            "guest {}",
            line.guest
        );
        assert_eq!(line.ta_deaths, killer, "guest {}", line.guest);
    }
    assert!(
        !outcome.system.ta_ram().all_free(),
        "the survivors' instances stay open"
    );
    assert_eq!(
        outcome.system.ta_ram().instances,
        3,
        "one instance of each guest left"
    );
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
    // 3000 random operations, then the closes of the user TA sessions left open.
    let closes = outcome
        .log
        .iter()
        .skip(3000)
        .filter(|op| matches!(op, scenario::Op::CloseSession { .. }))
        .count() as u64;
    assert_eq!(outcome.ops, 3000 + closes);
    assert!(outcome.succeeded > 2500);
    let user_ta =
        |want: fn(&scenario::Op) -> bool| outcome.log.iter().filter(|op| want(op)).count();
    assert!(
        user_ta(|op| matches!(
            op,
            scenario::Op::Invoke {
                session: Some(_),
                ..
            }
        )) > 100,
        "the guests invoked the user TA"
    );
    assert!(user_ta(|op| matches!(op, scenario::Op::OpenSession { .. })) > 10);
    assert!(system.check().is_empty());
    let ta = system.ta_ram();
    assert!(
        ta.all_free() && ta.instances == 0,
        "all of TA RAM is back: {ta:?}"
    );
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
fn the_user_ta_example_replays_with_its_answers() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/user-ta.jsonl"
    ))
    .unwrap();
    let system = Arc::new(System::new(SystemConfig::default()).unwrap());
    let mut runner = Runner::new(system.clone());
    let results: Vec<_> = scenario::parse(&text)
        .unwrap()
        .into_iter()
        .map(|(line, op)| (line, runner.run(&op)))
        .collect();
    let value = |r: &scenario::OpResult, i: usize| r.params[i]["value"].clone();
    for (line, r) in &results {
        match r.op.as_str() {
            // WRITE_INPUT: the TA dies.
            _ if r.ret == Some(teeshm_abi::gp::TEE_ERROR_TARGET_DEAD) => assert!(!r.ok),
            _ => assert!(r.ok, "line {line}: {r:?}"),
        }
    }
    let by_line = |l: usize| &results.iter().find(|(line, _)| *line == l).unwrap().1;
    assert_eq!(
        value(by_line(9), 2),
        serde_json::json!([20000, 0xffff_ffffu64, 0])
    );
    assert_eq!(
        value(by_line(11), 1),
        serde_json::json!([5000, teeshm_abi::gp::TEE_ERROR_TARGET_DEAD, 0])
    );
    assert_eq!(by_line(14).ret, Some(teeshm_abi::gp::TEE_ERROR_TARGET_DEAD));
    assert!(by_line(6).session.is_some());
    // The guest's buffer holds what the TA wrote.
    let buf = runner.buffer(1, 7).unwrap().clone();
    let g = system.guest(1).unwrap();
    let bytes = scenario::read_buffer(g.context().driver().ram(), &buf, 0, 20000).unwrap();
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, &b)| b == teeshm_ta::pattern_byte(42, i as u64))
    );
    let ta = system.ta_ram();
    assert!(
        ta.all_free() && ta.instances == 0,
        "every instance is gone: {ta:?}"
    );
    assert!(system.check().is_empty());
    // An unknown name is refused when it runs, a malformed one when the file is read.
    let r = runner.run(&scenario::Op::OpenSession {
        guest: 1,
        ta: "teeshm.ta-nothing".into(),
        session: 5,
        params: Vec::new(),
    });
    assert!(!r.ok && r.detail.unwrap().contains("no TA"));
    let e = scenario::parse("{\"op\":\"open_session\",\"guest\":1,\"ta\":\"a b\",\"session\":1}\n")
        .unwrap_err();
    assert!(e.to_string().contains("neither a UUID"), "{e}");
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
