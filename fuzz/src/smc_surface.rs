//! The `smc_surface` target: a small core with the user TAs driven by a program decoded from
//! the input, the agreement checker after every step, and nothing left once every guest is
//! destroyed.

use crate::{FuzzCore, GUESTS, Input, PAGE, UUIDS, interesting, ns_page};
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use zerocopy::IntoBytes;

/// Every SMC function id the core knows, and a few it does not.
const FUNCS: [u32; 22] = [
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_L2CC_MUTEX,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_BOOT_SECONDARY,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_ENABLE_ASYNC_NOTIF,
    OPTEE_SMC_GET_ASYNC_NOTIF_VALUE,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_GET_PROTMEM_CONFIG,
    0x3200_0000,
];

const ATTRS: [u64; 16] = [
    OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INOUT | OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
    0x4,
];

fn guest_id(input: &mut Input) -> u64 {
    match input.u8() % 8 {
        0..=5 => u64::from(GUESTS[usize::from(input.u8()) % GUESTS.len()]),
        6 => 0,
        _ => input.u64(),
    }
}

/// Writes an `optee_msg_arg` made of the input at page `k` (offset `at`); returns its size.
fn write_arg(core: &FuzzCore, input: &mut Input, page: u64) -> u64 {
    let mut h = MsgArgHeader::default();
    h.cmd.set(u32::from(input.u8() % 8));
    // Every command of the pseudo-TA (0..=7) and of teeshm.ta-memtest (0..=10), and unknown ones.
    h.func.set(u32::from(input.u8() % 16));
    h.session.set(u32::from(input.u8() % 4));
    let n = match input.u8() % 16 {
        15 => input.u32(),
        k => u32::from(k % 6),
    };
    h.num_params.set(n);
    h.ret.set(input.u32());
    let mut bytes = h.as_bytes().to_vec();
    for _ in 0..n.min(6) {
        let attr = match input.u8() % 16 {
            15 => input.u64(),
            _ => input.pick(&ATTRS),
        };
        let p = match attr & 0xff {
            5..=7 => MsgParam::from_rmem(
                attr,
                Rmem::new(
                    u64::from(input.u16() % 8192),
                    u64::from(input.u16() % 20_000),
                    u64::from(input.u8() % 6),
                ),
            ),
            9..=0xb => MsgParam::from_tmem(
                attr,
                Tmem::new(
                    interesting(input),
                    u64::from(input.u16() % 20_000),
                    u64::from(input.u8() % 6),
                ),
            ),
            _ => MsgParam::from_value(
                attr,
                Value::new(interesting(input), interesting(input), interesting(input)),
            ),
        };
        bytes.extend_from_slice(p.as_bytes());
    }
    core.mem.write(page, &bytes);
    bytes.len() as u64
}

/// Writes a page list at page `k`: up to 12 entries, mostly harness pages, and a next pointer.
fn write_list(core: &FuzzCore, input: &mut Input, page: u64) {
    let n = usize::from(input.u8() % 13);
    let mut entries = vec![0u64; 512];
    for e in entries.iter_mut().take(n) {
        *e = match input.u8() % 8 {
            0 => interesting(input),
            _ => ns_page(u64::from(input.u8())),
        };
    }
    entries[511] = match input.u8() % 4 {
        0 => interesting(input),
        _ => ns_page(u64::from(input.u8())),
    };
    core.mem.write(page, entries.as_bytes());
}

/// A suspended call the program may answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    guest: u64,
    out: SmcRegs,
    appended: Option<u64>,
}

