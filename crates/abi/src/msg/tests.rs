//! Tests of the message ABI: golden bytes, offsets, views, type decoding, sizes and the split.

use super::*;
use core::mem::offset_of;
use proptest::prelude::*;
use zerocopy::little_endian::U64;

#[test]
fn attr_constants() {
    assert_eq!(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        0x20a
    );
    assert_eq!(OPTEE_MSG_ATTR_META, 0x100);
    assert_eq!(
        OPTEE_MSG_ATTR_TYPE_FMEM_INOUT,
        OPTEE_MSG_ATTR_TYPE_RMEM_INOUT
    );
    assert_eq!(OPTEE_MSG_CMD_ASSIGN_PROTMEM, 11);
    assert_eq!(OPTEE_MSG_CMD_REGISTER_SHM, 4);
    assert_eq!(OPTEE_MSG_CMD_UNREGISTER_SHM, 5);
}

#[test]
fn field_offsets() {
    assert_eq!(offset_of!(MsgArgHeader, cmd), 0);
    assert_eq!(offset_of!(MsgArgHeader, func), 4);
    assert_eq!(offset_of!(MsgArgHeader, session), 8);
    assert_eq!(offset_of!(MsgArgHeader, cancel_id), 12);
    assert_eq!(offset_of!(MsgArgHeader, pad), 16);
    assert_eq!(offset_of!(MsgArgHeader, ret), 20);
    assert_eq!(offset_of!(MsgArgHeader, ret_origin), 24);
    assert_eq!(offset_of!(MsgArgHeader, num_params), 28);
    assert_eq!(offset_of!(MsgParam, attr), 0);
    assert_eq!(offset_of!(MsgParam, u), 8);
    assert_eq!(offset_of!(Tmem, buf_ptr), 0);
    assert_eq!(offset_of!(Tmem, size), 8);
    assert_eq!(offset_of!(Tmem, shm_ref), 16);
    assert_eq!(offset_of!(Rmem, offs), 0);
    assert_eq!(offset_of!(Rmem, size), 8);
    assert_eq!(offset_of!(Rmem, shm_ref), 16);
    assert_eq!(offset_of!(Fmem, offs_low), 0);
    assert_eq!(offset_of!(Fmem, offs_high), 4);
    assert_eq!(offset_of!(Fmem, internal_offs), 6);
    assert_eq!(offset_of!(Fmem, size), 8);
    assert_eq!(offset_of!(Fmem, global_id), 16);
    assert_eq!(offset_of!(Value, a), 0);
    assert_eq!(offset_of!(Value, b), 8);
    assert_eq!(offset_of!(Value, c), 16);
}

fn header(cmd: u32, num_params: u32) -> MsgArgHeader {
    MsgArgHeader {
        cmd: U32::new(cmd),
        func: U32::new(0x1122_3344),
        session: U32::new(0x5566_7788),
        cancel_id: U32::new(0x99aa_bbcc),
        pad: U32::new(0),
        ret: U32::new(0xFFFF_0006),
        ret_origin: U32::new(3),
        num_params: U32::new(num_params),
    }
}

