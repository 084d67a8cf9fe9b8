//! A TA image from an ELF file: the program headers of a static AArch64 executable, checked
//! before any of it is trusted.
//!
//! What is accepted: ELF64, little-endian, version 1, `ET_EXEC` for `EM_AARCH64`, program
//! headers of 56 bytes inside the file. Each non-empty `PT_LOAD` becomes a [`Segment`]: `PF_X`
//! makes it [`SegmentAccess::ReadExecute`], else `PF_W` [`SegmentAccess::ReadWrite`], else
//! [`SegmentAccess::Read`]; writable and executable at once is refused. A segment starts on a
//! page, holds no more file bytes than memory bytes, takes its bytes from inside the file, and
//! lies inside the TA's private region below its heap (`[PRIVATE_BASE, HEAP_BASE)`); no two
//! share a page; their pages add up to at most [`layout::IMAGE_MAX`]; the entry point is an
//! instruction (4-byte aligned) of an executable segment. `PT_INTERP`, `PT_DYNAMIC` and
//! `PT_TLS` are refused (nothing here relocates an image, loads a library or sets up
//! thread-local storage); other program headers (`PT_GNU_STACK`, notes) are ignored, and so
//! are section headers. A `PT_LOAD` of 0 bytes maps nothing and is skipped.
//!
//! Every offset and size is checked arithmetic; the headers are read with zerocopy from a
//! byte slice, never by casting a pointer.

