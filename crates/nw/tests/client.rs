//! The client API against the real core: sessions, and the memtest pseudo-TA through value,
//! temporary, whole, partial and NULL memrefs of registered, allocated and pool memory, with
//! every byte checked both ways.

mod common;

use common::*;
use teeshm_abi::GuestId;
use teeshm_abi::gp::*;
use teeshm_abi::rpc::RpcShmType;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd, pattern_byte};
use teeshm_nw::client::{
    Context, Direction, Operation, Param, SharedMemory, ShmFlags, ShmKind, TeecError,
};
use teeshm_nw::{GuestBuffer, PAGE_SIZE};
use teeshm_testkit::STATIC_POOL;

const G0: GuestId = GuestId::HYPERVISOR;

type Ctx = Context<TeeConduit, SimRam>;

fn context(mode: Mode) -> (std::rc::Rc<SimTee>, Ctx) {
    let (tee, d) = world(mode);
    (tee, Context::new(d))
}

fn end(tee: &SimTee, ctx: Ctx) {
    let mut d = ctx.into_driver();
    finish(tee, &mut d);
}

fn buf(ctx: &mut Ctx, size: u64, offset: u64, fill: impl Fn(u64) -> u8) -> GuestBuffer {
    buffer(ctx.driver_mut(), size, offset, fill)
}

fn bytes(ctx: &Ctx, b: &GuestBuffer) -> Vec<u8> {
    contents(ctx.driver(), b)
}

fn free(ctx: &mut Ctx, b: GuestBuffer) {
    b.free(ctx.driver_mut().ram_mut());
}

fn shm_bytes(ctx: &Ctx, shm: &SharedMemory) -> Vec<u8> {
    bytes(ctx, shm.buffer())
}

fn fill_shm(ctx: &Ctx, shm: &SharedMemory, f: impl Fn(u64) -> u8) {
    let data: Vec<u8> = (0..shm.size()).map(f).collect();
    shm.buffer().write(ctx.driver().ram(), 0, &data).unwrap();
}