/// The whole-SMC-surface target: a program of at most 64 steps over a small core with the user
/// TAs, the agreement checker after every step, and nothing left after every guest is
/// destroyed.
pub fn smc_surface(data: &[u8]) {
    let mut input = Input::new(data);
    let mut core = FuzzCore::with_user_tas(input.u8() & 1 != 0);
    for id in GUESTS {
        assert_eq!(core.vm(true, u64::from(id)), OPTEE_SMC_RETURN_OK);
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut last_arg: Option<(u64, u64)> = None;
    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        match input.u8() % 10 {
            0 => {
                // Raw bytes anywhere in the harness's pages.
                let pa = ns_page(u64::from(input.u8())) + u64::from(input.u16() % 4096);
                let n = usize::from(input.u8() % 64);
                let bytes = input.bytes(n).to_vec();
                let room = (PAGE - pa % PAGE) as usize;
                core.mem.write(pa, &bytes[..bytes.len().min(room)]);
            }
            1 => {
                let at = u64::from(input.u8() % 64) * 8;
                let page = ns_page(u64::from(input.u8())) + at;
                let size = write_arg(&core, &mut input, page);
                last_arg = Some((page, size));
            }
            2 => {
                let page = ns_page(u64::from(input.u8()));
                write_list(&core, &mut input, page);
            }
            3 | 4 => {
                // An SMC: a yielding call at the last arg, or anything.
                let guest = guest_id(&mut input);
                let func = match input.u8() % 8 {
                    0..=2 => OPTEE_SMC_CALL_WITH_ARG,
                    3 => OPTEE_SMC_CALL_WITH_RPC_ARG,
                    4 => OPTEE_SMC_CALL_WITH_REGD_ARG,
                    5 => input.u32(),
                    _ => input.pick(&FUNCS),
                };
                let mut a = [0u64; 6];
                for v in &mut a {
                    *v = interesting(&mut input);
                }
                let use_arg = !input.u8().is_multiple_of(4);
                if let (true, Some((pa, _))) = (use_arg, last_arg) {
                    if func == OPTEE_SMC_CALL_WITH_REGD_ARG {
                        a[0] = 0;
                        a[1] = u64::from(input.u8() % 6);
                        a[2] = pa % PAGE;
                    } else {
                        a[0] = pa >> 32;
                        a[1] = pa & 0xffff_ffff;
                    }
                }
                let mut regs = SmcRegs::call(func, &a);
                regs.a[7] = guest;
                let out = core.smc(regs);
                let appended = last_arg.map(|(pa, size)| pa + size);
                if is_rpc_return(out.a0()) {
                    pending.retain(|p| p.out.a[3] != out.a[3]);
                    pending.push(Pending {
                        guest,
                        out,
                        appended,
                    });
                }
            }
            5 | 6 => {
                // An answer to a suspended call: well-behaved, hostile, or to the wrong guest.
                if pending.is_empty() {
                    continue;
                }
                let i = usize::from(input.u8()) % pending.len();
                let p = pending.remove(i);
                let mut answer = match input.u8() % 4 {
                    0 | 1 => core.answer(&p.out, p.appended),
                    _ => {
                        let mut a = [0u64; 5];
                        for v in &mut a {
                            *v = interesting(&mut input);
                        }
                        a[2] = p.out.a[3];
                        if input.u8().is_multiple_of(4) {
                            a[2] = u64::from(input.u8() % 6);
                        }
                        SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &a)
                    }
                };
                answer.a[7] = if input.u8().is_multiple_of(8) {
                    guest_id(&mut input)
                } else {
                    p.guest
                };
                let out = core.smc(answer);
                if is_rpc_return(out.a0()) {
                    pending.retain(|q| q.out.a[3] != out.a[3]);
                    pending.push(Pending {
                        guest: answer.a[7],
                        out,
                        appended: p.appended,
                    });
                } else if out.a0() == OPTEE_SMC_RETURN_ERESUME {
                    // Not resumed: the call still waits (if it existed).
                    pending.push(p);
                }
            }
            7 => {
                let created = input.u8() & 1 == 0;
                let id = match input.u8() % 4 {
                    0 => input.u64(),
                    k => u64::from(k),
                };
                let from = if input.u8().is_multiple_of(8) {
                    input.u64()
                } else {
                    0
                };
                let func = if created {
                    OPTEE_SMC_VM_CREATED
                } else {
                    OPTEE_SMC_VM_DESTROYED
                };
                let mut regs = SmcRegs::call(func, &[id]);
                regs.a[7] = from;
                let out = core.smc(regs);
                if !created && from == 0 && out.a0() == OPTEE_SMC_RETURN_OK {
                    pending.retain(|p| p.guest != id);
                }
            }
            8 => {
                // A session of the pseudo-TA, a user TA or an unknown UUID.
                let guest = GUESTS[usize::from(input.u8()) % GUESTS.len()];
                let uuid = input.pick(&UUIDS);
                let k = u64::from(input.u8());
                core.open_session(guest, uuid, k);
            }
            _ => {
                let guest = GUESTS[usize::from(input.u8()) % GUESTS.len()];
                let cookie = u64::from(input.u8() % 6);
                let n = usize::from(input.u8() % 5) + 1;
                let pages: Vec<u64> = (0..n).map(|_| u64::from(input.u8())).collect();
                let (list, arg) = (u64::from(input.u8()), u64::from(input.u8()));
                core.register(guest, cookie, &pages, list, arg);
            }
        }
        core.check();
    }
    core.destroy_all_and_check_empty();
}
