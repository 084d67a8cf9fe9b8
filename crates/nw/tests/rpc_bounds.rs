//! Every size a TEE asks of the driver is bounded before anything is allocated: an
//! `RPC_FUNC_ALLOC` above one page gets "no memory" (address 0), an `SHM_ALLOC` above the
//! driver's limit gets `TEE_ERROR_OUT_OF_MEMORY`, and guest RAM is never asked for more. A
//! scripted TEE makes the requests (teeshm's core never asks for such sizes on its own, but a
//! scenario can make its pseudo-TA ask for any `SHM_ALLOC` size, and a hostile TEE anything).

mod common;

use common::*;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::*;
use teeshm_abi::smc::*;
use teeshm_nw::driver::header;
use teeshm_nw::{
    DEFAULT_MAX_RPC_SHM_BYTES, Driver, GuestRam, MAX_RPC_ARG_BYTES, PAGE_SIZE, RamError,
};

/// Guest RAM that remembers the largest request it got.
struct Watched {
    ram: SimRam,
    largest: u64,
}

impl GuestRam for Watched {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        self.ram.read(ipa, buf)
    }
    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), RamError> {
        self.ram.write(ipa, data)
    }
    fn alloc_pages(&mut self, n: u64) -> Result<Vec<u64>, RamError> {
        self.largest = self.largest.max(n);
        self.ram.alloc_pages(n)
    }
    fn alloc_contiguous(&mut self, n: u64) -> Result<u64, RamError> {
        self.largest = self.largest.max(n);
        self.ram.alloc_contiguous(n)
    }
    fn free_pages(&mut self, pages: &[u64]) {
        self.ram.free_pages(pages);
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    /// `RPC_FUNC_ALLOC` of this many bytes.
    Alloc(u64),
    /// `RPC_FUNC_FREE` of this cookie.
    Free(u64),
    /// `SHM_ALLOC` (kernel type) of this many bytes, in the appended RPC arg.
    ShmAlloc(u64),
}

/// A TEE with `RPC_ARG` that answers the first yielding call with its script, recording each
/// answer: (the step, `ret` of the RPC arg, a1..a5 of the resume).
struct Tee {
    ram: SimRam,
    arg: u64,
    script: Vec<Step>,
    current: Option<Step>,
    answers: Vec<(Step, u32, [u64; 5])>,
}

impl Tee {
    fn rpc_arg_at(&self) -> u64 {
        let mut head = [0u8; 32];
        self.ram.read(self.arg, &mut head).unwrap();
        let n = u32::from_le_bytes(head[28..32].try_into().unwrap());
        self.arg + get_arg_size(n).unwrap() as u64
    }

    fn next(&mut self) -> SmcRegs {
        if self.script.is_empty() {
            self.current = None;
            return SmcRegs::ret(OPTEE_SMC_RETURN_OK);
        }
        let step = self.script.remove(0);
        self.current = Some(step);
        match step {
            Step::Alloc(size) => SmcRegs::call(OPTEE_SMC_RETURN_RPC_ALLOC, &[size, 0, 3]),
            Step::Free(cookie) => {
                SmcRegs::call(OPTEE_SMC_RETURN_RPC_FREE, &[cookie >> 32, cookie, 3])
            }
            Step::ShmAlloc(size) => {
                let at = self.rpc_arg_at();
                let mut h = header(OPTEE_RPC_CMD_SHM_ALLOC);
                h.num_params.set(1);
                let p = MsgParam::from_value(
                    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
                    Value::new(OPTEE_RPC_SHM_TYPE_KERNEL, size, 0),
                );
                self.ram
                    .write(at, zerocopy::IntoBytes::as_bytes(&h))
                    .unwrap();
                self.ram
                    .write(at + 32, zerocopy::IntoBytes::as_bytes(&p))
                    .unwrap();
                SmcRegs::call(OPTEE_SMC_RETURN_RPC_CMD, &[0, 0, 3])
            }
        }
    }
}

