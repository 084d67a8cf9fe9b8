//! Operations of scenario and replay files (docs/replay.md), and a runner that executes them on
//! a [`System`], one JSON result per operation.
//!
//! Two levels: high-level operations (guests, buffers, invokes) go through each guest's driver;
//! raw operations (bytes at an IPA, an SMC with given registers, an answer to a pending RPC) go
//! straight through the guest's hypervisor path, as a hostile guest kernel would.

use crate::machine::PAGE;
use crate::system::{Guest, System, SystemError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use teeshm_abi::gp::TEE_SUCCESS;
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::smc::SmcRegs;
use teeshm_core::pta::{self, pattern_byte};
use teeshm_nw::{GuestBuffer, GuestRam};

/// Direction of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    /// Input.
    In,
    /// Output.
    Out,
    /// Both.
    Inout,
}

impl Dir {
    fn offset(self) -> u64 {
        match self {
            Dir::In => 0,
            Dir::Out => 1,
            Dir::Inout => 2,
        }
    }
}

/// A parameter of an invoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ParamSpec {
    /// A value parameter.
    Value {
        /// Direction.
        dir: Dir,
        /// `a`.
        #[serde(default)]
        a: u64,
        /// `b`.
        #[serde(default)]
        b: u64,
        /// `c`.
        #[serde(default)]
        c: u64,
    },
    /// A temporary memref: a fresh buffer of `size` bytes at `offset` in its first page, filled
    /// with the pattern of `seed` when it is an input, sent as a NONCONTIG page list.
    Temp {
        /// Direction.
        dir: Dir,
        /// Bytes.
        size: u64,
        /// Offset in the first page.
        #[serde(default)]
        offset: u64,
        /// Pattern seed of the input bytes.
        #[serde(default)]
        seed: u64,
    },
    /// A memref into the registered buffer `cookie` (whole when `offset` 0 and `size` its size,
    /// else partial).
    Registered {
        /// Direction.
        dir: Dir,
        /// The buffer's cookie.
        cookie: u64,
        /// Offset in the buffer.
        #[serde(default)]
        offset: u64,
        /// Bytes.
        size: u64,
    },
    /// A NULL memref (`buf_ptr` 0).
    Null {
        /// Direction.
        dir: Dir,
        /// Size.
        #[serde(default)]
        size: u64,
    },
}

/// One operation of a scenario or replay file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Start a guest (hypervisor: stage-2 map and VM_CREATED; driver: probe).
    CreateGuest {
        /// Guest id, 1..=guests.
        guest: u16,
    },
    /// End a guest (hypervisor: unpin, free, VM_DESTROYED).
    DestroyGuest {
        /// Guest id.
        guest: u16,
    },
    /// Register a fresh buffer of `size` bytes at `offset` in its first page, filled with the
    /// pattern of seed `cookie`.
    Register {
        /// Guest id.
        guest: u16,
        /// Cookie.
        cookie: u64,
        /// Bytes.
        size: u64,
        /// Offset in the first page.
        #[serde(default)]
        offset: u64,
    },
    /// Unregister `cookie`.
    Unregister {
        /// Guest id.
        guest: u16,
        /// Cookie.
        cookie: u64,
    },
    /// Invoke command `cmd` of the memtest pseudo-TA (a session is opened on first use).
    Invoke {
        /// Guest id.
        guest: u16,
        /// Command id (`teeshm_core::pta::cmd`).
        cmd: u32,
        /// Up to four parameters.
        #[serde(default)]
        params: Vec<ParamSpec>,
    },
    /// Raw: write bytes (hex) at a guest IPA.
    Write {
        /// Guest id.
        guest: u16,
        /// Guest-physical address.
        ipa: u64,
        /// Bytes as hex.
        hex: String,
    },
    /// Raw: an SMC from the guest with registers `a0`.. (up to 8; a7 is set by the hypervisor).
    Smc {
        /// Guest id.
        guest: u16,
        /// Registers.
        regs: Vec<u64>,
    },
    /// Run the agreement checker.
    Check,
}

/// What an operation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// 1-based line of the file (0 when not from a file).
    pub line: usize,
    /// The operation's name.
    pub op: String,
    /// Whether it did what was asked (a TEE_SUCCESS, a check without violation).
    pub ok: bool,
    /// `a0` of the final SMC, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a0: Option<u32>,
    /// `optee_msg_arg.ret`, when a message ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<u32>,
    /// Each parameter after an invoke: `{"value": [a, b, c]}` for a value, `{"size": n}` (the
    /// size written back) for a memref, `null` for none.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub params: Vec<serde_json::Value>,
    /// Registers returned by a raw SMC.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub regs: Vec<u64>,
    /// Why it failed, or what was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Executes operations on a system, keeping what the normal worlds hold (sessions, registered