fn op(params: [Param<'_>; 4]) -> Operation<'_> {
    Operation::new(params)
}

#[test]
fn sessions() {
    for mode in MODES {
        let (tee, mut ctx) = context(mode);
        let a = ctx.open_session(MEMTEST_UUID).unwrap();
        let b = ctx.open_session(MEMTEST_UUID).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(tee.guest(G0).unwrap().snapshot().sessions, 2);
        let mut other = MEMTEST_UUID;
        other[15] ^= 1;
        assert_eq!(
            ctx.open_session(other),
            Err(TeecError {
                code: TEE_ERROR_ITEM_NOT_FOUND,
                origin: TEE_ORIGIN_TEE
            })
        );
        let id = a.id;
        ctx.close_session(a).unwrap();
        assert_eq!(
            ctx.close_session(teeshm_nw::client::Session { id }),
            Err(TeecError {
                code: TEE_ERROR_BAD_PARAMETERS,
                origin: TEE_ORIGIN_TEE
            })
        );
        ctx.close_session(b).unwrap();
        end(&tee, ctx);
    }
}

#[test]
fn values_and_temporary_memrefs() {
    for mode in MODES {
        let (tee, mut ctx) = context(mode);
        let s = ctx.open_session(MEMTEST_UUID).unwrap();
        for (offset, size) in [(0, 1), (0xfff, 2), (0x123, 10_000), (1, (1 << 20) + 3)] {
            // FILL: the TEE writes every byte of a temporary output.
            let out = buf(&mut ctx, size, offset, |_| 0x5a);
            let mut o = op([
                Param::TempOutput(out),
                Param::ValueInput { a: 77, b: 0 },
                Param::None,
                Param::None,
            ]);
            ctx.invoke_command(&s, cmd::FILL, &mut o).unwrap();
            assert_eq!(o.returned_sizes[0], Some(size));
            let [Param::TempOutput(out), ..] = o.params else {
                panic!()
            };
            let got = bytes(&ctx, &out);
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern_byte(77, i as u64))
            );

            // COPY: the TEE reads every byte of a temporary input.
            let input = buf(&mut ctx, size, 0xfff - offset, marker(size));
            let bigger = buf(&mut ctx, size + 100, offset, |_| 0);
            let mut o = op([
                Param::TempInput(input),
                Param::TempInout(bigger),
                Param::None,
                Param::None,
            ]);
            ctx.invoke_command(&s, cmd::COPY, &mut o).unwrap();
            let [Param::TempInput(input), Param::TempInout(bigger), ..] = o.params else {
                panic!()
            };
            // The output's size is the size written back.
            assert_eq!(bigger.size, size);
            assert_eq!(bytes(&ctx, &bigger), bytes(&ctx, &input));
            free(&mut ctx, input);
            free(&mut ctx, bigger);
            free(&mut ctx, out);
        }
        // A short output: the needed size comes back with the TA's error.
        let input = buf(&mut ctx, 5000, 3, marker(1));
        let small = buf(&mut ctx, 4000, 3, |_| 0);
        let mut o = op([
            Param::TempInput(input),
            Param::TempOutput(small),
            Param::None,
            Param::None,
        ]);
        assert_eq!(
            ctx.invoke_command(&s, cmd::COPY, &mut o),
            Err(TeecError {
                code: TEE_ERROR_SHORT_BUFFER,
                origin: TEE_ORIGIN_TRUSTED_APP
            })
        );
        assert_eq!(o.returned_sizes[1], Some(5000));
        let [Param::TempInput(input), Param::TempOutput(mut small), ..] = o.params else {
            panic!()
        };
        assert_eq!(small.size, 5000);
        small.size = 4000;
        assert!(bytes(&ctx, &small).iter().all(|&b| b == 0));
        free(&mut ctx, input);
        free(&mut ctx, small);
        ctx.close_session(s).unwrap();
        end(&tee, ctx);
    }
}

/// SHA-256 of "abc" (FIPS 180-2 example).
const SHA_ABC: [u8; 32] = [
    0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
];