#[test]
fn golden_register_shm_bytes() {
    let hdr = header(OPTEE_MSG_CMD_REGISTER_SHM, 2);
    let p0 = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(0x8000_1234, 0x2_0000, 0xdead_beef_0000_0001),
    );
    let p1 = MsgParam::from_fmem(
        OPTEE_MSG_ATTR_TYPE_FMEM_INPUT,
        Fmem::new(0xABCD_1234_5678, 0x0FED, 0x10, 0x0102_0304_0506_0708),
    );
    let mut bytes = alloc::vec::Vec::new();
    bytes.extend_from_slice(hdr.as_bytes());
    bytes.extend_from_slice(p0.as_bytes());
    bytes.extend_from_slice(p1.as_bytes());
    #[rustfmt::skip]
    let want: [u8; 96] = [
        // header
        0x04, 0, 0, 0,  0x44, 0x33, 0x22, 0x11,  0x88, 0x77, 0x66, 0x55,  0xcc, 0xbb, 0xaa, 0x99,
        0, 0, 0, 0,     0x06, 0, 0xff, 0xff,     0x03, 0, 0, 0,           0x02, 0, 0, 0,
        // param 0: attr 0x20a, buf_ptr, size, shm_ref
        0x0a, 0x02, 0, 0, 0, 0, 0, 0,
        0x34, 0x12, 0x00, 0x80, 0, 0, 0, 0,
        0, 0, 0x02, 0, 0, 0, 0, 0,
        0x01, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde,
        // param 1: attr 5, offs_low, offs_high, internal_offs, size, global_id
        0x05, 0, 0, 0, 0, 0, 0, 0,
        0x78, 0x56, 0x34, 0x12,  0xcd, 0xab,  0xed, 0x0f,
        0x10, 0, 0, 0, 0, 0, 0, 0,
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    ];
    assert_eq!(bytes.as_slice(), want.as_slice());

    let (h, ps) = split_arg(&bytes).expect("valid arg");
    assert_eq!(*h, hdr);
    assert_eq!(ps, &[p0, p1]);
    assert_eq!(ps[0].param_type(), Ok(ParamType::TmemOutput));
    assert!(ps[0].is_noncontig());
    assert!(!ps[0].is_meta());
    assert_eq!(ps[0].tmem().buf_ptr.get(), 0x8000_1234);
    assert_eq!(ps[1].fmem().offs(), 0xABCD_1234_5678);
    assert_eq!(ps[1].fmem().internal_offs.get(), 0x0FED);
}

#[test]
fn golden_value_param_bytes() {
    let p = MsgParam::from_value(
        OPTEE_MSG_ATTR_TYPE_VALUE_INOUT | OPTEE_MSG_ATTR_META | (5 << OPTEE_MSG_ATTR_CACHE_SHIFT),
        Value::new(1, 0x0200, 0x0003_0000),
    );
    #[rustfmt::skip]
    let want: [u8; 32] = [
        0x03, 0x01, 0x05, 0, 0, 0, 0, 0,
        1, 0, 0, 0, 0, 0, 0, 0,
        0, 2, 0, 0, 0, 0, 0, 0,
        0, 0, 3, 0, 0, 0, 0, 0,
    ];
    assert_eq!(p.as_bytes(), &want);
    assert!(p.is_meta());
    assert_eq!(p.cache_attr(), 5);
    assert_eq!(p.param_type(), Ok(ParamType::ValueInout));
}

#[test]
fn views_alias_the_same_bytes() {
    let mut p = MsgParam::new(OPTEE_MSG_ATTR_TYPE_RMEM_INOUT);
    p.set_rmem(Rmem::new(0x10, 0x20, 0x30));
    assert_eq!(p.value(), Value::new(0x10, 0x20, 0x30));
    assert_eq!(p.tmem(), Tmem::new(0x10, 0x20, 0x30));
    p.rmem_mut().size = U64::new(0x99);
    assert_eq!(p.rmem().size.get(), 0x99);
    p.tmem_mut().shm_ref = U64::new(7);
    assert_eq!(p.value().c.get(), 7);
    p.value_mut().a = U64::new(1);
    p.set_tmem(p.tmem());
    assert_eq!(p.rmem().offs.get(), 1);
    p.set_value(Value::new(4, 5, 6));
    p.set_fmem(p.fmem());
    assert_eq!(p.value(), Value::new(4, 5, 6));
}

#[test]
fn param_type_decoding() {
    let known = [
        (0x0, ParamType::None),
        (0x1, ParamType::ValueInput),
        (0x2, ParamType::ValueOutput),
        (0x3, ParamType::ValueInout),
        (0x5, ParamType::RmemInput),
        (0x6, ParamType::RmemOutput),
        (0x7, ParamType::RmemInout),
        (0x9, ParamType::TmemInput),
        (0xa, ParamType::TmemOutput),
        (0xb, ParamType::TmemInout),
    ];
    for (raw, t) in known {
        assert_eq!(ParamType::try_from(raw), Ok(t));
        assert_eq!(ParamType::try_from(raw | 0x3_0300), Ok(t));
        assert_eq!(u64::from(t), raw);
        assert_eq!(t.is_input(), raw & 1 != 0 && raw != 0);
        assert_eq!(t.is_output(), raw & 2 != 0);
        assert_eq!(
            u8::from(t.is_value()) + u8::from(t.is_rmem()) + u8::from(t.is_tmem()),
            u8::from(t != ParamType::None)
        );
    }
    for bad in [0x4u64, 0x8, 0xc, 0xff, 0x1_0004] {
        assert_eq!(
            ParamType::try_from(bad),
            Err(ParamTypeError::Unknown {
                attr_type: (bad & 0xff) as u8
            })
        );
    }
}

