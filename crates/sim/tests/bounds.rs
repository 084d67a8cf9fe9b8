//! No scenario file can make the simulated normal world allocate without bound: every size the
//! TEE asks of it (an `SHM_ALLOC` the pseudo-TA's RPC_BUFFER sends with the scenario's own
//! number, an RPC arg) is bounded by the driver before any page or array is reserved
//! (docs/replay.md).

use std::sync::Arc;
use teeshm_abi::gp;
use teeshm_nw::DEFAULT_MAX_RPC_SHM_BYTES;
use teeshm_sim::scenario::{self, Runner};
use teeshm_sim::{System, SystemConfig};

fn invoke_rpc_buffer(bytes: u64) -> String {
    format!(
        r#"{{"op":"invoke","guest":1,"cmd":5,"params":[{{"value":{{"dir":"in","a":{bytes},"b":1,"c":3}}}},{{"value":{{"dir":"out"}}}}]}}"#
    )
}

#[test]
fn rpc_sizes_the_tee_asks_for_are_bounded() {
    let system = Arc::new(System::new(SystemConfig::default()).unwrap());
    let mut runner = Runner::new(system.clone());
    let setup = r#"{"op":"create_guest","guest":1}
{"op":"register","guest":1,"cookie":7,"size":10000}"#;
    for (_, op) in scenario::parse(setup).unwrap() {
        assert!(runner.run(&op).ok);
    }
    let guest = system.guest(1).unwrap();
    let in_use = || guest.context().driver().ram().pages_in_use();
    // A first RPC buffer makes the driver's RPC arg and the SHM cache's state settle.
    let ok = scenario::parse(&invoke_rpc_buffer(65536)).unwrap();
    assert!(runner.run(&ok[0].1).ok);
    let before = in_use();
    for bytes in [
        u64::MAX,
        1 << 62,
        1 << 40,
        1 << 30,
        DEFAULT_MAX_RPC_SHM_BYTES + 1,
        // Within the bound but more than the guest's 64 MiB: its RAM says no, cleanly.
        DEFAULT_MAX_RPC_SHM_BYTES,
    ] {
        let text = invoke_rpc_buffer(bytes);
        let ops = scenario::parse(&text).unwrap();
        let result = runner.run(&ops[0].1);
        assert!(!result.ok, "{bytes}: {result:?}");
        assert_eq!(result.ret, Some(gp::TEE_ERROR_OUT_OF_MEMORY), "{bytes}");
        assert_eq!(in_use(), before, "{bytes}: nothing kept");
        assert!(system.check().is_empty(), "{:?}", system.check());
    }
    // The guest goes on.
    assert!(runner.run(&ok[0].1).ok);
    assert_eq!(in_use(), before);
    assert!(system.check().is_empty());
}