#[test]
fn sha256_and_null_memrefs() {
    for mode in MODES {
        let (tee, mut ctx) = context(mode);
        let s = ctx.open_session(MEMTEST_UUID).unwrap();
        // "abc" straddling a page boundary.
        let abc = buf(&mut ctx, 3, 0xffe, |i| b"abc"[i as usize]);
        // A short output learns how much room the digest needs. (The pseudo-TA refuses a NULL
        // output with BAD_PARAMETERS rather than answering SHORT_BUFFER with the size.)
        let short = buf(&mut ctx, 16, 0xff8, |_| 0x77);
        let mut o = op([
            Param::TempInput(abc),
            Param::TempOutput(short),
            Param::None,
            Param::None,
        ]);
        assert_eq!(
            ctx.invoke_command(&s, cmd::SHA256, &mut o)
                .map_err(|e| e.code),
            Err(TEE_ERROR_SHORT_BUFFER)
        );
        assert_eq!(o.returned_sizes[1], Some(32));
        let [Param::TempInput(abc), Param::TempOutput(mut short), ..] = o.params else {
            panic!()
        };
        assert_eq!(short.size, 32);
        short.size = 16;
        assert_eq!(bytes(&ctx, &short), vec![0x77; 16]);
        free(&mut ctx, short);
        let digest = buf(&mut ctx, 32, 0xff0, |_| 0);
        let mut o = op([
            Param::TempInput(abc),
            Param::TempOutput(digest),
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::SHA256, &mut o).unwrap();
        let [Param::TempInput(abc), Param::TempOutput(digest), ..] = o.params else {
            panic!()
        };
        assert_eq!(bytes(&ctx, &digest), SHA_ABC);
        // The hash of an empty (NULL) input.
        let mut o = op([
            Param::Null {
                dir: Direction::Input,
                size: 0,
            },
            Param::TempOutput(digest),
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::SHA256, &mut o).unwrap();
        let [_, Param::TempOutput(digest), ..] = o.params else {
            panic!()
        };
        assert_eq!(&bytes(&ctx, &digest)[..4], &[0xe3, 0xb0, 0xc4, 0x42]);
        free(&mut ctx, abc);
        free(&mut ctx, digest);
        ctx.close_session(s).unwrap();
        end(&tee, ctx);
    }
}

/// Runs FILL, COPY in and out and SHA256 through whole and partial memrefs of `a` and `b`
/// (each at least 3 pages), checking every byte.
fn exercise_shared(
    ctx: &mut Ctx,
    s: &teeshm_nw::client::Session,
    a: &SharedMemory,
    b: &SharedMemory,
) {
    let (na, nb) = (a.size(), b.size());
    // FILL the whole of a.
    let mut o = op([
        Param::Whole(a),
        Param::ValueInput { a: 3, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).unwrap();
    assert_eq!(o.returned_sizes[0], Some(na));
    let got = shm_bytes(ctx, a);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, &x)| x == pattern_byte(3, i as u64))
    );

    // COPY part of a (whole) into part of b (partial output).
    fill_shm(ctx, a, marker(9));
    fill_shm(ctx, b, |_| 0x11);
    let (off, len) = (PAGE_SIZE - 7, na.min(nb) - PAGE_SIZE);
    let mut o = op([
        Param::Partial {
            shm: a,
            offset: 5,
            size: len,
            dir: Direction::Input,
        },
        Param::Partial {
            shm: b,
            offset: off,
            size: nb - off,
            dir: Direction::Output,
        },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).unwrap();
    assert!(matches!(o.params[1], Param::Partial { size, .. } if size == len));
    let ga = shm_bytes(ctx, a);
    let gb = shm_bytes(ctx, b);
    let (off, len) = (off as usize, len as usize);
    assert!(gb[..off].iter().all(|&x| x == 0x11));
    assert_eq!(&gb[off..off + len], &ga[5..5 + len]);
    assert!(gb[off + len..].iter().all(|&x| x == 0x11));

    // COPY a temporary input into the whole of b, then b (whole) back into a temporary.
    let t = buf(ctx, nb, 0x42, marker(4));
    let mut o = op([
        Param::TempInput(t),
        Param::Whole(b),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).unwrap();
    let [Param::TempInput(t), ..] = o.params else {
        panic!()
    };
    assert_eq!(shm_bytes(ctx, b), bytes(ctx, &t));
    let back = buf(ctx, nb, 0x900, |_| 0);
    let mut o = op([
        Param::Whole(b),
        Param::TempOutput(back),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).unwrap();
    let [_, Param::TempOutput(back), ..] = o.params else {
        panic!()
    };
    assert_eq!(bytes(ctx, &back), bytes(ctx, &t));

    // SHA256 of the same bytes through a partial memref and a temporary memref agree.
    let d1 = buf(ctx, 32, 0, |_| 0);
    let d2 = buf(ctx, 32, 0, |_| 0);
    let mut o = op([
        Param::Partial {
            shm: b,
            offset: 0,
            size: nb,
            dir: Direction::Input,
        },
        Param::TempOutput(d1),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).unwrap();
    let [_, Param::TempOutput(d1), ..] = o.params else {
        panic!()
    };
    let mut o = op([
        Param::TempInput(t),
        Param::TempOutput(d2),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).unwrap();
    let [Param::TempInput(t), Param::TempOutput(d2), ..] = o.params else {
        panic!()
    };
    assert_eq!(bytes(ctx, &d1), bytes(ctx, &d2));
    assert_ne!(bytes(ctx, &d1), vec![0; 32]);
    for x in [t, back, d1, d2] {
        free(ctx, x);
    }
}

#[test]
fn registered_shared_memory() {
    for mode in MODES {
        let (tee, mut ctx) = context(mode);
        let s = ctx.open_session(MEMTEST_UUID).unwrap();
        for (offset, size) in [(0x3, 3 * PAGE_SIZE), (0xfff, (2 << 20) + 77)] {
            let ba = buf(&mut ctx, size, offset, |_| 0);
            let bb = buf(&mut ctx, size + 999, 0xfff - offset, |_| 0);
            let a = ctx.register_shared_memory(ba, ShmFlags::INOUT).unwrap();
            let b = ctx
                .register_shared_memory(bb, ShmFlags::INPUT | ShmFlags::OUTPUT)
                .unwrap();
            assert_eq!(a.kind(), ShmKind::Registered);
            assert_eq!(tee.guest(G0).unwrap().snapshot().registered_buffers, 2);
            exercise_shared(&mut ctx, &s, &a, &b);
            let (pa, pb) = (a.buffer().clone(), b.buffer().clone());
            ctx.release_shared_memory(a).unwrap();
            ctx.release_shared_memory(b).unwrap();
            assert_eq!(tee.guest(G0).unwrap().snapshot().registered_buffers, 0);
            free(&mut ctx, pa);
            free(&mut ctx, pb);
        }
        // Directions the flags do not allow, and memrefs outside the memory, are refused
        // before the TEE sees them.
        let ro = buf(&mut ctx, 100, 0, |_| 1);
        let ro = ctx.register_shared_memory(ro, ShmFlags::INPUT).unwrap();
        let sent = ctx.driver_mut().conduit_mut().sent.len();
        let bad = TeecError {
            code: TEE_ERROR_BAD_PARAMETERS,
            origin: teeshm_abi::gp::TEE_ORIGIN_API,
        };
        let mut o = op([
            Param::Whole(&ro),
            Param::ValueInput { a: 1, b: 0 },
            Param::None,
            Param::None,
        ]);
        // FILL needs an output; whole of an input-only memory is an input: the TA refuses.
        assert_eq!(
            ctx.invoke_command(&s, cmd::FILL, &mut o)
                .map_err(|e| e.origin),
            Err(TEE_ORIGIN_TRUSTED_APP)
        );
        assert!(ctx.driver_mut().conduit_mut().sent.len() > sent);
        let sent = ctx.driver_mut().conduit_mut().sent.len();
        for (offset, size, dir) in [
            (0, 10, Direction::Output),
            (0, 10, Direction::Inout),
            (50, 51, Direction::Input),
            (u64::MAX, 2, Direction::Input),
        ] {
            let mut o = op([
                Param::Partial {
                    shm: &ro,
                    offset,
                    size,
                    dir,
                },
                Param::None,
                Param::None,
                Param::None,
            ]);
            assert_eq!(ctx.invoke_command(&s, cmd::TOUCH, &mut o), Err(bad));
        }
        assert_eq!(ctx.driver_mut().conduit_mut().sent.len(), sent);
        let empty = GuestBuffer {
            pages: vec![],
            offset: 0,
            size: 0,
        };
        assert_eq!(ctx.register_shared_memory(empty, ShmFlags::INPUT), Err(bad));
        let pages = ro.buffer().clone();
        ctx.release_shared_memory(ro).unwrap();
        free(&mut ctx, pages);
        ctx.close_session(s).unwrap();
        end(&tee, ctx);
    }
}

#[test]
fn allocated_shared_memory_comes_from_the_pool_when_there_is_one() {
    for mode in MODES {
        let (tee, mut ctx) = context(mode);
        let s = ctx.open_session(MEMTEST_UUID).unwrap();
        let a = ctx
            .allocate_shared_memory(3 * PAGE_SIZE + 1, ShmFlags::INOUT)
            .unwrap();
        let b = ctx
            .allocate_shared_memory((1 << 20) + 5, ShmFlags::INOUT)
            .unwrap();
        for shm in [&a, &b] {
            let in_pool = shm
                .buffer()
                .pages
                .iter()
                .all(|&p| p >= STATIC_POOL.0 && p < STATIC_POOL.0 + STATIC_POOL.1);
            if mode.pool {
                assert_eq!(shm.kind(), ShmKind::Pool);
                assert!(in_pool);
            } else {
                assert_eq!(shm.kind(), ShmKind::Allocated);
                assert!(!in_pool);
            }
        }
        let registered = tee.guest(G0).unwrap().snapshot().registered_buffers;
        assert_eq!(registered, if mode.pool { 0 } else { 2 });
        exercise_shared(&mut ctx, &s, &a, &b);
        ctx.release_shared_memory(a).unwrap();
        ctx.release_shared_memory(b).unwrap();
        if mode.pool {
            assert_eq!(ctx.driver().static_pool().unwrap().pages_in_use(), 0);
            // More than the pool holds.
            assert_eq!(
                ctx.allocate_shared_memory(5 << 20, ShmFlags::INOUT),
                Err(TeecError {
                    code: TEE_ERROR_OUT_OF_MEMORY,
                    origin: teeshm_abi::gp::TEE_ORIGIN_API
                })
            );
        }
        assert_eq!(
            ctx.allocate_shared_memory(0, ShmFlags::INOUT)
                .map_err(|e| e.code),
            Err(TEE_ERROR_BAD_PARAMETERS)
        );
        ctx.close_session(s).unwrap();
        end(&tee, ctx);
    }
}

#[test]
fn rpc_buffers_through_the_client() {
    for mode in MODES {
        let (tee, mut ctx) = context(mode);
        let s = ctx.open_session(MEMTEST_UUID).unwrap();
        for shm_type in [RpcShmType::Appl, RpcShmType::Kernel, RpcShmType::Global] {
            for size in [1u32, 4096, 70_000] {
                let mut o = op([
                    Param::ValueInput {
                        a: size,
                        b: shm_type.raw() as u32,
                    },
                    Param::ValueOutput { a: 0, b: 0 },
                    Param::None,
                    Param::None,
                ]);
                let r = ctx.invoke_command(&s, cmd::RPC_BUFFER, &mut o);
                assert!(
                    r.is_ok(),
                    "{mode:?} {shm_type:?} {size}: {r:?} {:x?}",
                    ctx.driver_mut().conduit_mut().rpcs
                );
                assert!(matches!(o.params[1], Param::ValueOutput { a, .. } if a == size));
                assert_eq!(o.returned_sizes, [None; 4]);
            }
        }
        let rpcs = &ctx.driver_mut().conduit_mut().rpcs;
        assert_eq!(
            rpcs.contains(&OPTEE_SMC_RETURN_RPC_ALLOC),
            mode.no_rpc_arg,
            "RPC_ALLOC only without RPC_ARG"
        );
        ctx.close_session(s).unwrap();
        end(&tee, ctx);
    }
}

#[test]
fn unknown_command_of_the_ta() {
    let (tee, mut ctx) = context(MODES[1]);
    let s = ctx.open_session(MEMTEST_UUID).unwrap();
    let mut o = Operation::default();
    ctx.driver_mut().conduit_mut().tamper = Some(|f, out| {
        if f == OPTEE_SMC_CALL_WITH_ARG {
            *out = SmcRegs::ret(OPTEE_SMC_RETURN_EBADCMD);
        }
    });
    assert_eq!(ctx.invoke_command(&s, 999, &mut o), Err(TeecError::comms()));
    ctx.driver_mut().conduit_mut().tamper = None;
    assert_eq!(
        ctx.invoke_command(&s, 999, &mut o),
        Err(TeecError {
            code: TEE_ERROR_NOT_IMPLEMENTED,
            origin: TEE_ORIGIN_TRUSTED_APP
        })
    );
    ctx.close_session(s).unwrap();
    end(&tee, ctx);
}

#[test]
fn a_tee_with_only_its_static_pool() {
    let (tee, d) = pool_only_world(false);
    let mut ctx = Context::new(d);
    let s = ctx.open_session(MEMTEST_UUID).unwrap();
    // Temporary memrefs go through bounce buffers in the pool, every byte both ways.
    for (offset, size) in [(0, 1), (0xfff, 3 * PAGE_SIZE), (0x10, (1 << 20) + 1)] {
        let input = buf(&mut ctx, size, offset, marker(size));
        let out = buf(&mut ctx, size + 10, 0xfff - offset, |_| 0x33);
        let mut o = op([
            Param::TempInput(input),
            Param::TempOutput(out),
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::COPY, &mut o).unwrap();
        let [Param::TempInput(input), Param::TempOutput(mut out), ..] = o.params else {
            panic!()
        };
        assert_eq!(out.size, size);
        assert_eq!(bytes(&ctx, &out), bytes(&ctx, &input));
        out.size = size + 10;
        assert_eq!(&bytes(&ctx, &out)[size as usize..], &[0x33; 10]);
        let mut o = op([
            Param::TempInout(out),
            Param::ValueInput { a: 8, b: 0 },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::FILL, &mut o).unwrap();
        let [Param::TempInout(out), ..] = o.params else {
            panic!()
        };
        assert!(
            bytes(&ctx, &out)
                .iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(8, i as u64))
        );
        free(&mut ctx, input);
        free(&mut ctx, out);
    }
    // A short output through a bounce buffer leaves the caller's bytes alone.
    let input = buf(&mut ctx, 300, 0, marker(2));
    let small = buf(&mut ctx, 200, 0, |_| 0x44);
    let mut o = op([
        Param::TempInput(input),
        Param::TempOutput(small),
        Param::None,
        Param::None,
    ]);
    assert_eq!(
        ctx.invoke_command(&s, cmd::COPY, &mut o)
            .map_err(|e| e.code),
        Err(TEE_ERROR_SHORT_BUFFER)
    );
    let [Param::TempInput(input), Param::TempOutput(mut small), ..] = o.params else {
        panic!()
    };
    small.size = 200;
    assert_eq!(bytes(&ctx, &small), vec![0x44; 200]);
    free(&mut ctx, input);
    free(&mut ctx, small);
    // Shared memory can only be allocated (in the pool), not registered.
    let a = ctx
        .allocate_shared_memory(2 * PAGE_SIZE, ShmFlags::INOUT)
        .unwrap();
    let b = ctx
        .allocate_shared_memory(3 * PAGE_SIZE + 9, ShmFlags::INOUT)
        .unwrap();
    assert_eq!((a.kind(), b.kind()), (ShmKind::Pool, ShmKind::Pool));
    exercise_shared(&mut ctx, &s, &a, &b);
    ctx.release_shared_memory(a).unwrap();
    ctx.release_shared_memory(b).unwrap();
    let some = buf(&mut ctx, 10, 0, |_| 0);
    assert_eq!(
        ctx.register_shared_memory(some.clone(), ShmFlags::INPUT),
        Err(TeecError {
            code: TEE_ERROR_NOT_SUPPORTED,
            origin: teeshm_abi::gp::TEE_ORIGIN_API
        })
    );
    free(&mut ctx, some);
    // RPC buffers come from the pool too.
    let mut o = op([
        Param::ValueInput { a: 9000, b: 1 },
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&s, cmd::RPC_BUFFER, &mut o).unwrap();
    assert!(matches!(o.params[1], Param::ValueOutput { a: 9000, .. }));
    ctx.close_session(s).unwrap();
    // Every arg lay in the pool.
    let args = ctx.driver_mut().conduit_mut().args.clone();
    assert!(
        !args.is_empty() && args.iter().all(|&a| in_pool(a)),
        "{args:x?}"
    );
    end(&tee, ctx);
}