#[test]
fn arg_sizes() {
    assert_eq!(get_arg_size(0), Some(32));
    assert_eq!(get_arg_size(4), Some(160));
    assert_eq!(get_arg_size(127), Some(4096));
    assert_eq!(arg_size_checked(127), Ok(4096));
    assert_eq!(
        arg_size_checked(128),
        Err(ArgError::TooManyParams {
            num_params: 128,
            max: 127
        })
    );
    assert_eq!(
        arg_size_checked(u32::MAX),
        Err(ArgError::TooManyParams {
            num_params: u32::MAX,
            max: 127
        })
    );
    assert_eq!(RPC_ARG_SIZE, 160);
}

#[test]
fn split_arg_errors() {
    assert_eq!(
        split_arg(&[0u8; 31]),
        Err(ArgError::Truncated {
            needed: 32,
            available: 31
        })
    );
    let mut buf = alloc::vec![0u8; 32 + 32 * 3];
    buf[28] = 4; // num_params = 4, only 3 present
    assert_eq!(
        split_arg(&buf),
        Err(ArgError::Truncated {
            needed: 160,
            available: 128
        })
    );
    buf[28] = 200;
    assert_eq!(
        split_arg(&buf),
        Err(ArgError::TooManyParams {
            num_params: 200,
            max: 127
        })
    );
    buf[28] = 2;
    let (h, ps) = split_arg(&buf).expect("fits");
    assert_eq!(h.num_params.get(), 2);
    assert_eq!(ps.len(), 2);

    let (h, ps) = split_arg_mut(&mut buf).expect("fits");
    h.ret = U32::new(crate::gp::TEE_ERROR_BAD_PARAMETERS);
    ps[1].set_value(Value::new(1, 2, 3));
    assert_eq!(&buf[20..24], &[6, 0, 0xff, 0xff]);
    assert_eq!(buf[32 + 32 + 8], 1);
    buf[28] = 128;
    assert!(matches!(
        split_arg_mut(&mut buf),
        Err(ArgError::TooManyParams {
            num_params: 128,
            ..
        })
    ));
    assert!(matches!(
        split_arg_mut(&mut buf[..10]),
        Err(ArgError::Truncated {
            needed: 32,
            available: 10
        })
    ));
}

proptest! {
    #[test]
    fn param_round_trip(attr: u64, a: u64, b: u64, c: u64) {
        let p = MsgParam::from_value(attr, Value::new(a, b, c));
        let back = MsgParam::read_from_bytes(p.as_bytes()).expect("32 bytes");
        prop_assert_eq!(back, p);
        prop_assert_eq!(back.tmem(), Tmem::new(a, b, c));
        prop_assert_eq!(back.rmem(), Rmem::new(a, b, c));
        let f = back.fmem();
        prop_assert_eq!(f.offs() & 0xFFFF_FFFF, a & 0xFFFF_FFFF);
        prop_assert_eq!(MsgParam::from_fmem(attr, f), p);
        prop_assert_eq!(back.param_type().is_ok(), matches!(attr & 0xff, 0..=3 | 5..=7 | 9..=11));
    }

    #[test]
    fn split_arg_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok((h, ps)) = split_arg(&bytes) {
            prop_assert_eq!(ps.len() as u32, h.num_params.get());
            prop_assert!(32 + 32 * ps.len() <= bytes.len());
        }
    }

    #[test]
    fn arg_header_round_trip(words: [u32; 8]) {
        let mut raw = [0u8; 32];
        for (i, w) in words.iter().enumerate() {
            raw[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let h = MsgArgHeader::read_from_bytes(&raw).expect("32 bytes");
        prop_assert_eq!(h.cmd.get(), words[0]);
        prop_assert_eq!(h.num_params.get(), words[7]);
        prop_assert_eq!(h.as_bytes(), &raw);
    }
}
