//! A client API in the shape of the GlobalPlatform TEE Client API (`TEEC_*`), on top of the
//! [`Driver`].
//!
//! It exists so tests and the simulator can speak to the TEE the way applications do, and so
//! the mapping of client parameters to the wire is the one Linux uses
//! (`optee_to_msg_param` / `optee_from_msg_param`):
//!
//! | client parameter | wire |
//! |---|---|
//! | value | `VALUE_*`, `a` and `b` (`c` = 0) |
//! | temporary memref | `TMEM_* \| NONCONTIG`, a page list built for the call and freed after it |
//! | whole / partial memref of registered or allocated-and-registered memory | `RMEM_*`, `shm_ref` = cookie, `offs`, `size` |
//! | whole / partial memref of memory from the static pool | contiguous `TMEM_*`, `buf_ptr` = the address in the pool |
//! | NULL memref | `TMEM_*` with `buf_ptr` 0 (needs `MEMREF_NULL`) |
//!
//! Output values and sizes come back into the [`Operation`]; sizes also when the TEE answers
//! `TEE_ERROR_SHORT_BUFFER`, so the caller learns how much room is needed.

use alloc::vec::Vec;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp::{
    TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_BUSY, TEE_ERROR_COMMUNICATION, TEE_ERROR_NOT_SUPPORTED,
    TEE_ERROR_OUT_OF_MEMORY, TEE_ORIGIN_API, TEE_ORIGIN_COMMS,
};
use teeshm_abi::msg::{
    MsgParam, OPTEE_MSG_ATTR_META, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT, OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, OPTEE_MSG_CMD_CLOSE_SESSION, OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION, Rmem, Tmem, Value,
};
use teeshm_abi::smc::{OPTEE_SMC_RETURN_OK, SmcConduit};

use crate::driver::{Driver, DriverError, MsgReply, header};
use crate::list::PageList;
use crate::ram::{GuestBuffer, GuestRam, PAGE_SIZE, RamError};

/// `TEEC_LOGIN_PUBLIC`: no client identity is claimed.
pub const TEEC_LOGIN_PUBLIC: u32 = 0;

/// A failure as the client API reports it: a `TEE_ERROR_*` code and where it arose
/// (`TEE_ORIGIN_*`), so callers can tell a TA's answer from a transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("TEEC error {code:#x} (origin {origin})")]
pub struct TeecError {
    /// `TEE_ERROR_*`.
    pub code: u32,
    /// `TEE_ORIGIN_*`.
    pub origin: u32,
}

impl TeecError {
    /// An error the client API itself finds (bad arguments, no memory), before the TEE.
    pub const fn api(code: u32) -> Self {
        Self {
            code,
            origin: TEE_ORIGIN_API,
        }
    }

    /// A failure of the way to the TEE (SMC refused, driver trouble).
    pub const fn comms() -> Self {
        Self {
            code: TEE_ERROR_COMMUNICATION,
            origin: TEE_ORIGIN_COMMS,
        }
    }
}

impl From<DriverError> for TeecError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Tee { ret, origin } => Self { code: ret, origin },
            DriverError::Ram(RamError::OutOfMemory { .. }) => Self::api(TEE_ERROR_OUT_OF_MEMORY),
            DriverError::BadBuffer { .. } | DriverError::ArgTooLarge { .. } => {
                Self::api(TEE_ERROR_BAD_PARAMETERS)
            }
            DriverError::ThreadLimit { .. } => Self {
                code: TEE_ERROR_BUSY,
                origin: TEE_ORIGIN_COMMS,
            },
            _ => Self::comms(),
        }
    }
}

/// Which way the data of shared memory may flow (`TEEC_MEM_INPUT` / `TEEC_MEM_OUTPUT`); a
/// memref may only use directions its memory allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShmFlags(u32);

impl ShmFlags {
    /// `TEEC_MEM_INPUT`: the TEE reads it.
    pub const INPUT: Self = Self(1);
    /// `TEEC_MEM_OUTPUT`: the TEE writes it.
    pub const OUTPUT: Self = Self(2);
    /// Both.
    pub const INOUT: Self = Self(3);