/// buffers) between them.
pub struct Runner {
    /// The system.
    pub system: Arc<System>,
    sessions: BTreeMap<u16, u32>,
    buffers: BTreeMap<(u16, u64), GuestBuffer>,
}

/// The byte at `i` of a registered buffer with cookie `cookie`.
pub fn buffer_byte(cookie: u64, i: u64) -> u8 {
    pattern_byte(cookie ^ 0x5eed, i)
}

impl Runner {
    /// A runner over `system`.
    pub fn new(system: Arc<System>) -> Self {
        Self {
            system,
            sessions: BTreeMap::new(),
            buffers: BTreeMap::new(),
        }
    }

    /// The buffer registered as `cookie` by `guest`, as the normal world knows it.
    pub fn buffer(&self, guest: u16, cookie: u64) -> Option<&GuestBuffer> {
        self.buffers.get(&(guest, cookie))
    }

    /// Cookies `guest` has registered (as its driver believes).
    pub fn cookies(&self, guest: u16) -> Vec<u64> {
        self.buffers
            .range((guest, 0)..=(guest, u64::MAX))
            .map(|(&(_, c), _)| c)
            .collect()
    }

    fn guest(&self, id: u16) -> Result<Arc<Guest>, SystemError> {
        self.system.guest(id).ok_or(SystemError::NoGuest(id))
    }

    /// Executes `op`.
    pub fn run(&mut self, op: &Op) -> OpResult {
        let name = serde_json::to_value(op)
            .ok()
            .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let mut result = match self.execute(op) {
            Ok(r) => r,
            Err(e) => OpResult {
                ok: false,
                detail: Some(e.to_string()),
                ..OpResult::default()
            },
        };
        result.op = name;
        result
    }

    fn execute(&mut self, op: &Op) -> Result<OpResult, SystemError> {
        match op {
            Op::CreateGuest { guest } => {
                self.system.start_guest(*guest)?;
                Ok(done(true))
            }
            Op::DestroyGuest { guest } => {
                self.system.destroy_guest(*guest)?;
                self.sessions.remove(guest);
                let keys: Vec<_> = self.cookies(*guest);
                for c in keys {
                    self.buffers.remove(&(*guest, c));
                }
                Ok(done(true))
            }
            Op::Register {
                guest,
                cookie,
                size,
                offset,
            } => self.register(*guest, *cookie, *size, *offset),
            Op::Unregister { guest, cookie } => {
                let g = self.guest(*guest)?;
                let mut ctx = g.context();
                let result = ctx.driver_mut().unregister(*cookie);
                let ok = result.is_ok();
                if let Some(buf) = self.buffers.remove(&(*guest, *cookie)) {
                    ctx.driver_mut().ram_mut().free_pages(&buf.pages);
                }
                Ok(OpResult {
                    ok,
                    detail: result.err().map(|e| e.to_string()),
                    ..OpResult::default()
                })
            }
            Op::Invoke { guest, cmd, params } => self.invoke(*guest, *cmd, params),
            Op::Write { guest, ipa, hex } => {
                let bytes = decode_hex(hex).ok_or(SystemError::Driver("bad hex".into()))?;
                let g = self.guest(*guest)?;
                let ctx = g.context();
                let ok = ctx.driver().ram().write(*ipa, &bytes).is_ok();
                Ok(done(ok))
            }
            Op::Smc { guest, regs } => {
                let g = self.guest(*guest)?;
                let mut r = SmcRegs::default();
                for (dst, src) in r.a.iter_mut().zip(regs) {
                    *dst = *src;
                }
                let out = g.smc(r);
                Ok(OpResult {
                    ok: true,
                    a0: Some(out.a0()),
                    regs: out.a.to_vec(),
                    ..OpResult::default()
                })
            }
            Op::Check => {
                let found = self.system.check();
                Ok(OpResult {
                    ok: found.is_empty(),
                    detail: found.first().cloned(),
                    ..OpResult::default()
                })
            }
        }
    }

