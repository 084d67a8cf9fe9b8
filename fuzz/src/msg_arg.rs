//! The `msg_arg` target: `split_arg` / `split_arg_mut` / `ParamType` over arbitrary bytes,
//! then the same bytes as the arg page of a real call into a small core.

use crate::{FuzzCore, Input, PAGE, ns_page};
use teeshm_abi::GuestId;
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::smc::*;
use teeshm_core::pta::MEMTEST_UUID;
use zerocopy::IntoBytes;

fn check_split(bytes: &[u8]) {
    let mut copy = bytes.to_vec();
    let mutable = split_arg_mut(&mut copy).map(|(h, p)| (*h, p.to_vec()));
    match split_arg(bytes) {
        Ok((hdr, params)) => {
            let n = hdr.num_params.get();
            assert!(n <= OPTEE_MSG_MAX_NUM_PARAMS);
            assert_eq!(params.len(), n as usize);
            let size = arg_size_checked(n).expect("accepted count");
            assert!(size <= bytes.len());
            assert_eq!(Some(size), get_arg_size(n));
            let (mh, mp) = mutable.expect("split_arg_mut agrees");
            assert_eq!(mh.as_bytes(), hdr.as_bytes());
            assert_eq!(mp.as_bytes(), params.as_bytes());
            for p in params {
                if let Ok(ty) = ParamType::try_from(p.attr()) {
                    let kinds = [ty.is_value(), ty.is_rmem(), ty.is_tmem()];
                    let count = kinds.iter().filter(|k| **k).count();
                    assert_eq!(count, usize::from(ty != ParamType::None));
                    assert_eq!(ty.raw(), p.attr() & OPTEE_MSG_ATTR_TYPE_MASK);
                    assert!(ty == ParamType::None || ty.is_input() || ty.is_output());
                } else {
                    assert!(matches!(p.attr() & 0xff, 4 | 8 | 0xc..=0xff));
                }
            }
        }
        Err(_) => assert!(mutable.is_err(), "split_arg and split_arg_mut agree"),
    }
}

/// The message-argument target: the decoders over arbitrary bytes, then the bytes as the arg of
/// a call (CALL_WITH_ARG, CALL_WITH_RPC_ARG or CALL_WITH_REGD_ARG) of a guest that has a
/// session (of the pseudo-TA or of the user TA `teeshm.ta-memtest`) and a registered buffer,
/// with well-behaved RPC answers.
pub fn msg_arg(data: &[u8]) {
    check_split(data);
    let mut input = Input::new(data);
    let flags = input.u8();
    let at_bits = input.u16();
    let at = u64::from(at_bits % 4096) & !7;
    // The session is the pseudo-TA's, or teeshm.ta-memtest's: the arg then reaches a user TA.
    let uuid = if at_bits & 0x8000 != 0 {
        teeshm_ta::memtest::UUID
    } else {
        MEMTEST_UUID
    };
    let arg: Vec<u8> = input.rest().to_vec();
    check_split(&arg);
    let _ = arg_size_checked(u32::from_le_bytes(
        data.get(..4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4]),
    ));

    let mut core = FuzzCore::with_user_tas(flags & 0x80 != 0);
    assert_eq!(core.vm(true, 1), OPTEE_SMC_RETURN_OK);
    let session = core.open_session(1, uuid, 0).unwrap_or(0);
    // Buffer 1: pages 10..14, its list at page 9. Temporary lists (page 8) name pages 16..19.
    core.register(1, 1, &[10, 11, 12, 13], 9, 1);
    let list = ns_page(8);
    let tmp: Vec<u64> = (16..20).map(ns_page).collect();
    let mem = core.mem.clone();
    let _ = page_list::encode_with::<()>(&tmp, 0, 4 * PAGE, &[list], |pa, b| {
        mem.write(pa, b);
        Ok(())
    });
    core.check();

    let mut arg = arg;
    arg.truncate((PAGE - at) as usize);
    if let Ok((hdr, params)) = split_arg_mut(&mut arg) {
        if flags & 1 != 0 {
            hdr.session.set(session);
        }
        for p in params.iter_mut() {
            let attr = p.attr();
            if flags & 2 != 0 && attr & OPTEE_MSG_ATTR_NONCONTIG != 0 {
                let t = p.tmem_mut();
                t.buf_ptr.set(list | (t.buf_ptr.get() & 0xfff));
                t.size.set(t.size.get() % (4 * PAGE + 1));
            }
            if flags & 4 != 0 && matches!(attr & 0xff, 5..=7) {
                let r = p.rmem_mut();
                r.shm_ref.set(r.shm_ref.get() & 1);
            }
        }
    }
    let (func, a1, a2, a3, page) = match flags / 8 % 3 {
        0 => {
            let page = ns_page(2);
            core.mem.write(page, &[0u8; 4096]);
            core.mem.write(page + at, &arg);
            (OPTEE_SMC_CALL_WITH_ARG, page + at, 0, 0, Some(page + at))
        }
        1 => {
            let page = ns_page(2);
            core.mem.write(page, &[0u8; 4096]);
            core.mem.write(page + at, &arg);
            (
                OPTEE_SMC_CALL_WITH_RPC_ARG,
                page + at,
                0,
                0,
                Some(page + at),
            )
        }
        _ => {
            // Inside registered buffer 1 (pages 10..14, 16 KiB).
            let offset = at;
            let pa = ns_page(10) + offset;
            core.mem.write(pa, &arg);
            (OPTEE_SMC_CALL_WITH_REGD_ARG, 0, 1, offset, Some(pa))
        }
    };
    let regs = if func == OPTEE_SMC_CALL_WITH_REGD_ARG {
        SmcRegs::call(func, &[a1, a2, a3])
    } else {
        SmcRegs::call(func, &[a1 >> 32, a1 & 0xffff_ffff, a3])
    };
    let _ = a2;
    let out = core.smc(regs.from_client(GuestId(1)));
    let appended = page.map(|p| p + arg.len() as u64);
    core.finish(1, out, appended);
    core.check();
    core.destroy_all_and_check_empty();
}
