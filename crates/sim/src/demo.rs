//! The demonstration: four guests share one TEE. Each registers buffers of mixed sizes and
//! invokes the memtest pseudo-TA with every memref kind (value, temporary, whole, partial, NULL)
//! and an RPC buffer, all four at once on their own CPUs. Each also opens the user TA
//! `teeshm.ta-memtest`, which runs in its own address space: it FILLs and CHECKs a registered
//! buffer (and finds a byte the guest changed), and calls the TA `teeshm.ta-peer` with a buffer
//! of its own memory; guest 2 opens a second instance and makes it write its input memref, so
//! that instance dies (`TEE_ERROR_TARGET_DEAD`) while its first instance and the other guests go
//! on. Then guest 3 is destroyed while one of its calls waits in an RPC. The demo checks every
//! byte both ways, that guest 3 left nothing behind (its TA instance's RAM included), that the
//! other guests were not touched and their TAs still answer, and that the whole system agrees.

use crate::report::SystemReport;
use crate::system::{System, SystemConfig};
use sha2::Digest;
use std::sync::Arc;
use teeshm_abi::gp::{TEE_ERROR_TARGET_DEAD, TEE_ORIGIN_TEE};
use teeshm_abi::msg::{
    MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND, Value,
};
use teeshm_abi::smc::{OPTEE_SMC_CALL_WITH_ARG, SmcRegs, is_rpc_return, split_pair};
use teeshm_core::pta::{MEMTEST_UUID, cmd, pattern_byte};
use teeshm_nw::client::{Direction, Operation, Param, Session, ShmFlags, TeecError};
use teeshm_nw::{GuestBuffer, GuestRam};
use teeshm_ta::memtest::{self, cmd as ta_cmd};
use zerocopy::IntoBytes;

/// What one guest did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuestLine {
    /// Guest id.
    pub guest: u16,
    /// Buffers registered or allocated.
    pub buffers: u64,
    /// Bytes in them.
    pub buffer_bytes: u64,
    /// Invokes that succeeded.
    pub invokes: u64,
    /// Bytes checked both ways.
    pub bytes_checked: u64,
    /// Whether the second use of the 1 MiB buffer found its mapping cached.
    pub cache_hit: bool,
    /// Bytes of the RPC buffer the pseudo-TA took and checked.
    pub rpc_bytes: u64,
    /// Invokes of the user TA `teeshm.ta-memtest` that answered as they must.
    pub ta_invokes: u64,
    /// Bytes the user TA filled or checked in the guest's buffer, and its peer in the TA's own
    /// memory, each checked.
    pub ta_bytes: u64,
    /// Instances of the user TA that died as they must (a write into an input memref).
    pub ta_deaths: u64,
    /// What became of the guest.
    pub fate: String,
}

/// The demo's outcome.
pub struct DemoOutcome {
    /// The system afterwards.
    pub system: Arc<System>,
    /// Per guest.
    pub lines: Vec<GuestLine>,
    /// Every check that failed (empty when all passed).
    pub failures: Vec<String>,
}

const GUESTS: u16 = 4;
const DESTROYED: u16 = 3;
/// The guest whose second user TA instance dies.
const TA_KILLER: u16 = 2;
/// Bytes of memtest's CALL_PEER buffer (in the TA's own heap, shared with its peer).
const PEER_BYTES: u32 = 10_000;

/// What one guest's part leaves open: its session of the pseudo-TA and of the user TA.
struct Opened {
    pta: u32,
    ta: u32,
}

fn check(failures: &mut Vec<String>, ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        failures.push(what());
    }
}