    fn register(
        &mut self,
        guest: u16,
        cookie: u64,
        size: u64,
        offset: u64,
    ) -> Result<OpResult, SystemError> {
        let g = self.guest(guest)?;
        let mut ctx = g.context();
        let buf = alloc_buffer(ctx.driver_mut().ram_mut(), size, offset)?;
        fill(ctx.driver().ram(), &buf, |i| buffer_byte(cookie, i))?;
        match ctx.driver_mut().register(&buf, cookie) {
            Ok(()) => {
                self.buffers.insert((guest, cookie), buf);
                Ok(done(true))
            }
            Err(e) => {
                ctx.driver_mut().ram_mut().free_pages(&buf.pages);
                Ok(OpResult {
                    ok: false,
                    detail: Some(e.to_string()),
                    ..OpResult::default()
                })
            }
        }
    }

    fn session(&mut self, guest: &Guest) -> Result<u32, SystemError> {
        if let Some(&s) = self.sessions.get(&guest.id.raw()) {
            return Ok(s);
        }
        let s = guest
            .context()
            .open_session(pta::MEMTEST_UUID)
            .map_err(|e| SystemError::Driver(format!("open session: {e:?}")))?;
        self.sessions.insert(guest.id.raw(), s.id);
        Ok(s.id)
    }

    fn invoke(
        &mut self,
        guest: u16,
        cmd: u32,
        specs: &[ParamSpec],
    ) -> Result<OpResult, SystemError> {
        let g = self.guest(guest)?;
        let session = self.session(&g)?;
        let mut ctx = g.context();
        let driver = ctx.driver_mut();
        let mut temps: Vec<(GuestBuffer, Vec<u64>)> = Vec::new();
        let mut params = Vec::new();
        for spec in specs {
            params.push(match *spec {
                ParamSpec::Value { dir, a, b, c } => MsgParam::from_value(
                    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT + dir.offset(),
                    Value::new(a, b, c),
                ),
                ParamSpec::Temp {
                    dir,
                    size,
                    offset,
                    seed,
                } => {
                    let buf = alloc_buffer(driver.ram_mut(), size, offset)?;
                    if dir != Dir::Out {
                        fill(driver.ram(), &buf, |i| pattern_byte(seed, i))?;
                    }
                    let lists = write_page_list(driver.ram_mut(), &buf)?;
                    let buf_ptr = lists.first().copied().unwrap_or(0) | buf.offset;
                    temps.push((buf, lists));
                    MsgParam::from_tmem(
                        (OPTEE_MSG_ATTR_TYPE_TMEM_INPUT + dir.offset()) | OPTEE_MSG_ATTR_NONCONTIG,
                        Tmem::new(buf_ptr, size, 0),
                    )
                }
                ParamSpec::Registered {
                    dir,
                    cookie,
                    offset,
                    size,
                } => MsgParam::from_rmem(
                    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT + dir.offset(),
                    Rmem::new(offset, size, cookie),
                ),
                ParamSpec::Null { dir, size } => MsgParam::from_tmem(
                    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT + dir.offset(),
                    Tmem::new(0, size, 0),
                ),
            });
        }
        let mut header = MsgArgHeader::default();
        header.cmd.set(OPTEE_MSG_CMD_INVOKE_COMMAND);
        header.func.set(cmd);
        header.session.set(session);
        let reply = driver.call(header, &params);
        for (buf, lists) in temps {
            driver.ram_mut().free_pages(&buf.pages);
            driver.ram_mut().free_pages(&lists);
        }
        let reply = reply.map_err(|e| SystemError::Driver(e.to_string()))?;
        let ret = reply.header.ret.get();
        Ok(OpResult {
            ok: reply.a0 == 0 && ret == TEE_SUCCESS,
            a0: Some(reply.a0),
            ret: Some(ret),
            params: reply.params.iter().map(param_result).collect(),
            ..OpResult::default()
        })
    }
}

/// A parameter as the result shows it.
fn param_result(p: &MsgParam) -> serde_json::Value {
    let Ok(ty) = ParamType::try_from(p.attr()) else {
        return serde_json::Value::Null;
    };
    if ty.is_value() {
        let v = p.value();
        serde_json::json!({ "value": [v.a.get(), v.b.get(), v.c.get()] })
    } else if ty.is_rmem() {
        serde_json::json!({ "size": p.rmem().size.get() })
    } else if ty.is_tmem() {
        serde_json::json!({ "size": p.tmem().size.get() })
    } else {
        serde_json::Value::Null
    }
}

fn done(ok: bool) -> OpResult {
    OpResult {
        ok,
        ..OpResult::default()
    }
}