    /// The `TEEC_MEM_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Flags from `TEEC_MEM_*` bits (unknown bits dropped).
    pub const fn from_bits_truncate(bits: u32) -> Self {
        Self(bits & 3)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for ShmFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// How the TEE knows a [`SharedMemory`]: it decides how memrefs of it go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmKind {
    /// The caller's buffer, registered (`TEEC_RegisterSharedMemory`): `RMEM` by cookie.
    Registered,
    /// Fresh guest pages the client allocated and registered: `RMEM` by cookie.
    Allocated,
    /// Taken from the static pool (not registered): contiguous `TMEM` by address.
    Pool,
}

/// Shared memory (`TEEC_SharedMemory`): a guest buffer the TEE knows, by cookie or by its
/// place in the static pool. Not `Clone`: it is released exactly once.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedMemory {
    buffer: GuestBuffer,
    flags: ShmFlags,
    cookie: u64,
    kind: ShmKind,
}

impl SharedMemory {
    /// The guest buffer (read and write it with [`GuestBuffer::read`] / [`GuestBuffer::write`]).
    pub fn buffer(&self) -> &GuestBuffer {
        &self.buffer
    }

    /// The directions memrefs of it may use.
    pub fn flags(&self) -> ShmFlags {
        self.flags
    }

    /// The cookie the TEE knows it by (`shm_ref`).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// How it was made.
    pub fn kind(&self) -> ShmKind {
        self.kind
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.buffer.size
    }
}

/// Direction of a partial or NULL memref (`TEEC_MEMREF_PARTIAL_*`, `TEEC_MEMREF_TEMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The TEE reads.
    Input,
    /// The TEE writes; the size written back.
    Output,
    /// Both.
    Inout,
}

impl Direction {
    fn is_output(self) -> bool {
        matches!(self, Self::Output | Self::Inout)
    }

    fn needs(self) -> ShmFlags {
        match self {
            Self::Input => ShmFlags::INPUT,
            Self::Output => ShmFlags::OUTPUT,
            Self::Inout => ShmFlags::INOUT,
        }
    }

    fn tmem(self) -> u64 {
        match self {
            Self::Input => OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
            Self::Output => OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
            Self::Inout => OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
        }
    }

    fn rmem(self) -> u64 {
        match self {
            Self::Input => OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
            Self::Output => OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Self::Inout => OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
        }
    }
}

/// One parameter of an [`Operation`] (`TEEC_Parameter` with its type).
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Param<'a> {
    /// Unused (`TEEC_NONE`).
    #[default]
    None,
    /// Two values for the TEE.
    ValueInput {
        /// First value.
        a: u32,
        /// Second value.
        b: u32,
    },
    /// Two values the TEE fills in.
    ValueOutput {
        /// First value.
        a: u32,
        /// Second value.
        b: u32,
    },
    /// Two values both ways.
    ValueInout {
        /// First value.
        a: u32,
        /// Second value.
        b: u32,
    },
    /// A temporary memref the TEE reads; sent as a NONCONTIG page list built for this call.
    TempInput(GuestBuffer),
    /// A temporary memref the TEE writes; its `size` becomes the size written back (the pages
    /// stay as they are).
    TempOutput(GuestBuffer),
    /// A temporary memref both ways; `size` written back as for output.
    TempInout(GuestBuffer),
    /// All of a shared memory, in the directions its flags allow (`TEEC_MEMREF_WHOLE`); the
    /// size written back is in [`Operation::returned_sizes`].
    Whole(&'a SharedMemory),
    /// Part of a shared memory (`TEEC_MEMREF_PARTIAL_*`); for output, `size` is written back.
    Partial {
        /// The memory.
        shm: &'a SharedMemory,
        /// First byte in it.
        offset: u64,
        /// Bytes.
        size: u64,
        /// Direction; the memory's flags must allow it.
        dir: Direction,
    },
    /// A NULL memref (no buffer, `buf_ptr` 0), e.g. to ask an output's needed size; the TEE
    /// must report `MEMREF_NULL`.
    Null {
        /// Direction.
        dir: Direction,
        /// Size claimed; for output, written back.
        size: u64,
    },
}

/// The parameters of a call (`TEEC_Operation`), updated in place by the call.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Operation<'a> {
    /// The four parameters.
    pub params: [Param<'a>; 4],
    /// After a call: the size the TEE wrote back into each memref param (`None` for values
    /// and unused params). The only place the written-back size of a [`Param::Whole`] appears.
    pub returned_sizes: [Option<u64>; 4],
}

