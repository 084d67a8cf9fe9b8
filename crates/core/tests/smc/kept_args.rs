//! Kept arg pages (`CoreConfig::kept_arg_pages`): a guest under a hypervisor that passes its
//! `CALL_WITH_ARG` args on the same pages finds each page's object and mapping from its last
//! call; the pages kept are its most recently used, within its quotas, and go with it.

use teeshm_abi::GuestId;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::{CoreConfig, GuestQuotas, NormalWorld};
use teeshm_testkit::msg::*;
use teeshm_testkit::world::*;

const G: GuestId = GuestId(1);

fn world(kept: u8, quotas: GuestQuotas) -> World {
    let w = World::new(CoreConfig {
        normal_world: NormalWorld::Virtualized,
        kept_arg_pages: kept,
        quotas,
        ..CoreConfig::default()
    });
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    w
}

/// A `CALL_WITH_ARG` on `page`: an unregister of an unknown cookie (a message that keeps
/// nothing itself). Returns the message's result.
fn call_on(w: &World, page: u64) -> u32 {
    let p = rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0xdead, 0, 0);
    w.mem
        .write(page, &arg_bytes(header(OPTEE_MSG_CMD_UNREGISTER_SHM), &[p]));
    let (hi, lo) = split_pair(page);
    assert_eq!(
        w.smc(G, OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]).a0(),
        OPTEE_SMC_RETURN_OK
    );
    let (h, _) = parse_arg(&{
        let mut b = vec![0u8; 64];
        w.mem.read(page, &mut b);
        b
    });
    w.check();
    h.ret.get()
}

#[test]
fn a_kept_page_serves_the_next_call_without_a_map() {
    let w = world(2, GuestQuotas::default());
    let page = w.alloc_page();
    assert_eq!(call_on(&w, page), TEE_ERROR_BAD_PARAMETERS);
    let misses = w.tee.window().stats().misses;
    let snap = w.tee.guest(G).unwrap().snapshot();
    assert_eq!(
        (snap.kept_arg_pages, snap.objects, snap.mapped_pages),
        (1, 1, 1)
    );
    for _ in 0..5 {
        assert_eq!(call_on(&w, page), TEE_ERROR_BAD_PARAMETERS);
    }
    assert_eq!(
        w.tee.window().stats().misses,
        misses,
        "every later call hit"
    );
    let snap = w.tee.guest(G).unwrap().snapshot();
    assert_eq!(
        (snap.kept_arg_pages, snap.objects, snap.mapped_pages),
        (1, 1, 1)
    );
}

#[test]
fn the_least_recently_used_page_goes_and_a_destroyed_guest_keeps_nothing() {
    let w = world(2, GuestQuotas::default());
    let [a, b, c] = [w.alloc_page(), w.alloc_page(), w.alloc_page()];
    call_on(&w, a);
    call_on(&w, b);
    call_on(&w, a); // b is now the least recently used
    let misses = w.tee.window().stats().misses;
    call_on(&w, c); // b goes
    assert_eq!(w.tee.window().stats().misses, misses + 1);
    call_on(&w, a);
    assert_eq!(w.tee.window().stats().misses, misses + 1, "a was kept");
    call_on(&w, b);
    assert_eq!(w.tee.window().stats().misses, misses + 2, "b was not");
    let snap = w.tee.guest(G).unwrap().snapshot();
    assert_eq!(
        (snap.kept_arg_pages, snap.objects, snap.mapped_pages),
        (2, 2, 2)
    );
    assert_eq!(w.destroy_guest(1), OPTEE_SMC_RETURN_OK);
    w.check();
    assert_eq!(w.tee.window().mapped_objects(), 0);
}

#[test]
fn without_the_setting_an_arg_page_goes_with_its_call() {
    let w = world(0, GuestQuotas::default());
    let page = w.alloc_page();
    call_on(&w, page);
    call_on(&w, page);
    let snap = w.tee.guest(G).unwrap().snapshot();
    assert_eq!(
        (snap.kept_arg_pages, snap.objects, snap.mapped_pages),
        (0, 0, 0)
    );
    assert_eq!(w.tee.window().mapped_objects(), 0);
}

#[test]
fn kept_pages_yield_to_the_guests_object_quota() {
    // Room for 3 objects: a registration still finds room for its buffer, the call's own arg
    // and one more buffer however many pages were kept before.
    let w = world(
        4,
        GuestQuotas {
            max_objects: 3,
            ..GuestQuotas::default()
        },
    );
    let [a, b, c] = [w.alloc_page(), w.alloc_page(), w.alloc_page()];
    call_on(&w, a);
    call_on(&w, b);
    call_on(&w, c);
    assert_eq!(w.tee.guest(G).unwrap().snapshot().objects, 3);
    let (one, two) = (w.buffer(8192, 0), w.buffer(4096, 0));
    assert_eq!(w.register_as(G, ArgMode::Plain, 1, &one), TEE_SUCCESS);
    assert_eq!(w.register_as(G, ArgMode::Plain, 2, &two), TEE_SUCCESS);
    let snap = w.tee.guest(G).unwrap().snapshot();
    assert_eq!(
        (snap.registered_buffers, snap.objects),
        (2, 2 + snap.kept_arg_pages)
    );
    assert!(snap.objects <= 3);
    // A third buffer does not fit beside the call's own arg, as without kept pages.
    let three = w.buffer(4096, 0);
    assert_ne!(w.register_as(G, ArgMode::Plain, 3, &three), TEE_SUCCESS);
    w.check();
}