use super::image::{Segment, SegmentAccess, TaImage};
use alloc::vec::Vec;
use teeshm_abi::utee::layout;
use teeshm_mm::PAGE_SIZE;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `e_ident[EI_MAG0..EI_MAG3]`.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// `ELFCLASS64`.
const ELFCLASS64: u8 = 2;
/// `ELFDATA2LSB`.
const ELFDATA2LSB: u8 = 1;
/// `EV_CURRENT`.
const EV_CURRENT: u8 = 1;
/// `ET_EXEC`.
pub const ET_EXEC: u16 = 2;
/// `EM_AARCH64`.
pub const EM_AARCH64: u16 = 183;
/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_DYNAMIC`.
pub const PT_DYNAMIC: u32 = 2;
/// `PT_INTERP`.
pub const PT_INTERP: u32 = 3;
/// `PT_TLS`.
pub const PT_TLS: u32 = 7;
/// `PF_X`.
pub const PF_X: u32 = 1;
/// `PF_W`.
pub const PF_W: u32 = 2;
/// `PF_R`.
pub const PF_R: u32 = 4;
/// Most loadable segments an image may have (a TA has three: code, read-only data, data).
pub const MAX_SEGMENTS: usize = 8;

/// `Elf64_Ehdr`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Elf64Header {
    /// `e_ident`: magic, class, data, version, OS ABI, padding.
    pub ident: [u8; 16],
    /// `e_type`.
    pub e_type: U16,
    /// `e_machine`.
    pub machine: U16,
    /// `e_version`.
    pub version: U32,
    /// `e_entry`.
    pub entry: U64,
    /// `e_phoff`.
    pub phoff: U64,
    /// `e_shoff`.
    pub shoff: U64,
    /// `e_flags`.
    pub flags: U32,
    /// `e_ehsize`.
    pub ehsize: U16,
    /// `e_phentsize`.
    pub phentsize: U16,
    /// `e_phnum`.
    pub phnum: U16,
    /// `e_shentsize`.
    pub shentsize: U16,
    /// `e_shnum`.
    pub shnum: U16,
    /// `e_shstrndx`.
    pub shstrndx: U16,
}

/// Bytes of an [`Elf64Header`].
pub const EHDR_SIZE: usize = 64;
const _: () = assert!(core::mem::size_of::<Elf64Header>() == EHDR_SIZE);

/// `Elf64_Phdr`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Elf64ProgramHeader {
    /// `p_type`.
    pub p_type: U32,
    /// `p_flags`.
    pub flags: U32,
    /// `p_offset`.
    pub offset: U64,
    /// `p_vaddr`.
    pub vaddr: U64,
    /// `p_paddr`.
    pub paddr: U64,
    /// `p_filesz`.
    pub filesz: U64,
    /// `p_memsz`.
    pub memsz: U64,
    /// `p_align`.
    pub align: U64,
}

/// Bytes of an [`Elf64ProgramHeader`].
pub const PHDR_SIZE: usize = 56;
const _: () = assert!(core::mem::size_of::<Elf64ProgramHeader>() == PHDR_SIZE);

/// Why an ELF file is not a TA image teeshm loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Shorter than the ELF header.
    #[error("{0} bytes: shorter than an ELF header")]
    Truncated(usize),
    /// The first four bytes are not `\x7fELF`.
    #[error("not an ELF file (bad magic)")]
    BadMagic,
    /// Not `ELFCLASS64`.
    #[error("ELF class {0}: not ELF64")]
    NotElf64(u8),
    /// Not `ELFDATA2LSB`.
    #[error("ELF data encoding {0}: not little-endian")]
    NotLittleEndian(u8),
    /// `e_ident[EI_VERSION]` or `e_version` is not 1.
    #[error("ELF version {0}: not 1")]
    BadVersion(u32),
    /// `e_type` is not `ET_EXEC` (a relocatable, shared or position-independent file).
    #[error("ELF type {0}: not ET_EXEC (a static executable)")]
    NotExecutable(u16),
    /// `e_machine` is not `EM_AARCH64`.
    #[error("machine {0}: not EM_AARCH64 (183)")]
    WrongMachine(u16),
    /// `e_phentsize` is not 56.
    #[error("program header size {0}: not 56")]
    BadProgramHeaderSize(u16),
    /// The program header table does not lie inside the file.
    #[error("program header table ({count} at {offset:#x}) outside the file")]
    ProgramHeadersOutside {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
    },
    /// A program header of a kind nothing here supports (`PT_INTERP`, `PT_DYNAMIC`, `PT_TLS`).
    #[error("program header {index}: type {p_type} needs a loader teeshm does not have")]
    Unsupported {
        /// Its index in the table.
        index: usize,
        /// `p_type`.
        p_type: u32,
    },
    /// More loadable segments than [`MAX_SEGMENTS`].
    #[error("more than {MAX_SEGMENTS} loadable segments")]
    TooManySegments,
    /// No loadable segment at all.
    #[error("no loadable segment")]
    NoSegment,
    /// A segment both writable and executable.
    #[error("segment at {vaddr:#x} is writable and executable")]
    WriteExecute {
        /// `p_vaddr`.
        vaddr: u64,
    },
    /// A segment that does not start on a page.
    #[error("segment at {vaddr:#x} does not start on a page")]
    Misaligned {
        /// `p_vaddr`.
        vaddr: u64,
    },
    /// A segment with more file bytes than memory bytes.
    #[error("segment at {vaddr:#x}: {filesz} file bytes over {memsz} memory bytes")]
    FileOverMemory {
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment whose bytes do not lie inside the file.
    #[error("segment at {vaddr:#x}: file bytes {offset:#x}+{filesz:#x} outside the file")]
    DataOutsideFile {
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
    },
    /// A segment outside the private region below the heap.
    #[error("segment {vaddr:#x}+{memsz:#x} outside the TA's image region")]
    OutsideImageRegion {
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// Two segments share a page.
    #[error("segments at {first:#x} and {second:#x} overlap")]
    Overlap {
        /// The lower segment's `p_vaddr`.
        first: u64,
        /// The higher one's.
        second: u64,
    },
    /// The segments' pages add up to more than [`layout::IMAGE_MAX`].
    #[error("{bytes} bytes of segments, over the {max} an image may have")]
    TooLarge {
        /// Their pages' bytes.
        bytes: u64,
        /// [`layout::IMAGE_MAX`].
        max: u64,
    },
    /// The entry point is not in an executable segment.
    #[error("entry point {0:#x} is not in an executable segment")]
    EntryNotExecutable(u64),
    /// The entry point is not 4-byte aligned.
    #[error("entry point {0:#x} is not an instruction's address")]
    EntryMisaligned(u64),
    /// The segment list could not be allocated.
    #[error("out of memory for the segment list")]
    OutOfMemory,
}

/// `value` rounded up to a page, if that does not overflow.
fn page_up(value: u64) -> Option<u64> {
    value
        .checked_add(PAGE_SIZE - 1)
        .map(|v| v & !(PAGE_SIZE - 1))
}

/// The header of `elf`, checked.
fn header(elf: &[u8]) -> Result<Elf64Header, ElfError> {
    let (h, _) = Elf64Header::read_from_prefix(elf).map_err(|_| ElfError::Truncated(elf.len()))?;
    let ident = h.ident;
    if ident.get(..4) != Some(&ELF_MAGIC[..]) {
        return Err(ElfError::BadMagic);
    }
    let [_, _, _, _, class, data, version, ..] = ident;
    if class != ELFCLASS64 {
        return Err(ElfError::NotElf64(class));
    }
    if data != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian(data));
    }
    if version != EV_CURRENT {
        return Err(ElfError::BadVersion(u32::from(version)));
    }
    if h.version.get() != u32::from(EV_CURRENT) {
        return Err(ElfError::BadVersion(h.version.get()));
    }
    if h.e_type.get() != ET_EXEC {
        return Err(ElfError::NotExecutable(h.e_type.get()));
    }
    if h.machine.get() != EM_AARCH64 {
        return Err(ElfError::WrongMachine(h.machine.get()));
    }
    if usize::from(h.phentsize.get()) != PHDR_SIZE {
        return Err(ElfError::BadProgramHeaderSize(h.phentsize.get()));
    }
    Ok(h)
}

/// The program header table of `elf` (as `h` places it), inside the file.
fn program_headers<'a>(elf: &'a [u8], h: &Elf64Header) -> Result<&'a [u8], ElfError> {
    let outside = ElfError::ProgramHeadersOutside {
        offset: h.phoff.get(),
        count: h.phnum.get(),
    };
    let start = usize::try_from(h.phoff.get()).map_err(|_| outside)?;
    let len = usize::from(h.phnum.get())
        .checked_mul(PHDR_SIZE)
        .ok_or(outside)?;
    let end = start.checked_add(len).ok_or(outside)?;
    elf.get(start..end).ok_or(outside)
}

/// The segment `p` describes, checked on its own (the checks between segments come after).
fn segment(elf: &'static [u8], p: &Elf64ProgramHeader) -> Result<Segment, ElfError> {
    let vaddr = p.vaddr.get();
    let (filesz, memsz, offset) = (p.filesz.get(), p.memsz.get(), p.offset.get());
    let flags = p.flags.get();
    let access = match (flags & PF_X != 0, flags & PF_W != 0) {
        (true, true) => return Err(ElfError::WriteExecute { vaddr }),
        (true, false) => SegmentAccess::ReadExecute,
        (false, true) => SegmentAccess::ReadWrite,
        (false, false) => SegmentAccess::Read,
    };
    if vaddr % PAGE_SIZE != 0 {
        return Err(ElfError::Misaligned { vaddr });
    }
    if filesz > memsz {
        return Err(ElfError::FileOverMemory {
            vaddr,
            filesz,
            memsz,
        });
    }
    let outside_file = ElfError::DataOutsideFile {
        vaddr,
        offset,
        filesz,
    };
    let start = usize::try_from(offset).map_err(|_| outside_file)?;
    let len = usize::try_from(filesz).map_err(|_| outside_file)?;
    let end = start.checked_add(len).ok_or(outside_file)?;
    let data = elf.get(start..end).ok_or(outside_file)?;
    let outside_region = ElfError::OutsideImageRegion { vaddr, memsz };
    let mem_end = vaddr
        .checked_add(memsz)
        .and_then(page_up)
        .ok_or(outside_region)?;
    if vaddr < layout::PRIVATE_BASE || mem_end > layout::HEAP_BASE {
        return Err(outside_region);
    }
    Ok(Segment {
        vaddr,
        data,
        mem_size: memsz,
        access,
    })
}

/// The end of `s`'s last page (checked when the segment was made).
fn page_end(s: &Segment) -> u64 {
    s.vaddr
        .checked_add(s.mem_size)
        .and_then(page_up)
        .unwrap_or(u64::MAX)
}

impl TaImage {
    /// The image of the TA `uuid` (16 octets in RFC 4122 order), called `name`, from the
    /// static AArch64 executable `elf` (see the module's documentation for what is checked).
    ///
    /// # Errors
    /// An [`ElfError`] naming the first thing found wrong.
    pub fn from_elf(
        uuid: [u8; 16],
        name: &'static str,
        elf: &'static [u8],
    ) -> Result<TaImage, ElfError> {
        let h = header(elf)?;
        let table = program_headers(elf, &h)?;
        let mut segments: Vec<Segment> = Vec::new();
        for (index, raw) in table.chunks_exact(PHDR_SIZE).enumerate() {
            let (p, _) = Elf64ProgramHeader::read_from_prefix(raw).map_err(|_| {
                ElfError::ProgramHeadersOutside {
                    offset: h.phoff.get(),
                    count: h.phnum.get(),
                }
            })?;
            match p.p_type.get() {
                PT_LOAD if p.memsz.get() == 0 => {}
                PT_LOAD => {
                    if segments.len() >= MAX_SEGMENTS {
                        return Err(ElfError::TooManySegments);
                    }
                    let s = segment(elf, &p)?;
                    segments.try_reserve(1).map_err(|_| ElfError::OutOfMemory)?;
                    segments.push(s);
                }
                p_type @ (PT_INTERP | PT_DYNAMIC | PT_TLS) => {
                    return Err(ElfError::Unsupported { index, p_type });
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(ElfError::NoSegment);
        }
        segments.sort_unstable_by_key(|s| s.vaddr);
        let mut bytes = 0u64;
        let mut previous: Option<&Segment> = None;
        for s in &segments {
            if let Some(p) = previous.filter(|p| page_end(p) > s.vaddr) {
                return Err(ElfError::Overlap {
                    first: p.vaddr,
                    second: s.vaddr,
                });
            }
            // Inside [PRIVATE_BASE, HEAP_BASE) each, so neither the difference nor the sum of
            // at most MAX_SEGMENTS of them can overflow; checked all the same.
            bytes = page_end(s)
                .checked_sub(s.vaddr)
                .and_then(|b| bytes.checked_add(b))
                .unwrap_or(u64::MAX);
            previous = Some(s);
        }
        if bytes > layout::IMAGE_MAX {
            return Err(ElfError::TooLarge {
                bytes,
                max: layout::IMAGE_MAX,
            });
        }
        let entry = h.entry.get();
        let executable = segments.iter().any(|s| {
            s.access == SegmentAccess::ReadExecute
                && entry >= s.vaddr
                && entry - s.vaddr < s.mem_size
        });
        if !executable {
            return Err(ElfError::EntryNotExecutable(entry));
        }
        if entry % 4 != 0 {
            return Err(ElfError::EntryMisaligned(entry));
        }
        Ok(TaImage {
            uuid,
            name,
            segments,
            entry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    const UUID: [u8; 16] = [7; 16];
    const BASE: u64 = layout::PRIVATE_BASE;

    /// A program header for the test files.
    #[derive(Clone, Copy)]
    struct Ph {
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn load(flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Ph {
        Ph {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr,
            filesz,
            memsz,
        }
    }

    /// The file a linker makes of `ta.ld`: code (RX), read-only data (R), data and bss (RW),
    /// a `PT_GNU_STACK`; file bytes after the headers.
    fn good_parts() -> (Elf64Header, Vec<Ph>, usize) {
        let phs = vec![
            load(PF_R | PF_X, 0x1000, BASE, 0x1234, 0x1234),
            load(PF_R, 0x3000, BASE + 0x2000, 0x300, 0x300),
            load(PF_R | PF_W, 0x4000, BASE + 0x3000, 0x10, 0x2010),
            Ph {
                p_type: 0x6474_e551, // PT_GNU_STACK
                flags: PF_R | PF_W,
                offset: 0,
                vaddr: 0,
                filesz: 0,
                memsz: 0,
            },
        ];
        let mut h = Elf64Header::new_zeroed();
        h.ident = [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h.e_type.set(ET_EXEC);
        h.machine.set(EM_AARCH64);
        h.version.set(1);
        h.entry.set(BASE + 0x40);
        h.phoff.set(EHDR_SIZE as u64);
        h.ehsize.set(EHDR_SIZE as u16);
        h.phentsize.set(PHDR_SIZE as u16);
        h.phnum.set(phs.len() as u16);
        (h, phs, 0x4010)
    }

    fn bytes(h: &Elf64Header, phs: &[Ph], len: usize) -> Vec<u8> {
        let mut file = vec![0u8; len.max(EHDR_SIZE + phs.len() * PHDR_SIZE)];
        file[..EHDR_SIZE].copy_from_slice(h.as_bytes());
        for (i, ph) in phs.iter().enumerate() {
            let mut p = Elf64ProgramHeader::new_zeroed();
            p.p_type.set(ph.p_type);
            p.flags.set(ph.flags);
            p.offset.set(ph.offset);
            p.vaddr.set(ph.vaddr);
            p.paddr.set(ph.vaddr);
            p.filesz.set(ph.filesz);
            p.memsz.set(ph.memsz);
            p.align.set(PAGE_SIZE);
            let at = (h.phoff.get() as usize).checked_add(i * PHDR_SIZE);
            if let Some(slot) = at.and_then(|at| file.get_mut(at..at.checked_add(PHDR_SIZE)?)) {
                slot.copy_from_slice(p.as_bytes());
            }
        }
        // Recognisable file bytes, to check each segment takes its own.
        for (i, b) in file
            .iter_mut()
            .enumerate()
            .skip(EHDR_SIZE + phs.len() * PHDR_SIZE)
        {
            *b = (i / 0x1000) as u8 + 1;
        }
        file
    }

    fn parse(h: &Elf64Header, phs: &[Ph], len: usize) -> Result<TaImage, ElfError> {
        let file: &'static [u8] = Box::leak(bytes(h, phs, len).into_boxed_slice());
        TaImage::from_elf(UUID, "test", file)
    }

    fn with_header(f: impl FnOnce(&mut Elf64Header)) -> Result<TaImage, ElfError> {
        let (mut h, phs, len) = good_parts();
        f(&mut h);
        parse(&h, &phs, len)
    }

    fn with_segment(i: usize, f: impl FnOnce(&mut Ph)) -> Result<TaImage, ElfError> {
        let (h, mut phs, len) = good_parts();
        f(&mut phs[i]);
        parse(&h, &phs, len)
    }

    #[test]
    fn a_good_image_becomes_its_segments() {
        let (h, phs, len) = good_parts();
        let image = parse(&h, &phs, len).unwrap();
        assert_eq!(image.uuid, UUID);
        assert_eq!(image.name, "test");
        assert_eq!(image.entry, BASE + 0x40);
        let got: Vec<_> = image
            .segments
            .iter()
            .map(|s| (s.vaddr, s.data.len(), s.mem_size, s.access, s.data[0]))
            .collect();
        assert_eq!(
            got,
            vec![
                (BASE, 0x1234, 0x1234, SegmentAccess::ReadExecute, 2),
                (BASE + 0x2000, 0x300, 0x300, SegmentAccess::Read, 4),
                (BASE + 0x3000, 0x10, 0x2010, SegmentAccess::ReadWrite, 5),
            ]
        );
    }

    #[test]
    fn segments_come_out_in_address_order_and_empty_ones_are_skipped() {
        let (mut h, mut phs, len) = good_parts();
        phs.swap(0, 2);
        phs.push(load(PF_R, 0, BASE + 0x10_0000, 0, 0));
        h.phnum.set(phs.len() as u16);
        let image = parse(&h, &phs, len).unwrap();
        let at: Vec<_> = image.segments.iter().map(|s| s.vaddr).collect();
        assert_eq!(at, vec![BASE, BASE + 0x2000, BASE + 0x3000]);
    }

    #[test]
    fn a_short_file_or_a_foreign_header_is_refused() {
        let file: &'static [u8] = Box::leak(vec![0x7f, b'E', b'L', b'F'].into_boxed_slice());
        assert_eq!(
            TaImage::from_elf(UUID, "t", file),
            Err(ElfError::Truncated(4))
        );
        assert_eq!(with_header(|h| h.ident[1] = b'X'), Err(ElfError::BadMagic));
        assert_eq!(with_header(|h| h.ident[4] = 1), Err(ElfError::NotElf64(1)));
        assert_eq!(
            with_header(|h| h.ident[5] = 2),
            Err(ElfError::NotLittleEndian(2))
        );
        assert_eq!(
            with_header(|h| h.ident[6] = 0),
            Err(ElfError::BadVersion(0))
        );
        assert_eq!(
            with_header(|h| h.version.set(2)),
            Err(ElfError::BadVersion(2))
        );
        assert_eq!(
            with_header(|h| h.e_type.set(3)),
            Err(ElfError::NotExecutable(3)),
            "ET_DYN (position-independent) is not loaded"
        );
        assert_eq!(
            with_header(|h| h.machine.set(62)),
            Err(ElfError::WrongMachine(62))
        );
        assert_eq!(
            with_header(|h| h.phentsize.set(32)),
            Err(ElfError::BadProgramHeaderSize(32))
        );
    }

    #[test]
    fn a_program_header_table_outside_the_file_is_refused() {
        for (phoff, phnum) in [(0x4000u64, 4u16), (u64::MAX - 8, 4), (64, u16::MAX)] {
            assert_eq!(
                with_header(|h| {
                    h.phoff.set(phoff);
                    h.phnum.set(phnum);
                }),
                Err(ElfError::ProgramHeadersOutside {
                    offset: phoff,
                    count: phnum
                })
            );
        }
        assert_eq!(with_header(|h| h.phnum.set(0)), Err(ElfError::NoSegment));
    }

    #[test]
    fn each_defect_of_a_segment_is_refused() {
        assert_eq!(
            with_segment(2, |p| p.flags = PF_R | PF_W | PF_X),
            Err(ElfError::WriteExecute {
                vaddr: BASE + 0x3000
            })
        );
        assert_eq!(
            with_segment(1, |p| p.vaddr += 0x10),
            Err(ElfError::Misaligned {
                vaddr: BASE + 0x2010
            })
        );
        assert_eq!(
            with_segment(1, |p| p.filesz = p.memsz + 1),
            Err(ElfError::FileOverMemory {
                vaddr: BASE + 0x2000,
                filesz: 0x301,
                memsz: 0x300
            })
        );
        for (offset, filesz) in [(0x4000u64, 0x11u64), (u64::MAX, 1), (0x10, u64::MAX)] {
            assert_eq!(
                with_segment(2, |p| {
                    p.offset = offset;
                    p.filesz = filesz;
                    p.memsz = p.memsz.max(filesz);
                }),
                Err(ElfError::DataOutsideFile {
                    vaddr: BASE + 0x3000,
                    offset,
                    filesz
                })
            );
        }
        for p_type in [PT_INTERP, PT_DYNAMIC, PT_TLS] {
            assert_eq!(
                with_segment(3, |p| p.p_type = p_type),
                Err(ElfError::Unsupported { index: 3, p_type })
            );
        }
    }

    #[test]
    fn segments_must_lie_below_the_heap_in_the_private_region() {
        // Below the region, and the last page before it.
        assert_eq!(
            with_segment(1, |p| p.vaddr = BASE - 0x1000),
            Err(ElfError::OutsideImageRegion {
                vaddr: BASE - 0x1000,
                memsz: 0x300
            })
        );
        // Into the heap by one byte's page.
        let vaddr = layout::HEAP_BASE - 0x1000;
        assert_eq!(
            with_segment(2, |p| {
                p.vaddr = vaddr;
                p.memsz = 0x1001;
            }),
            Err(ElfError::OutsideImageRegion {
                vaddr,
                memsz: 0x1001
            })
        );
        // Ending exactly at the heap is fine.
        assert!(
            with_segment(2, |p| {
                p.vaddr = vaddr;
                p.memsz = 0x1000;
            })
            .is_ok()
        );
        // A size that wraps.
        assert_eq!(
            with_segment(2, |p| p.memsz = u64::MAX),
            Err(ElfError::OutsideImageRegion {
                vaddr: BASE + 0x3000,
                memsz: u64::MAX
            })
        );
    }

    #[test]
    fn segments_sharing_a_page_overlap() {
        // The code's last page (BASE + 0x1000) is the read-only data's first.
        assert_eq!(
            with_segment(1, |p| p.vaddr = BASE + 0x1000),
            Err(ElfError::Overlap {
                first: BASE,
                second: BASE + 0x1000
            })
        );
        assert_eq!(
            with_segment(2, |p| p.vaddr = BASE),
            Err(ElfError::Overlap {
                first: BASE,
                second: BASE
            })
        );
    }

    #[test]
    fn the_image_is_at_most_image_max() {
        let max = layout::IMAGE_MAX;
        // The data segment grows until the three segments' pages exceed IMAGE_MAX.
        let fits = max - 0x3000;
        assert!(with_segment(2, |p| p.memsz = fits).is_ok());
        assert_eq!(
            with_segment(2, |p| p.memsz = fits + 1),
            Err(ElfError::TooLarge {
                bytes: max + 0x1000,
                max
            })
        );
    }

    #[test]
    fn too_many_segments_are_refused() {
        let (mut h, _, _) = good_parts();
        let phs: Vec<Ph> = (0..=MAX_SEGMENTS as u64)
            .map(|i| load(PF_R, 0x1000, BASE + 0x10000 * (i + 1), 0x10, 0x10))
            .collect();
        h.phnum.set(phs.len() as u16);
        assert_eq!(parse(&h, &phs, 0x2000), Err(ElfError::TooManySegments));
    }

    #[test]
    fn the_entry_must_be_an_instruction_of_the_code() {
        for entry in [BASE + 0x2000, BASE + 0x1234, BASE - 4, 0, u64::MAX] {
            assert_eq!(
                with_header(|h| h.entry.set(entry)),
                Err(ElfError::EntryNotExecutable(entry)),
                "{entry:#x}"
            );
        }
        assert_eq!(
            with_header(|h| h.entry.set(BASE + 0x42)),
            Err(ElfError::EntryMisaligned(BASE + 0x42))
        );
        assert!(with_header(|h| h.entry.set(BASE + 0x1230)).is_ok());
    }

    /// What every accepted image satisfies, whatever the bytes were.
    fn check_invariants(image: &TaImage) {
        let mut end = layout::PRIVATE_BASE;
        let mut bytes = 0;
        for s in &image.segments {
            assert_eq!(s.vaddr % PAGE_SIZE, 0);
            assert!(s.vaddr >= end, "in order, no shared page");
            assert!(s.data.len() as u64 <= s.mem_size && s.mem_size > 0);
            end = page_up(s.vaddr + s.mem_size).unwrap();
            assert!(end <= layout::HEAP_BASE);
            bytes += end - s.vaddr;
        }
        assert!(bytes <= layout::IMAGE_MAX);
        assert!(image.segments.iter().any(|s| {
            s.access == SegmentAccess::ReadExecute
                && (s.vaddr..s.vaddr + s.mem_size).contains(&image.entry)
        }));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(file in proptest::collection::vec(any::<u8>(), 0..512)) {
            let file: &'static [u8] = Box::leak(file.into_boxed_slice());
            if let Ok(image) = TaImage::from_elf(UUID, "fuzz", file) {
                check_invariants(&image);
            }
        }

        #[test]
        fn a_good_image_with_changed_bytes_is_refused_or_still_sound(
            changes in proptest::collection::vec((0usize..0x120, any::<u8>()), 1..6)
        ) {
            let (h, phs, len) = good_parts();
            let mut file = bytes(&h, &phs, len);
            for (at, value) in changes {
                file[at] = value;
            }
            let file: &'static [u8] = Box::leak(file.into_boxed_slice());
            if let Ok(image) = TaImage::from_elf(UUID, "fuzz", file) {
                check_invariants(&image);
            }
        }

        #[test]
        fn random_segments_are_refused_or_sound(
            segs in proptest::collection::vec(
                (0u32..8, 0u64..0x6000, 0u64..0x90_0000, 0u64..0x3000, 0u64..0x50_0000),
                1..5,
            ),
            entry in 0u64..0x10000,
        ) {
            let (mut h, _, _) = good_parts();
            let phs: Vec<Ph> = segs
                .iter()
                .map(|&(flags, offset, vaddr, filesz, memsz)| {
                    load(flags, offset, BASE - 0x10_0000 + (vaddr & !0xfff), filesz, memsz)
                })
                .collect();
            h.phnum.set(phs.len() as u16);
            h.entry.set(BASE + entry);
            if let Ok(image) = parse(&h, &phs, 0x6000) {
                check_invariants(&image);
            }
        }
    }
}