impl<'a> Operation<'a> {
    /// An operation with these parameters.
    pub fn new(params: [Param<'a>; 4]) -> Self {
        Self {
            params,
            returned_sizes: [None; 4],
        }
    }
}

/// An open session with a TA (`TEEC_Session`).
#[derive(Debug, PartialEq, Eq)]
pub struct Session {
    /// The TEE's session id.
    pub id: u32,
}

/// A client context (`TEEC_Context`) over one driver.
#[derive(Debug)]
pub struct Context<C: SmcConduit, R: GuestRam> {
    driver: Driver<C, R>,
}

/// The wire form of an operation, and what to undo after the call: page lists to free, and
/// pool bounce buffers to copy back and free.
#[derive(Default)]
struct Marshalled {
    params: Vec<MsgParam>,
    lists: Vec<PageList>,
    bounces: Vec<Bounce>,
}

/// A temporary memref sent through the static pool (a TEE without dynamic SHM), as libteec
/// does with a shadow buffer: the data is copied in before the call and out after it.
struct Bounce {
    /// Index of the param in the operation.
    index: usize,
    /// The pool run.
    pa: u64,
}

impl<C: SmcConduit, R: GuestRam> Context<C, R> {
    /// A context over a probed driver.
    pub fn new(driver: Driver<C, R>) -> Self {
        Self { driver }
    }

    /// The driver.
    pub fn driver(&self) -> &Driver<C, R> {
        &self.driver
    }

    /// The driver, e.g. to reach guest RAM.
    pub fn driver_mut(&mut self) -> &mut Driver<C, R> {
        &mut self.driver
    }

    /// Ends the context, giving the driver back (for its shutdown).
    pub fn into_driver(self) -> Driver<C, R> {
        self.driver
    }

    /// Opens a session with the TA `uuid` as a public client, with no parameters.
    ///
    /// # Errors
    /// The TEE's answer (e.g. `TEE_ERROR_ITEM_NOT_FOUND` for an unknown TA) or the transport.
    pub fn open_session(&mut self, uuid: [u8; 16]) -> Result<Session, TeecError> {
        let mut op = Operation::default();
        self.open_session_with(uuid, TEEC_LOGIN_PUBLIC, &mut op)
    }

    /// Opens a session with parameters. The two meta params come first, as Linux sends them:
    /// the TA UUID (octets 0..8 in value `a`, 8..16 in `b`, little-endian) and the client
    /// identity (login method in `c`, a nil client UUID in `a`/`b`).
    ///
    /// # Errors
    /// As [`Context::open_session`].
    pub fn open_session_with(
        &mut self,
        uuid: [u8; 16],
        login: u32,
        op: &mut Operation<'_>,
    ) -> Result<Session, TeecError> {
        let (lo, hi) = uuid.split_at(8);
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
        let mut m = self.marshal(op)?;
        let mut params = Vec::with_capacity(2 + m.params.len());
        params.push(MsgParam::from_value(
            meta,
            Value::new(word(lo), word(hi), 0),
        ));
        params.push(MsgParam::from_value(
            meta,
            Value::new(0, 0, u64::from(login)),
        ));
        params.append(&mut m.params);
        let reply = self.run(header(OPTEE_MSG_CMD_OPEN_SESSION), &params, m, op, 2)?;
        check(&reply)?;
        Ok(Session {
            id: reply.header.session.get(),
        })
    }

    /// Closes a session.
    ///
    /// # Errors
    /// The TEE's answer (an unknown session) or the transport.
    pub fn close_session(&mut self, s: Session) -> Result<(), TeecError> {
        let mut h = header(OPTEE_MSG_CMD_CLOSE_SESSION);
        h.session.set(s.id);
        let reply = self.run(h, &[], Marshalled::default(), &mut Operation::default(), 0)?;
        check(&reply)
    }

    /// Invokes command `cmd` of the session's TA; output values and sizes come back into `op`.
    ///
    /// # Errors
    /// A parameter the client refuses (origin API), the TA's or TEE's answer, or the
    /// transport.
    pub fn invoke_command(
        &mut self,
        s: &Session,
        cmd: u32,
        op: &mut Operation<'_>,
    ) -> Result<(), TeecError> {
        let mut m = self.marshal(op)?;
        let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
        h.session.set(s.id);
        h.func.set(cmd);
        let params = core::mem::take(&mut m.params);
        let reply = self.run(h, &params, m, op, 0)?;
        check(&reply)
    }