/// One guest's part: everything through the GlobalPlatform-shaped client API.
fn guest_work(system: &System, id: u16) -> Result<(GuestLine, Opened), String> {
    let guest = system
        .guest(id)
        .ok_or(format!("guest {id} is not running"))?;
    let mut ctx = guest.context();
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: teeshm_nw::client::TeecError| format!("guest {id}: {what}: {err}")
    };
    let session = ctx.open_session(MEMTEST_UUID).map_err(e("open session"))?;
    let mut line = GuestLine {
        guest: id,
        buffers: 0,
        buffer_bytes: 0,
        invokes: 0,
        bytes_checked: 0,
        cache_hit: false,
        rpc_bytes: 0,
        ta_invokes: 0,
        ta_bytes: 0,
        ta_deaths: 0,
        fate: "ran".into(),
    };
    let seed = u64::from(id) * 1000;
    // Buffers of mixed sizes, unaligned where it hurts.
    let sizes = [
        (1u64, 0u64),
        (5000, 77),
        (256 * 1024 + 123, 4095),
        (1 << 20, 0),
    ];
    let mut shms = Vec::new();
    for (size, offset) in sizes {
        let buf = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), size, offset)
            .map_err(|err| format!("guest {id}: RAM: {err}"))?;
        shms.push(
            ctx.register_shared_memory(buf, ShmFlags::INOUT)
                .map_err(e("register"))?,
        );
        line.buffers += 1;
        line.buffer_bytes += size;
    }
    let allocated = ctx
        .allocate_shared_memory(64 * 1024, ShmFlags::INOUT)
        .map_err(e("allocate"))?;
    line.buffers += 1;
    line.buffer_bytes += 64 * 1024;
    let big = &shms[3];

    // 1. FILL a whole registered memref; check the guest's bytes.
    let mut op = Operation::new([
        Param::Whole(big),
        Param::ValueInput {
            a: seed as u32,
            b: 0,
        },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&session, cmd::FILL, &mut op)
        .map_err(e("fill"))?;
    line.invokes += 1;
    let got = big
        .buffer()
        .read_vec(ctx.driver().ram(), 0, big.size())
        .map_err(|err| format!("guest {id}: read: {err}"))?;
    if got
        .iter()
        .enumerate()
        .any(|(i, b)| *b != pattern_byte(seed, i as u64))
    {
        return Err(format!(
            "guest {id}: FILL of the whole 1 MiB buffer wrote wrong bytes"
        ));
    }
    line.bytes_checked += big.size();

    // 2. COPY a partial registered memref into a temporary output memref.
    let out = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), 3000, 123)
        .map_err(|err| format!("guest {id}: RAM: {err}"))?;
    let mut op = Operation::new([
        Param::Partial {
            shm: big,
            offset: 1000,
            size: 3000,
            dir: Direction::Input,
        },
        Param::TempOutput(out.clone()),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&session, cmd::COPY, &mut op)
        .map_err(e("copy"))?;
    line.invokes += 1;
    let copied = out
        .read_vec(ctx.driver().ram(), 0, 3000)
        .map_err(|err| format!("guest {id}: read: {err}"))?;
    if copied != got[1000..4000] {
        return Err(format!("guest {id}: COPY into a temporary memref differs"));
    }
    line.bytes_checked += 3000;

    // 3. SHA-256 of a temporary input into the allocated memory (whole), and of a NULL memref
    //    into part of it.
    let input = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), 10_000, 9)
        .map_err(|err| format!("guest {id}: RAM: {err}"))?;
    let data: Vec<u8> = (0..10_000).map(|i| pattern_byte(seed + 1, i)).collect();
    input
        .write(ctx.driver().ram(), 0, &data)
        .map_err(|err| format!("guest {id}: write: {err}"))?;
    let mut op = Operation::new([
        Param::TempInput(input.clone()),
        Param::Whole(&allocated),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&session, cmd::SHA256, &mut op)
        .map_err(e("sha256"))?;
    line.invokes += 1;
    let digest = allocated
        .buffer()
        .read_vec(ctx.driver().ram(), 0, 32)
        .map_err(|err| format!("guest {id}: read: {err}"))?;
    if digest != sha2::Sha256::digest(&data).as_slice() {
        return Err(format!(
            "guest {id}: SHA-256 of a temporary memref is wrong"
        ));
    }
    line.bytes_checked += 10_000 + 32;
    let mut op = Operation::new([
        Param::Null {
            dir: Direction::Input,
            size: 0,
        },
        Param::Partial {
            shm: &allocated,
            offset: 100,
            size: 32,
            dir: Direction::Output,
        },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&session, cmd::SHA256, &mut op)
        .map_err(e("sha256 of NULL"))?;
    line.invokes += 1;
    let digest = allocated
        .buffer()
        .read_vec(ctx.driver().ram(), 100, 32)
        .map_err(|err| format!("guest {id}: read: {err}"))?;
    if digest != sha2::Sha256::digest(b"").as_slice() {
        return Err(format!("guest {id}: SHA-256 of a NULL memref is wrong"));
    }

    // 4. An RPC buffer of 100 000 bytes from the normal world (kernel type).
    let mut op = Operation::new([
        Param::ValueInput { a: 100_000, b: 1 },
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&session, cmd::RPC_BUFFER, &mut op)
        .map_err(e("rpc buffer"))?;
    line.invokes += 1;
    if let Param::ValueOutput { a, .. } = op.params[1] {
        line.rpc_bytes = u64::from(a);
    }

    // 5. WHERE twice on the 1 MiB buffer: the second use finds the mapping cached.
    for _ in 0..2 {
        let mut op = Operation::new([
            Param::Whole(big),
            Param::ValueOutput { a: 0, b: 0 },
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
        ]);
        ctx.invoke_command(&session, cmd::WHERE, &mut op)
            .map_err(e("where"))?;
        line.invokes += 1;
        if let Param::ValueOutput { a, .. } = op.params[2] {
            line.cache_hit = a == 1;
        }
    }

    // 6-8. The user TA, in its own address space.
    let ta = user_ta_work(&mut ctx, id, seed, &shms[2], &mut line)?;

    // The small buffers go; the big ones stay for the picture.
    for shm in shms.drain(..2) {
        ctx.release_shared_memory(shm).map_err(e("release"))?;
    }
    for buf in [out, input] {
        buf.free(ctx.driver_mut().ram_mut());
    }
    Ok((
        line,
        Opened {
            pta: session.id,
            ta: ta.id,
        },
    ))
}

/// CHECK of all of `shm` by the user TA with `seed`: (bytes checked, index of the first wrong
/// byte or 0xffff_ffff).
fn ta_check(
    ctx: &mut crate::system::GuestContext,
    session: &Session,
    shm: &teeshm_nw::client::SharedMemory,
    seed: u32,
) -> Result<(u32, u32), TeecError> {
    let mut op = Operation::new([
        Param::Whole(shm),
        Param::ValueInput { a: seed, b: 0 },
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
    ]);
    ctx.invoke_command(session, ta_cmd::CHECK, &mut op)?;
    match op.params[2] {
        Param::ValueOutput { a, b } => Ok((a, b)),
        _ => Ok((0, 0)),
    }
}

/// The user TA `teeshm.ta-memtest`: opened by UUID; FILL of the registered buffer `shm` (every
/// byte checked by the guest), CHECK of it (every byte checked by the TA, and a byte the guest
/// changed found where it is), and CALL_PEER (the TA shares a buffer of its own memory with the
/// TA `teeshm.ta-peer`, which checks and inverts it and then dies probing past it). Guest
/// [`TA_KILLER`] also kills a second instance: WRITE_INPUT writes into its read-only input
/// memref, the instance dies with `TEE_ERROR_TARGET_DEAD`, the guest's byte stays as it was, and
/// the first instance goes on. The session left open is returned.
fn user_ta_work(
    ctx: &mut crate::system::GuestContext,
    id: u16,
    seed: u64,
    shm: &teeshm_nw::client::SharedMemory,
    line: &mut GuestLine,
) -> Result<Session, String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: TeecError| format!("guest {id}: user TA: {what}: {err}")
    };
    let session = ctx
        .open_session(memtest::UUID)
        .map_err(e("open teeshm.ta-memtest"))?;
    let ta_seed = (seed as u32).wrapping_add(77);
    let size = shm.size();
    // 6. FILL through the registered buffer, in the TA's address space; the guest checks it.
    let mut op = Operation::new([
        Param::Whole(shm),
        Param::ValueInput { a: ta_seed, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&session, ta_cmd::FILL, &mut op)
        .map_err(e("fill"))?;
    let got = shm
        .buffer()
        .read_vec(ctx.driver().ram(), 0, size)
        .map_err(|err| format!("guest {id}: read: {err}"))?;
    if let Some(i) = (0..size).find(|&i| got[i as usize] != pattern_byte(u64::from(ta_seed), i)) {
        return Err(format!(
            "guest {id}: the user TA's FILL wrote a wrong byte at {i} of {size}"
        ));
    }
    // CHECK reads every byte back; then a byte the guest flips is found where it is.
    let checked = ta_check(ctx, &session, shm, ta_seed).map_err(e("check"))?;
    if checked != (size as u32, u32::MAX) {
        return Err(format!(
            "guest {id}: the user TA's CHECK answered {checked:?}, not ({size}, 0xffffffff)"
        ));
    }
    let flipped = 200_000u64.min(size - 1);
    let ram = ctx.driver().ram();
    let byte = got[flipped as usize];
    shm.buffer()
        .write(ram, flipped, &[!byte])
        .map_err(|err| format!("guest {id}: write: {err}"))?;
    let found = ta_check(ctx, &session, shm, ta_seed).map_err(e("check"))?;
    shm.buffer()
        .write(ctx.driver().ram(), flipped, &[byte])
        .map_err(|err| format!("guest {id}: write: {err}"))?;
    if found != (size as u32, flipped as u32) {
        return Err(format!(
            "guest {id}: the user TA's CHECK answered {found:?} after byte {flipped} changed"
        ));
    }
    line.ta_invokes += 3;
    line.ta_bytes += 3 * size;

    // 7. TA to TA: the peer checks and inverts a buffer of memtest's own memory, then dies
    //    reading past it; memtest checks the inverted bytes and closes the peer's session.
    let mut op = Operation::new([
        Param::ValueInput {
            a: ta_seed,
            b: PEER_BYTES,
        },
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&session, ta_cmd::CALL_PEER, &mut op)
        .map_err(e("call peer"))?;
    let peer = match op.params[1] {
        Param::ValueOutput { a, b } => (a, b),
        _ => (0, 0),
    };
    if peer != (PEER_BYTES, TEE_ERROR_TARGET_DEAD) {
        return Err(format!(
            "guest {id}: CALL_PEER answered (bytes the peer checked, its probe) {peer:?}, not ({PEER_BYTES}, TEE_ERROR_TARGET_DEAD)"
        ));
    }
    line.ta_invokes += 1;
    line.ta_bytes += 2 * u64::from(PEER_BYTES);

    // 8. A TA that faults: a second instance writes into its input memref and dies alone.
    if id == TA_KILLER {
        let victim = ctx
            .open_session(memtest::UUID)
            .map_err(e("open a second instance"))?;
        let before = got[0];
        let mut op = Operation::new([
            Param::Partial {
                shm,
                offset: 0,
                size: 4096,
                dir: Direction::Input,
            },
            Param::None,
            Param::None,
            Param::None,
        ]);
        let dead = TeecError {
            code: TEE_ERROR_TARGET_DEAD,
            origin: TEE_ORIGIN_TEE,
        };
        match ctx.invoke_command(&victim, ta_cmd::WRITE_INPUT, &mut op) {
            Err(err) if err == dead => {}
            other => {
                return Err(format!(
                    "guest {id}: a TA writing its input memref answered {other:?}, not TEE_ERROR_TARGET_DEAD"
                ));
            }
        }
        let now = shm
            .buffer()
            .read_vec(ctx.driver().ram(), 0, 1)
            .map_err(|err| format!("guest {id}: read: {err}"))?;
        if now != [before] {
            return Err(format!(
                "guest {id}: the dead TA's write reached the input memref"
            ));
        }
        // Dead for good; its session still closes, and the first instance goes on.
        let again = ta_check(ctx, &victim, shm, ta_seed);
        if again != Err(dead) {
            return Err(format!(
                "guest {id}: the dead TA answered {again:?}, not TEE_ERROR_TARGET_DEAD"
            ));
        }
        ctx.close_session(victim)
            .map_err(e("close the dead instance"))?;
        let checked = ta_check(ctx, &session, shm, ta_seed).map_err(e("check after the death"))?;
        if checked != (size as u32, u32::MAX) {
            return Err(format!(
                "guest {id}: after its second instance died, the first's CHECK answered {checked:?}"
            ));
        }
        line.ta_deaths += 1;
        line.ta_invokes += 1;
        line.ta_bytes += size;
    }
    Ok(session)
}

/// Starts an RPC_BUFFER call of `guest` by hand and leaves it waiting in its first RPC.
fn start_call_left_in_rpc(system: &System, id: u16, session: u32) -> Result<SmcRegs, String> {
    let guest = system.guest(id).ok_or("guest gone")?;
    let page = {
        let mut ctx = guest.context();
        let page = ctx
            .driver_mut()
            .ram_mut()
            .alloc_pages(1)
            .map_err(|e| e.to_string())?
            .first()
            .copied()
            .ok_or("no page")?;
        let mut h = MsgArgHeader::default();
        h.cmd.set(OPTEE_MSG_CMD_INVOKE_COMMAND);
        h.func.set(cmd::RPC_BUFFER);
        h.session.set(session);
        h.num_params.set(2);
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(
            MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(50_000, 1, 7))
                .as_bytes(),
        );
        bytes.extend_from_slice(
            MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, Value::new(0, 0, 0)).as_bytes(),
        );
        ctx.driver()
            .ram()
            .write(page, &bytes)
            .map_err(|e| e.to_string())?;
        page
    };
    let (hi, lo) = split_pair(page);
    let out = guest.smc(SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]));
    if !is_rpc_return(out.a0()) {
        return Err(format!(
            "the call did not stop in an RPC: a0 = {:#x}",
            out.a0()
        ));
    }
    Ok(out)
}

