//! Messages as a normal world writes and reads them: params, headers, whole args, the reply of a
//! call, and buffers described by their pages. Shared by the core's test world ([`crate::World`],
//! physical addresses) and the mediator's tests (guest IPAs), which build the same shapes.

use teeshm_abi::msg::{
    MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_META, OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND, Rmem, Value,
};
use teeshm_abi::page_list;
use teeshm_mm::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

/// A value param of type `ty`.
pub fn value(ty: u64, a: u64, b: u64, c: u64) -> MsgParam {
    MsgParam::from_value(ty, Value::new(a, b, c))
}

/// An rmem param of type `ty`: `size` bytes at `offs` in registered buffer `cookie`.
pub fn rmem(ty: u64, cookie: u64, offs: u64, size: u64) -> MsgParam {
    MsgParam::from_rmem(ty, Rmem::new(offs, size, cookie))
}

/// A header for command `cmd`, everything else zero.
pub fn header(cmd: u32) -> MsgArgHeader {
    let mut h = MsgArgHeader::default();
    h.cmd.set(cmd);
    h
}

/// The header of `INVOKE_COMMAND` of `func` in `session`.
pub fn invoke_header(session: u32, func: u32) -> MsgArgHeader {
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(session);
    h.func.set(func);
    h
}

/// The bytes of an `optee_msg_arg`: `header` with `num_params` set, then `params`.
pub fn arg_bytes(header: MsgArgHeader, params: &[MsgParam]) -> Vec<u8> {
    let mut bytes = header.as_bytes().to_vec();
    for p in params {
        bytes.extend_from_slice(p.as_bytes());
    }
    let (hdr, _) = MsgArgHeader::mut_from_prefix(&mut bytes).expect("a whole header");
    hdr.num_params.set(params.len() as u32);
    bytes
}

/// The header and params of an arg read back from `bytes` (as many params as fit).
pub fn parse_arg(bytes: &[u8]) -> (MsgArgHeader, Vec<MsgParam>) {
    let (header, rest) = MsgArgHeader::read_from_prefix(bytes).expect("a whole header");
    let whole = rest.len() - rest.len() % size_of::<MsgParam>();
    let params = <[MsgParam]>::ref_from_bytes(&rest[..whole]).expect("whole params");
    (header, params.to_vec())
}

/// The two meta params of `OPEN_SESSION` of the TA `uuid` with public login.
pub fn open_session_params(uuid: [u8; 16]) -> [MsgParam; 2] {
    let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
    let (lo, hi) = uuid.split_at(8);
    let a = u64::from_le_bytes(lo.try_into().expect("8 bytes"));
    let b = u64::from_le_bytes(hi.try_into().expect("8 bytes"));
    [value(meta, a, b, 0), value(meta, 0, 0, 0)]
}

/// The memtest pseudo-TA's pattern of `seed` over `len` bytes.
pub fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| teeshm_core::pta::pattern_byte(seed, i))
        .collect()
}

/// The result of a call as the normal world sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The SMC's `a0`.
    pub a0: u32,
    /// The arg's header as the TEE left it.
    pub header: MsgArgHeader,
    /// Its params as the TEE left them.
    pub params: Vec<MsgParam>,
    /// RPC codes answered on the way, where the harness records them.
    pub rpcs: Vec<u32>,
}

impl Reply {
    /// The result code in the header.
    pub fn ret(&self) -> u32 {
        self.header.ret.get()
    }

    /// The result origin in the header.
    pub fn origin(&self) -> u32 {
        self.header.ret_origin.get()
    }

    /// Param `i` as a value `[a, b, c]`.
    pub fn value(&self, i: usize) -> [u64; 3] {
        let v = self.params[i].value();
        [v.a.get(), v.b.get(), v.c.get()]
    }
}

/// A buffer as its owner knows it: its data pages (in the owner's address space: physical for
/// the core's test world, IPAs for a guest behind the mediator), the offset of its first byte,
/// and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buf {
    /// Data pages, in order.
    pub pages: Vec<u64>,
    /// Offset of the first byte in the first page.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

impl Buf {
    /// Pages a buffer of `size` bytes at `offset` needs.
    pub fn pages_needed(size: u64, offset: u64) -> u64 {
        page_list::num_pages(offset, size).expect("a buffer that fits the address space")
    }

    /// The address of byte `at` of the buffer.
    pub fn addr(&self, at: u64) -> u64 {
        let x = self.offset + at;
        self.pages[(x / PAGE_SIZE) as usize] + x % PAGE_SIZE
    }

    /// The pieces of bytes `at..at + len`, each inside one page: `(address, range of the
    /// caller's buffer)`.
    pub fn pieces(&self, at: u64, len: u64) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
        let mut done = 0u64;
        std::iter::from_fn(move || {
            (done < len).then(|| {
                let addr = self.addr(at + done);
                let n = (PAGE_SIZE - addr % PAGE_SIZE).min(len - done);
                let piece = (addr, done as usize..(done + n) as usize);
                done += n;
                piece
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teeshm_abi::msg::OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT;

    /// An arg's bytes parse back to what built them, `num_params` included.
    #[test]
    fn arg_bytes_round_trip() {
        let params = [value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 1, 2, 3); 3];
        let bytes = arg_bytes(invoke_header(7, 9), &params);
        let (h, p) = parse_arg(&bytes);
        assert_eq!(
            (h.session.get(), h.func.get(), h.num_params.get()),
            (7, 9, 3)
        );
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].value().c.get(), 3);
    }

    /// A buffer's pieces never cross a page and cover exactly the bytes asked for.
    #[test]
    fn pieces_stay_in_their_pages() {
        let buf = Buf {
            pages: vec![0x9000, 0x3000, 0x7000],
            offset: 0xff0,
            size: 2 * PAGE_SIZE,
        };
        let pieces: Vec<_> = buf.pieces(8, PAGE_SIZE + 16).collect();
        assert_eq!(
            pieces,
            [
                (0x9ff8, 0..8),
                (0x3000, 8..8 + PAGE_SIZE as usize),
                (0x7000, 8 + PAGE_SIZE as usize..PAGE_SIZE as usize + 16)
            ]
        );
    }
}