    /// Registers the caller's buffer (`TEEC_RegisterSharedMemory`) under a fresh cookie.
    ///
    /// # Errors
    /// An empty or malformed buffer (`TEE_ERROR_BAD_PARAMETERS`, origin API), a TEE without
    /// dynamic SHM (`TEE_ERROR_NOT_SUPPORTED`, origin API: libteec would copy through a pool
    /// shadow on every call, which this model does only for temporary memrefs), or the TEE's
    /// answer. The buffer is consumed either way: keep a clone to free its pages on failure.
    pub fn register_shared_memory(
        &mut self,
        buf: GuestBuffer,
        flags: ShmFlags,
    ) -> Result<SharedMemory, TeecError> {
        if buf.size == 0 || !buf.is_well_formed() {
            return Err(TeecError::api(TEE_ERROR_BAD_PARAMETERS));
        }
        if !self.driver.caps().contains(SecureCaps::DYNAMIC_SHM) {
            return Err(TeecError::api(TEE_ERROR_NOT_SUPPORTED));
        }
        let cookie = self.driver.new_cookie();
        self.driver.register(&buf, cookie)?;
        Ok(SharedMemory {
            buffer: buf,
            flags,
            cookie,
            kind: ShmKind::Registered,
        })
    }

    /// Allocates shared memory (`TEEC_AllocateSharedMemory`): from the static pool when the
    /// driver has one (as Linux's reserved-memory pool), else fresh guest pages that are
    /// registered at once.
    ///
    /// # Errors
    /// Size 0 (`TEE_ERROR_BAD_PARAMETERS`), no memory (`TEE_ERROR_OUT_OF_MEMORY`), both origin
    /// API; or the TEE's answer to the registration.
    pub fn allocate_shared_memory(
        &mut self,
        size: u64,
        flags: ShmFlags,
    ) -> Result<SharedMemory, TeecError> {
        if size == 0 {
            return Err(TeecError::api(TEE_ERROR_BAD_PARAMETERS));
        }
        let pages = GuestBuffer::pages_for(0, size);
        if let Some(pool) = self.driver.static_pool_mut() {
            let pa = pool
                .alloc(pages)
                .ok_or(TeecError::api(TEE_ERROR_OUT_OF_MEMORY))?;
            let buffer = GuestBuffer {
                pages: (0..pages).map(|i| pa + i * PAGE_SIZE).collect(),
                offset: 0,
                size,
            };
            return Ok(SharedMemory {
                buffer,
                flags,
                cookie: self.driver.new_cookie(),
                kind: ShmKind::Pool,
            });
        }
        let buffer = GuestBuffer::alloc(self.driver.ram_mut(), size, 0)
            .map_err(|_| TeecError::api(TEE_ERROR_OUT_OF_MEMORY))?;
        let cookie = self.driver.new_cookie();
        if let Err(e) = self.driver.register(&buffer, cookie) {
            buffer.free(self.driver.ram_mut());
            return Err(e.into());
        }
        Ok(SharedMemory {
            buffer,
            flags,
            cookie,
            kind: ShmKind::Allocated,
        })
    }

    /// Releases shared memory (`TEEC_ReleaseSharedMemory`): unregisters it, and gives back
    /// what the client allocated.
    ///
    /// # Errors
    /// The TEE's answer to the unregistration. Pages the client allocated are then *not* given
    /// back to the guest: the TEE may still reference them (`TEE_ERROR_BUSY`), and a page the
    /// TEE might touch must never be reused.
    pub fn release_shared_memory(&mut self, shm: SharedMemory) -> Result<(), TeecError> {
        match shm.kind {
            ShmKind::Registered => self.driver.unregister(shm.cookie)?,
            ShmKind::Allocated => {
                self.driver.unregister(shm.cookie)?;
                shm.buffer.free(self.driver.ram_mut());
            }
            ShmKind::Pool => {
                if let (Some(pool), Some(&pa)) =
                    (self.driver.static_pool_mut(), shm.buffer.pages.first())
                {
                    pool.free(pa);
                }
            }
        }
        Ok(())
    }

    /// Runs a message, brings output values, sizes and bounced data back into `op` (whose
    /// params start at index `base` of the message), and frees what the call needed, whatever
    /// happened.
    fn run(
        &mut self,
        h: teeshm_abi::msg::MsgArgHeader,
        params: &[MsgParam],
        m: Marshalled,
        op: &mut Operation<'_>,
        base: usize,
    ) -> Result<MsgReply, TeecError> {
        let reply = self.driver.call(h, params);
        let wire = match &reply {
            Ok(r) if r.a0 == OPTEE_SMC_RETURN_OK => r.params.get(base..),
            _ => None,
        };
        self.undo(m, op, wire);
        if let Some(wire) = wire {
            unmarshal(op, wire);
        }
        let reply = reply?;
        if reply.a0 != OPTEE_SMC_RETURN_OK {
            return Err(TeecError::comms());
        }
        Ok(reply)
    }