/// A fresh buffer of `size` bytes at `offset` of its first page, in scattered guest pages.
pub fn alloc_buffer<R: GuestRam>(
    ram: &mut R,
    size: u64,
    offset: u64,
) -> Result<GuestBuffer, SystemError> {
    let offset = offset % PAGE;
    let n = page_list::num_pages(offset, size.max(1))
        .map_err(|e| SystemError::Driver(e.to_string()))?;
    let pages = ram
        .alloc_pages(n)
        .map_err(|e| SystemError::Driver(e.to_string()))?;
    Ok(GuestBuffer {
        pages,
        offset,
        size,
    })
}

/// Writes byte `f(i)` at every offset `i` of `buf`.
pub fn fill<R: GuestRam>(
    ram: &R,
    buf: &GuestBuffer,
    f: impl Fn(u64) -> u8,
) -> Result<(), SystemError> {
    let mut done = 0;
    while done < buf.size {
        let at = buf.offset + done;
        let page = buf.pages[(at / PAGE) as usize];
        let n = (PAGE - at % PAGE).min(buf.size - done);
        let bytes: Vec<u8> = (done..done + n).map(&f).collect();
        ram.write(page + at % PAGE, &bytes)
            .map_err(|e| SystemError::Driver(e.to_string()))?;
        done += n;
    }
    Ok(())
}

/// Reads `len` bytes at `at` of `buf`.
pub fn read_buffer<R: GuestRam>(
    ram: &R,
    buf: &GuestBuffer,
    at: u64,
    len: u64,
) -> Result<Vec<u8>, SystemError> {
    let mut out = vec![0u8; len as usize];
    let mut done = 0;
    while done < len {
        let x = buf.offset + at + done;
        let page = *buf
            .pages
            .get((x / PAGE) as usize)
            .ok_or(SystemError::Driver("past the buffer".into()))?;
        let n = (PAGE - x % PAGE).min(len - done);
        ram.read(
            page + x % PAGE,
            &mut out[done as usize..(done + n) as usize],
        )
        .map_err(|e| SystemError::Driver(e.to_string()))?;
        done += n;
    }
    Ok(out)
}

/// Writes the NONCONTIG page list of `buf` into fresh guest pages; returns them.
pub fn write_page_list<R: GuestRam>(
    ram: &mut R,
    buf: &GuestBuffer,
) -> Result<Vec<u64>, SystemError> {
    let lists = ram
        .alloc_pages(page_list::list_pages_needed(buf.pages.len() as u64))
        .map_err(|e| SystemError::Driver(e.to_string()))?;
    let ram_ref: &R = ram;
    page_list::encode_with(&buf.pages, buf.offset, buf.size, &lists, |pa, bytes| {
        ram_ref.write(pa, bytes)
    })
    .map_err(|e| SystemError::Driver(format!("page list: {e:?}")))?;
    Ok(lists)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a line of a scenario file was refused.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Parses a scenario file: one JSON object per line; blank lines and lines starting with `#`
/// are skipped.
///
/// # Errors
/// The first malformed line, with its number.
pub fn parse(text: &str) -> Result<Vec<(usize, Op)>, ParseError> {
    let mut ops = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let op: Op = serde_json::from_str(trimmed).map_err(|e| ParseError {
            line: i + 1,
            problem: e.to_string(),
        })?;
        validate(&op).map_err(|problem| ParseError {
            line: i + 1,
            problem,
        })?;
        ops.push((i + 1, op));
    }
    Ok(ops)
}

/// Limits a scenario may not pass (so a file cannot make the simulator allocate without bound).
fn validate(op: &Op) -> Result<(), String> {
    const MAX_BYTES: u64 = 1 << 30;
    match op {
        Op::Register { size, .. } if *size == 0 || *size > MAX_BYTES => {
            Err(format!("size {size} must be 1..=2^30"))
        }
        Op::Invoke { params, .. } if params.len() > 4 => Err("at most 4 params".into()),
        Op::Invoke { params, .. } => {
            for p in params {
                if let ParamSpec::Temp { size, .. } = p {
                    if *size == 0 || *size > MAX_BYTES {
                        return Err(format!("temp size {size} must be 1..=2^30"));
                    }
                }
            }
            Ok(())
        }
        Op::Smc { regs, .. } if regs.len() > 8 => Err("at most 8 registers".into()),
        Op::Write { hex, .. } if decode_hex(hex).is_none() => {
            Err("hex must be pairs of hex digits".into())
        }
        Op::Write { hex, .. } if hex.len() > 2 * PAGE as usize * 16 => {
            Err("write at most 64 KiB".into())
        }
        _ => Ok(()),
    }
}
