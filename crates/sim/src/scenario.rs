//! Operations of scenario and replay files (docs/replay.md), and a runner that executes them on
//! a [`System`], one JSON result per operation.
//!
//! Two levels: high-level operations (guests, buffers, sessions, invokes) go through each guest's
//! driver; raw operations (bytes at an IPA, an SMC with given registers, an answer to a pending
//! RPC) go straight through the guest's hypervisor path, as a hostile guest kernel would.
//!
//! An `invoke` without a `session` goes to the memtest pseudo-TA (a session opened on the
//! guest's first such invoke); `open_session` opens a session of any TA, the user TAs included,
//! by name or UUID under a handle the scenario chooses, and `invoke` with that `session` and
//! `close_session` use it.

use crate::machine::PAGE;
use crate::system::{Guest, System, SystemError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use teeshm_abi::gp::{TEE_ERROR_TARGET_DEAD, TEE_SUCCESS};
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
    /// Invoke command `cmd` of the memtest pseudo-TA (a session is opened on first use), or
    /// of the session the scenario opened as `session`.
    Invoke {
        /// Guest id.
        guest: u16,
        /// Command id (`teeshm_core::pta::cmd`; a user TA's own, e.g. `teeshm_ta::memtest::cmd`).
        cmd: u32,
        /// Up to four parameters.
        #[serde(default)]
        params: Vec<ParamSpec>,
        /// The handle of a session from `open_session`; none: the pseudo-TA's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u32>,
    },
    /// Open a session of the TA `ta` (a registered TA's name, e.g. `teeshm.ta-memtest`, or any
    /// UUID as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`) as a public client, with up to four
    /// parameters for its open entry; later operations name it by `session`.
    OpenSession {
        /// Guest id.
        guest: u16,
        /// The TA: a name or a UUID.
        ta: String,
        /// The handle the scenario gives the session (its own number, not the TEE's id).
        session: u32,
        /// Up to four parameters.
        #[serde(default)]
        params: Vec<ParamSpec>,
    },
    /// Close the session opened as `session`.
    CloseSession {
        /// Guest id.
        guest: u16,
        /// The handle.
        session: u32,
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
    /// The TEE's id of a session `open_session` opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
    /// Registers returned by a raw SMC.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub regs: Vec<u64>,
    /// Why it failed, or what was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A session a scenario opened, as the runner knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedSession {
    /// The scenario's handle.
    pub handle: u32,
    /// The TEE's session id.
    pub id: u32,
    /// The TA's UUID.
    pub uuid: [u8; 16],
    /// An invoke of it answered `TEE_ERROR_TARGET_DEAD`: the TA died, the session only closes.
    pub dead: bool,
}

/// Executes operations on a system, keeping what the normal worlds hold (sessions, registered
/// buffers) between them.
pub struct Runner {
    /// The system.
    pub system: Arc<System>,
    sessions: BTreeMap<u16, u32>,
    opened: BTreeMap<(u16, u32), OpenedSession>,
    buffers: BTreeMap<(u16, u64), GuestBuffer>,
}

/// A UUID's 16 octets in its text form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, RFC 4122 order).
pub fn uuid_text(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The octets of a UUID in text form, if `text` is one.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return None;
    }
    let bytes = decode_hex(&groups.concat())?;
    bytes.try_into().ok()
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
            opened: BTreeMap::new(),
            buffers: BTreeMap::new(),
        }
    }

    /// The sessions `guest` opened by `open_session` and has not closed, by handle.
    pub fn opened_sessions(&self, guest: u16) -> Vec<OpenedSession> {
        self.opened
            .range((guest, 0)..=(guest, u32::MAX))
            .map(|(_, s)| *s)
            .collect()
    }

    /// The UUID of the TA `ta` names: a UUID in text form, or the name of a TA the core has.
    ///
    /// # Errors
    /// Neither.
    pub fn resolve_ta(&self, ta: &str) -> Result<[u8; 16], SystemError> {
        if let Some(uuid) = parse_uuid(ta) {
            return Ok(uuid);
        }
        self.system
            .tee
            .tas()
            .list()
            .into_iter()
            .find(|(name, _)| *name == ta)
            .map(|(_, uuid)| uuid)
            .ok_or_else(|| SystemError::Scenario(format!("no TA is named {ta:?}")))
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
                self.opened.retain(|(g, _), _| g != guest);
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
            Op::Invoke {
                guest,
                cmd,
                params,
                session,
            } => self.invoke(*guest, *cmd, params, *session),
            Op::OpenSession {
                guest,
                ta,
                session,
                params,
            } => self.open_session(*guest, ta, *session, params),
            Op::CloseSession { guest, session } => self.close_session(*guest, *session),
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

    /// Runs the message `header` with the wire form of `meta` and then `specs` (fresh
    /// temporary buffers for it, freed after), as the guest's driver.
    fn message(
        &mut self,
        guest: &Guest,
        header: MsgArgHeader,
        meta: &[MsgParam],
        specs: &[ParamSpec],
    ) -> Result<teeshm_nw::driver::MsgReply, SystemError> {
        let mut ctx = guest.context();
        let driver = ctx.driver_mut();
        let mut temps: Vec<(GuestBuffer, Vec<u64>)> = Vec::new();
        let mut params = meta.to_vec();
        let built = build_params(driver, specs, &mut temps, &mut params);
        let reply = match built {
            Ok(()) => driver
                .call(header, &params)
                .map_err(|e| SystemError::Driver(e.to_string())),
            Err(e) => Err(e),
        };
        for (buf, lists) in temps {
            driver.ram_mut().free_pages(&buf.pages);
            driver.ram_mut().free_pages(&lists);
        }
        reply
    }

    fn invoke(
        &mut self,
        guest: u16,
        cmd: u32,
        specs: &[ParamSpec],
        handle: Option<u32>,
    ) -> Result<OpResult, SystemError> {
        let g = self.guest(guest)?;
        let session = match handle {
            None => self.session(&g)?,
            Some(h) => {
                self.opened
                    .get(&(guest, h))
                    .ok_or_else(|| {
                        SystemError::Scenario(format!("guest {guest} has no session {h} open"))
                    })?
                    .id
            }
        };
        let mut header = MsgArgHeader::default();
        header.cmd.set(OPTEE_MSG_CMD_INVOKE_COMMAND);
        header.func.set(cmd);
        header.session.set(session);
        let reply = self.message(&g, header, &[], specs)?;
        let ret = reply.header.ret.get();
        if let (Some(h), TEE_ERROR_TARGET_DEAD) = (handle, ret) {
            if let Some(s) = self.opened.get_mut(&(guest, h)) {
                s.dead = true;
            }
        }
        Ok(OpResult {
            ok: reply.a0 == 0 && ret == TEE_SUCCESS,
            a0: Some(reply.a0),
            ret: Some(ret),
            params: reply.params.iter().map(param_result).collect(),
            ..OpResult::default()
        })
    }

    fn open_session(
        &mut self,
        guest: u16,
        ta: &str,
        handle: u32,
        specs: &[ParamSpec],
    ) -> Result<OpResult, SystemError> {
        let g = self.guest(guest)?;
        if self.opened.contains_key(&(guest, handle)) {
            return Err(SystemError::Scenario(format!(
                "guest {guest} has a session {handle} open already"
            )));
        }
        let uuid = self.resolve_ta(ta)?;
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        // As Linux sends them: the TA's UUID, then the client (public login, nil UUID).
        let meta_attr = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
        let meta = [
            MsgParam::from_value(meta_attr, Value::new(word(&uuid[..8]), word(&uuid[8..]), 0)),
            MsgParam::from_value(meta_attr, Value::new(0, 0, 0)),
        ];
        let reply = self.message(&g, header_of(OPTEE_MSG_CMD_OPEN_SESSION), &meta, specs)?;
        let ret = reply.header.ret.get();
        let ok = reply.a0 == 0 && ret == TEE_SUCCESS;
        let id = reply.header.session.get();
        if ok {
            self.opened.insert(
                (guest, handle),
                OpenedSession {
                    handle,
                    id,
                    uuid,
                    dead: false,
                },
            );
        }
        Ok(OpResult {
            ok,
            a0: Some(reply.a0),
            ret: Some(ret),
            session: ok.then_some(id),
            params: reply
                .params
                .get(meta.len()..)
                .unwrap_or_default()
                .iter()
                .map(param_result)
                .collect(),
            ..OpResult::default()
        })
    }

    fn close_session(&mut self, guest: u16, handle: u32) -> Result<OpResult, SystemError> {
        let g = self.guest(guest)?;
        let session = self.opened.remove(&(guest, handle)).ok_or_else(|| {
            SystemError::Scenario(format!("guest {guest} has no session {handle} open"))
        })?;
        let mut header = header_of(OPTEE_MSG_CMD_CLOSE_SESSION);
        header.session.set(session.id);
        let reply = self.message(&g, header, &[], &[])?;
        let ret = reply.header.ret.get();
        Ok(OpResult {
            ok: reply.a0 == 0 && ret == TEE_SUCCESS,
            a0: Some(reply.a0),
            ret: Some(ret),
            ..OpResult::default()
        })
    }
}