    /// Frees page lists and bounce buffers; with the TEE's answer (`wire`), first copies what
    /// the TEE wrote into bounce buffers back to the caller's buffers.
    fn undo(&mut self, m: Marshalled, op: &mut Operation<'_>, wire: Option<&[MsgParam]>) {
        for list in m.lists {
            self.driver.free_page_list(list);
        }
        for b in m.bounces {
            let written = wire
                .and_then(|w| w.get(b.index))
                .map(|p| p.tmem().size.get());
            // Only what the TEE wrote, and only if it fits (libteec does the same): after a
            // short buffer the caller's bytes stay as they were.
            if let (Some(n), Some(Param::TempOutput(buf) | Param::TempInout(buf))) = (
                written.filter(|&n| n > 0 && n <= buf_size(op, b.index)),
                op.params.get(b.index),
            ) {
                let mut data = alloc::vec![0u8; usize::try_from(n).unwrap_or(0)];
                let ram = self.driver.ram();
                // Best effort: a failed copy leaves the caller's buffer as it was.
                if ram.read(b.pa, &mut data).is_ok() {
                    let _ = buf.write(ram, 0, &data);
                }
            }
            if let Some(pool) = self.driver.static_pool_mut() {
                pool.free(b.pa);
            }
        }
    }

    /// The wire params of `op` (Linux `optee_to_msg_param`). On failure everything built so
    /// far is freed.
    fn marshal(&mut self, op: &mut Operation<'_>) -> Result<Marshalled, TeecError> {
        let mut m = Marshalled::default();
        for (index, p) in op.params.iter().enumerate() {
            match self.marshal_one(index, p, &mut m) {
                Ok(wire) => m.params.push(wire),
                Err(e) => {
                    self.undo(m, op, None);
                    return Err(e);
                }
            }
        }
        Ok(m)
    }

    fn marshal_one(
        &mut self,
        index: usize,
        p: &Param<'_>,
        m: &mut Marshalled,
    ) -> Result<MsgParam, TeecError> {
        let bad = TeecError::api(TEE_ERROR_BAD_PARAMETERS);
        let value =
            |attr, a: u32, b: u32| MsgParam::from_value(attr, Value::new(a.into(), b.into(), 0));
        Ok(match p {
            Param::None => MsgParam::new(OPTEE_MSG_ATTR_TYPE_NONE),
            Param::ValueInput { a, b } => value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, *a, *b),
            Param::ValueOutput { a, b } => value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, *a, *b),
            Param::ValueInout { a, b } => value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, *a, *b),
            Param::TempInput(buf) => self.temp(index, buf, Direction::Input, m)?,
            Param::TempOutput(buf) => self.temp(index, buf, Direction::Output, m)?,
            Param::TempInout(buf) => self.temp(index, buf, Direction::Inout, m)?,
            Param::Whole(shm) => {
                let dir = match (
                    shm.flags.contains(ShmFlags::INPUT),
                    shm.flags.contains(ShmFlags::OUTPUT),
                ) {
                    (true, true) => Direction::Inout,
                    (true, false) => Direction::Input,
                    (false, true) => Direction::Output,
                    (false, false) => return Err(bad),
                };
                memref_of(shm, 0, shm.size(), dir)
            }
            Param::Partial {
                shm,
                offset,
                size,
                dir,
            } => {
                let inside = offset
                    .checked_add(*size)
                    .is_some_and(|end| end <= shm.size());
                if !shm.flags.contains(dir.needs()) || !inside {
                    return Err(bad);
                }
                memref_of(shm, *offset, *size, *dir)
            }
            Param::Null { dir, size } => self.null(*dir, *size)?,
        })
    }

    /// A temporary memref: a page list of the buffer for this call, or a bounce buffer in the
    /// pool for a TEE without dynamic SHM; an empty buffer goes as a NULL memref, since a page
    /// list cannot describe 0 bytes.
    fn temp(
        &mut self,
        index: usize,
        buf: &GuestBuffer,
        dir: Direction,
        m: &mut Marshalled,
    ) -> Result<MsgParam, TeecError> {
        if buf.size == 0 {
            return self.null(dir, 0);
        }
        if !buf.is_well_formed() {
            return Err(TeecError::api(TEE_ERROR_BAD_PARAMETERS));
        }
        // A unique shm_ref, as Linux's tee_shm pointer: a hypervisor (Xen) keys temporary
        // buffers by it and refuses duplicates.
        let cookie = self.driver.new_cookie();
        if self.driver.pool_only() {
            let pa = self.bounce(buf, dir)?;
            m.bounces.push(Bounce { index, pa });
            return Ok(MsgParam::from_tmem(
                dir.tmem(),
                Tmem::new(pa, buf.size, cookie),
            ));
        }
        let list = self.driver.page_list(buf)?;
        let p = MsgParam::from_tmem(
            dir.tmem() | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(list.buf_ptr, buf.size, cookie),
        );
        m.lists.push(list);
        Ok(p)
    }

    /// A pool copy of `buf` (its bytes copied in for an input).
    fn bounce(&mut self, buf: &GuestBuffer, dir: Direction) -> Result<u64, TeecError> {
        let pages = GuestBuffer::pages_for(0, buf.size);
        let no_memory = TeecError::api(TEE_ERROR_OUT_OF_MEMORY);
        let pa = self
            .driver
            .static_pool_mut()
            .and_then(|pool| pool.alloc(pages))
            .ok_or(no_memory)?;
        if dir != Direction::Output {
            let ram = self.driver.ram();
            let copied = buf
                .read_vec(ram, 0, buf.size)
                .and_then(|data| ram.write(pa, &data));
            if copied.is_err() {
                if let Some(pool) = self.driver.static_pool_mut() {
                    pool.free(pa);
                }
                return Err(TeecError::comms());
            }
        }
        Ok(pa)
    }

    fn null(&self, dir: Direction, size: u64) -> Result<MsgParam, TeecError> {
        if !self.driver.caps().contains(SecureCaps::MEMREF_NULL) {
            return Err(TeecError::api(TEE_ERROR_BAD_PARAMETERS));
        }
        Ok(MsgParam::from_tmem(dir.tmem(), Tmem::new(0, size, 0)))
    }
}

