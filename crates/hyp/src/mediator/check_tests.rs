//! The mediator's agreement checker against the records it checks, one disagreement of each
//! kind at a time.

use super::*;
use crate::check::HypDisagreement;
use crate::config::Resource;
use crate::config::{HypConfig, HypLimits};
use crate::guest::Buffer;
use crate::stage2::Stage2;
use crate::translate::tests::TestMemory;
use teeshm_abi::GuestId;
use teeshm_abi::smc::{SmcConduit, SmcRegs};

/// A TEE that accepts every guest.
#[derive(Clone)]
struct Yes;
impl SmcConduit for Yes {
    fn smc(&mut self, _: SmcRegs) -> SmcRegs {
        SmcRegs::ret(0)
    }
}

fn mediator() -> Mediator<Yes, TestMemory> {
    let mut mem = TestMemory::new();
    mem.limit = Some(8);
    let config = HypConfig {
        max_guests: 2,
        limits: HypLimits {
            max_buffer_pages: 4,
            max_pinned_pages: 4,
            max_shadow_pages: 4,
            ..HypLimits::default()
        },
        ..HypConfig::default()
    };
    let m = Mediator::new(Yes, mem, config).unwrap();
    let mut s = Stage2::new();
    s.map(0x8000_0000, 0x4000_0000).unwrap();
    m.create_guest(GuestId(1), s).unwrap();
    m
}

#[test]
fn the_checker_sees_each_kind_of_disagreement() {
    let mut m = mediator();
    assert_eq!(m.check_agreement(), []);
    let vm = GuestId(1);
    let g = m.guest_mut(vm).unwrap();
    // A buffer recorded without its count, its pin outside the guest's RAM, and a pin
    // reference nobody holds.
    g.registered.insert(
        7,
        Buffer {
            pages: std::vec![0x5000_0000],
            lists: std::vec::Vec::new(),
        },
    );
    g.pins
        .pin_all(&[0x5000_0000, 0x4000_0000], u64::MAX)
        .unwrap();
    g.shadow_pages.add(9);
    let found = m.check_agreement();
    assert!(found.contains(&HypDisagreement::Counter {
        vm,
        counter: "buffers",
        recorded: 0,
        recomputed: 1
    }));
    assert!(found.contains(&HypDisagreement::Pins {
        vm,
        page: 0x4000_0000,
        recorded: 1,
        recomputed: 0
    }));
    assert!(found.contains(&HypDisagreement::PinOutsideGuest {
        vm,
        pa: 0x5000_0000
    }));
    assert!(found.contains(&HypDisagreement::OverBudget {
        vm,
        resource: Resource::ShadowPages,
        held: 9,
        limit: 4
    }));
    // The pool shrank below the live guests' shares.
    let mut m = mediator();
    m.memory_mut().limit = Some(3);
    assert_eq!(
        m.check_agreement(),
        [HypDisagreement::SharesExceed {
            resource: Resource::ShadowPages,
            promised: 4,
            available: 3
        }]
    );
}