impl SmcConduit for Tee {
    fn smc(&mut self, regs: SmcRegs) -> SmcRegs {
        match regs.a0() {
            OPTEE_SMC_CALLS_UID => {
                let w = teeshm_abi::uid::OPTEE_MSG_UID.map(u64::from);
                SmcRegs::call(w[0] as u32, &w[1..])
            }
            OPTEE_SMC_CALLS_REVISION => SmcRegs::call(2, &[0]),
            OPTEE_SMC_EXCHANGE_CAPABILITIES => SmcRegs::call(
                0,
                &[
                    u64::from((SecureCaps::DYNAMIC_SHM | SecureCaps::RPC_ARG).bits()),
                    0,
                    4,
                ],
            ),
            OPTEE_SMC_CALL_WITH_RPC_ARG => {
                self.arg = (regs.a[1] << 32) | regs.a[2];
                self.next()
            }
            OPTEE_SMC_CALL_RETURN_FROM_RPC => {
                let at = self.rpc_arg_at();
                let mut head = [0u8; 32];
                self.ram.read(at, &mut head).unwrap();
                let ret = u32::from_le_bytes(head[20..24].try_into().unwrap());
                let a = [regs.a[1], regs.a[2], regs.a[3], regs.a[4], regs.a[5]];
                let step = self.current.expect("a resume answers a step");
                self.answers.push((step, ret, a));
                // A buffer given for an RPC arg goes back at once.
                if let Step::Alloc(_) = step {
                    if a[0] | a[1] != 0 {
                        self.script.insert(0, Step::Free((a[3] << 32) | a[4]));
                    }
                }
                self.next()
            }
            _ => SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION),
        }
    }
}

#[test]
fn sizes_a_tee_asks_for_are_bounded_before_any_allocation() {
    let (_core, mem) = tee(false);
    let script = vec![
        Step::Alloc(u64::MAX),
        Step::Alloc(1 << 40),
        Step::Alloc(MAX_RPC_ARG_BYTES + 1),
        Step::Alloc(160),
        Step::Alloc(MAX_RPC_ARG_BYTES),
        Step::ShmAlloc(u64::MAX),
        Step::ShmAlloc(1 << 52),
        Step::ShmAlloc(DEFAULT_MAX_RPC_SHM_BYTES + 1),
        Step::ShmAlloc(3 * PAGE_SIZE),
    ];
    let conduit = Tee {
        ram: SimRam::new(mem.clone()),
        arg: 0,
        script,
        current: None,
        answers: Vec::new(),
    };
    let ram = Watched {
        ram: SimRam::new(mem),
        largest: 0,
    };
    let mut d = Driver::probe(conduit, ram).unwrap();
    assert_eq!(d.max_rpc_shm_bytes(), DEFAULT_MAX_RPC_SHM_BYTES);
    let r = d.call(header(OPTEE_MSG_CMD_CANCEL), &[]).unwrap();
    assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
    let answers = d.conduit_mut().answers.clone();
    let allocs: Vec<bool> = answers
        .iter()
        .filter(|(s, ..)| matches!(s, Step::Alloc(_)))
        .map(|(_, _, a)| a[0] | a[1] != 0)
        .collect();
    assert_eq!(
        allocs,
        [false, false, false, true, true],
        "only RPC args of up to a page"
    );
    let shm: Vec<u32> = answers
        .iter()
        .filter(|(s, ..)| matches!(s, Step::ShmAlloc(_)))
        .map(|(_, ret, _)| *ret)
        .collect();
    assert_eq!(
        shm,
        [
            TEE_ERROR_OUT_OF_MEMORY,
            TEE_ERROR_OUT_OF_MEMORY,
            TEE_ERROR_OUT_OF_MEMORY,
            TEE_SUCCESS
        ]
    );
    assert_eq!(
        d.ram().largest,
        3,
        "guest RAM was never asked for more than the one buffer served"
    );
    // A lower limit binds too.
    d.set_max_rpc_shm_bytes(2 * PAGE_SIZE);
    d.conduit_mut().script = vec![Step::ShmAlloc(2 * PAGE_SIZE + 1), Step::ShmAlloc(PAGE_SIZE)];
    d.conduit_mut().answers.clear();
    d.call(header(OPTEE_MSG_CMD_CANCEL), &[]).unwrap();
    let rets: Vec<u32> = d.conduit_mut().answers.iter().map(|a| a.1).collect();
    assert_eq!(rets, [TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS]);
    assert_eq!(d.ram().largest, 3);
}