/// Runs the demo scenario.
///
/// # Errors
/// The system could not be built or a guest could not start.
pub fn scenario() -> Result<DemoOutcome, String> {
    let system = Arc::new(
        System::new(SystemConfig {
            guests: GUESTS,
            ..SystemConfig::default()
        })
        .map_err(|e| e.to_string())?,
    );
    for id in 1..=GUESTS {
        system.start_guest(id).map_err(|e| e.to_string())?;
    }
    let mut failures = Vec::new();
    // The four guests at once, each on its own CPU.
    let results: Vec<Result<(GuestLine, Opened), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=GUESTS)
            .map(|id| {
                let system = &system;
                s.spawn(move || guest_work(system, id))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a guest thread panicked".into()))
            })
            .collect()
    });
    let mut lines = Vec::new();
    let mut sessions = std::collections::BTreeMap::new();
    let mut ta_sessions = std::collections::BTreeMap::new();
    for r in results {
        match r {
            Ok((line, opened)) => {
                check(&mut failures, line.cache_hit, || {
                    format!(
                        "guest {}: the 1 MiB buffer was not cached on its second use",
                        line.guest
                    )
                });
                check(&mut failures, line.rpc_bytes == 100_000, || {
                    format!(
                        "guest {}: the RPC buffer was {} bytes",
                        line.guest, line.rpc_bytes
                    )
                });
                check(
                    &mut failures,
                    line.ta_deaths == u64::from(line.guest == TA_KILLER),
                    || {
                        format!(
                            "guest {}: {} user TA instances died",
                            line.guest, line.ta_deaths
                        )
                    },
                );
                sessions.insert(line.guest, opened.pta);
                ta_sessions.insert(line.guest, opened.ta);
                lines.push(line);
            }
            Err(e) => failures.push(e),
        }
    }
    // Guest 3 is destroyed while one of its calls waits in an RPC.
    let others: Vec<u16> = (1..=GUESTS).filter(|&g| g != DESTROYED).collect();
    let snapshot = |system: &System| {
        let snaps: Vec<_> = others
            .iter()
            .filter_map(|&g| {
                system
                    .tee
                    .guest(teeshm_abi::GuestId(g))
                    .map(|p| p.snapshot())
            })
            .collect();
        let maps: Vec<_> = system
            .tee
            .window()
            .object_mappings()
            .filter(|m| m.owner.raw() != DESTROYED)
            .collect();
        (snaps, maps)
    };
    // One user TA instance a guest (guest 2's dead one closed, every peer closed by memtest).
    let ta_before = system.ta_ram();
    check(
        &mut failures,
        ta_before.instances == u64::from(GUESTS),
        || format!("{} TA instances live, not one a guest", ta_before.instances),
    );
    let session = sessions.get(&DESTROYED).copied().unwrap_or(1);
    match start_call_left_in_rpc(&system, DESTROYED, session) {
        Ok(_) => {
            let g3 = system.guest(DESTROYED);
            let before = snapshot(&system);

            if let Err(e) = system.destroy_guest(DESTROYED) {
                failures.push(format!("destroying guest {DESTROYED}: {e}"));
            }
            let after = snapshot(&system);
            check(&mut failures, before == after, || {
                "destroying guest 3 changed another guest's objects or mappings".into()
            });
            // Its TA instance went with it: one instance and its pages fewer, the others'
            // charges untouched (their secure bytes are in the snapshots compared above).
            let ta_after = system.ta_ram();
            let per_instance = ta_before.used_pages() / ta_before.instances.max(1);
            check(
                &mut failures,
                ta_after.instances + 1 == ta_before.instances
                    && ta_after.used_pages() + per_instance == ta_before.used_pages(),
                || {
                    format!(
                        "after guest 3 went, {} TA instances hold {} pages (before: {} hold {})",
                        ta_after.instances,
                        ta_after.used_pages(),
                        ta_before.instances,
                        ta_before.used_pages()
                    )
                },
            );
            check(
                &mut failures,
                system.tee.guest(teeshm_abi::GuestId(DESTROYED)).is_none(),
                || "the core still knows guest 3".into(),
            );
            let left = system
                .tee
                .window()
                .object_mappings()
                .filter(|m| m.owner.raw() == DESTROYED)
                .count();
            check(&mut failures, left == 0, || {
                format!("{left} mappings of guest 3 remain")
            });
            check(
                &mut failures,
                system
                    .tee
                    .thread_states()
                    .iter()
                    .all(|t| *t == teeshm_core::thread::ThreadState::Free),
                || "a thread still serves guest 3".into(),
            );
            if let Some(g3) = g3 {
                let m = g3.mediator();
                check(&mut failures, m.pinned_pages(g3.id) == 0, || {
                    format!(
                        "the hypervisor still pins {} pages of guest 3",
                        m.pinned_pages(g3.id)
                    )
                });
                check(&mut failures, m.shadow_pages() == 0, || {
                    format!(
                        "guest 3's mediator still holds {} shadow pages",
                        m.shadow_pages()
                    )
                });
            }
            if let Some(line) = lines.iter_mut().find(|l| l.guest == DESTROYED) {
                line.fate = "destroyed mid-call".into();
            }
        }
        Err(e) => failures.push(format!("guest {DESTROYED}: {e}")),
    }
    // The surviving guests' user TAs still answer: a TA's death and a guest's destruction
    // touched no other instance.
    for &g in &others {
        let Some((guest, &id)) = system.guest(g).zip(ta_sessions.get(&g)) else {
            continue;
        };
        let mut op = Operation::new([
            Param::ValueInput { a: 5, b: 4096 },
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
            Param::None,
        ]);
        let answer = guest
            .context()
            .invoke_command(&Session { id }, ta_cmd::CALL_PEER, &mut op);
        match (answer, &op.params[1]) {
            (Ok(()), Param::ValueOutput { a: 4096, b }) if *b == TEE_ERROR_TARGET_DEAD => {
                if let Some(line) = lines.iter_mut().find(|l| l.guest == g) {
                    line.ta_invokes += 1;
                    line.ta_bytes += 2 * 4096;
                }
            }
            (answer, p) => failures.push(format!(
                "guest {g}: its user TA no longer answers as it must: {answer:?}, {p:?}"
            )),
        }
    }
    failures.extend(system.check());
    Ok(DemoOutcome {
        system,
        lines,
        failures,
    })
}

/// The SVG picture of the window after the demo.
pub fn picture(system: &System) -> String {
    SystemReport::take(system)
        .to_svg("teeshm demo: the SHM window after four guests (guest 3 destroyed)")
}
