//! The early TAs: one ELF file per program of `teeshm_ta::PROGRAMS`, built from `firmware/ta`
//! (package `teeshm-fw-ta`) by xtask before this crate, and linked into the secure image with
//! `include_bytes!` from the directory in `TEESHM_TA_DIR`. At boot each becomes a `TaImage`
//! (`TaImage::from_elf` checks every header and segment) and is registered with the core.

use alloc::vec::Vec;
use teeshm_core::ta::TaImage;
use teeshm_core::ta::elf::ElfError;
use teeshm_ta::{PROGRAMS, Program};

/// The bytes of the TA ELF file `$file` in `TEESHM_TA_DIR`.
macro_rules! ta_elf {
    ($file:literal) => {
        include_bytes!(concat!(
            env!(
                "TEESHM_TA_DIR",
                "TEESHM_TA_DIR (the directory of the TA ELF files) is not set: build the \
                 firmware with `cargo xtask qemu --build-only` (or `cargo xtask qemu`), which \
                 builds firmware/ta first and passes the directory to this build"
            ),
            "/",
            $file
        ))
    };
}

/// An early TA: its program's UUID and name, and its ELF file.
#[derive(Debug, Clone, Copy)]
pub struct EarlyTa {
    /// The UUID (RFC 4122 octets).
    pub uuid: [u8; 16],
    /// The program's name.
    pub name: &'static str,
    /// The ELF file (`firmware/ta`'s binary of the same name, less `teeshm.`).
    pub elf: &'static [u8],
}

const fn early(program: &Program, elf: &'static [u8]) -> EarlyTa {
    EarlyTa {
        uuid: program.uuid,
        name: program.name,
        elf,
    }
}

/// Every early TA (only the UUID and name of each program are taken, at compile time: none of
/// the programs' code is linked into the secure image).
pub const EARLY_TAS: &[EarlyTa] = &[
    early(&teeshm_ta::memtest::PROGRAM, ta_elf!("ta-memtest")),
    early(&teeshm_ta::peer::PROGRAM, ta_elf!("ta-peer")),
];

const fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn listed(uuid: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < EARLY_TAS.len() {
        if same(&EARLY_TAS[i].uuid, uuid) {
            return true;
        }
        i += 1;
    }
    false
}

// Every program has its ELF file here, and nothing else is: a program added to
// `teeshm_ta::PROGRAMS` needs a binary in firmware/ta and a line above.
const _: () = {
    assert!(EARLY_TAS.len() == PROGRAMS.len());
    let mut i = 0;
    while i < PROGRAMS.len() {
        assert!(
            listed(&PROGRAMS[i].uuid),
            "a program of teeshm_ta::PROGRAMS has no ELF file in EARLY_TAS"
        );
        i += 1;
    }
};

/// The images of the early TAs, in [`EARLY_TAS`]'s order.
///
/// # Errors
/// The first TA whose ELF file is not an image the core loads, with why.
pub fn images() -> Result<Vec<TaImage>, (&'static str, ElfError)> {
    EARLY_TAS
        .iter()
        .map(|ta| TaImage::from_elf(ta.uuid, ta.name, ta.elf).map_err(|e| (ta.name, e)))
        .collect()
}