/// A memref into shared memory: by cookie when the TEE knows it registered, by address in the
/// pool otherwise.
fn memref_of(shm: &SharedMemory, offset: u64, size: u64, dir: Direction) -> MsgParam {
    match shm.kind {
        ShmKind::Registered | ShmKind::Allocated => {
            MsgParam::from_rmem(dir.rmem(), Rmem::new(offset, size, shm.cookie))
        }
        ShmKind::Pool => {
            let pa = shm.buffer.ipa_at(offset).unwrap_or_else(|| {
                // offset == size (an empty memref at the end): the address just past the data.
                shm.buffer.pages.first().copied().unwrap_or(0) + shm.buffer.offset + offset
            });
            MsgParam::from_tmem(dir.tmem(), Tmem::new(pa, size, shm.cookie))
        }
    }
}

/// Copies output values and written-back sizes into `op` (Linux `optee_from_msg_param`).
fn unmarshal(op: &mut Operation<'_>, wire: &[MsgParam]) {
    for ((p, returned), w) in op
        .params
        .iter_mut()
        .zip(op.returned_sizes.iter_mut())
        .zip(wire)
    {
        let size = w.tmem().size.get();
        *returned = None;
        match p {
            Param::None | Param::ValueInput { .. } => {}
            Param::ValueOutput { a, b } | Param::ValueInout { a, b } => {
                let v = w.value();
                *a = (v.a.get() & 0xffff_ffff) as u32;
                *b = (v.b.get() & 0xffff_ffff) as u32;
            }
            Param::TempInput(_) | Param::Whole(_) => *returned = Some(size),
            Param::TempOutput(buf) | Param::TempInout(buf) => {
                *returned = Some(size);
                buf.size = size;
            }
            Param::Partial {
                size: psize, dir, ..
            }
            | Param::Null { size: psize, dir } => {
                *returned = Some(size);
                if dir.is_output() {
                    *psize = size;
                }
            }
        }
    }
}

/// Size of the temporary buffer of param `index` (0 for anything else).
fn buf_size(op: &Operation<'_>, index: usize) -> u64 {
    match op.params.get(index) {
        Some(Param::TempInput(b) | Param::TempOutput(b) | Param::TempInout(b)) => b.size,
        _ => 0,
    }
}

/// The message's result as a client error.
fn check(reply: &MsgReply) -> Result<(), TeecError> {
    reply.check().map_err(TeecError::from)
}