/// A message header of command `cmd`.
fn header_of(cmd: u32) -> MsgArgHeader {
    let mut header = MsgArgHeader::default();
    header.cmd.set(cmd);
    header
}

/// Appends the wire form of `specs` to `params`; fresh temporary buffers (and their page
/// lists) go to `temps`, for the caller to free after the call.
fn build_params(
    driver: &mut crate::system::GuestDriver,
    specs: &[ParamSpec],
    temps: &mut Vec<(GuestBuffer, Vec<u64>)>,
    params: &mut Vec<MsgParam>,
) -> Result<(), SystemError> {
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
                    if let Err(e) = fill(driver.ram(), &buf, |i| pattern_byte(seed, i)) {
                        driver.ram_mut().free_pages(&buf.pages);
                        return Err(e);
                    }
                }
                let lists = match write_page_list(driver.ram_mut(), &buf) {
                    Ok(lists) => lists,
                    Err(e) => {
                        driver.ram_mut().free_pages(&buf.pages);
                        return Err(e);
                    }
                };
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
    Ok(())
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
        Op::Invoke { params, .. } | Op::OpenSession { params, .. } if params.len() > 4 => {
            Err("at most 4 params".into())
        }
        Op::OpenSession { ta, .. } if parse_uuid(ta).is_none() && !is_ta_name(ta) => Err(format!(
            "ta {ta:?} is neither a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) nor a TA's name"
        )),
        Op::Invoke { params, .. } | Op::OpenSession { params, .. } => {
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

/// Whether `name` can be a TA's name: 1 to 64 characters, letters, digits, `.`, `-` and `_`
/// (whether a TA has it is known when the scenario runs).
fn is_ta_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}
