//! The NONCONTIG page-list codec (`OPTEE_MSG_ATTR_NONCONTIG`).
//!
//! A buffer scattered over normal-world RAM is described by a chain of 4 KiB *list pages*. Each
//! holds [`ENTRIES_PER_LIST_PAGE`] (511) little-endian `u64` physical addresses of 4 KiB data
//! pages, followed at byte [`NEXT_POINTER_OFFSET`] (4088) by the physical address of the next list
//! page. In the message, the tmem `buf_ptr` is the PA of the first list page with the offset of
//! the buffer inside its first data page in the low 12 bits, and `size` is the buffer size.
//!
//! * [`encode`] / [`encode_with`] build list pages (normal-world side).
//! * [`decode`] / [`decode_parts`] read them (secure side) through [`NsMemory`], with every
//!   check done either before reading anything (size, offset, page count, allocation) or on the
//!   secure copy of each list page. Each normal-world byte is read once, with one read per list
//!   page, and the walk stops after exactly the number of pages the size implies, whatever the
//!   `next` links say (cycles and garbage after the end are harmless).

use alloc::vec::Vec;
use core::convert::Infallible;

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::msg::{OPTEE_MSG_NONCONTIG_PAGE_SIZE, Tmem};

/// Size of one list page.
pub const LIST_PAGE_SIZE: usize = 4096;
/// Data-page addresses per list page: 4096 / 8 - 1.
pub const ENTRIES_PER_LIST_PAGE: usize = LIST_PAGE_SIZE / 8 - 1;
/// Byte offset of the next-list-page pointer inside a list page.
pub const NEXT_POINTER_OFFSET: usize = ENTRIES_PER_LIST_PAGE * 8;
/// Size of a data page named by a list entry (always 4 KiB, whatever the OS page size).
pub const DATA_PAGE_SIZE: u64 = OPTEE_MSG_NONCONTIG_PAGE_SIZE;

const PAGE_MASK: u64 = DATA_PAGE_SIZE - 1;
const ENTRIES_U64: u64 = ENTRIES_PER_LIST_PAGE as u64;

/// One list page as it lies in memory; as a value, the secure copy a decode reads a list page
/// into ([`decode_chunks_in`]). Only the bytes read for the page at hand are ever used, so a
/// buffer may be reused from one decode to the next without being cleared.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ListPage {
    entries: [U64; ENTRIES_PER_LIST_PAGE],
    next: U64,
}

impl ListPage {
    /// A zeroed buffer.
    pub fn new() -> Self {
        Self::new_zeroed()
    }
}

impl Default for ListPage {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ListPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ListPage { .. }")
    }
}

const _: () = assert!(size_of::<ListPage>() == LIST_PAGE_SIZE);
const _: () = assert!(core::mem::offset_of!(ListPage, next) == NEXT_POINTER_OFFSET);
const _: () = assert!(NEXT_POINTER_OFFSET == 4088 && ENTRIES_PER_LIST_PAGE == 511);

/// Why a page list (or the size and offset describing it) was refused.
///
/// `E` is the error of the [`NsMemory`] used to read it; plain layout checks ([`num_pages`]) use
/// the default, [`Infallible`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageListError<E = Infallible> {
    /// A zero-sized buffer. OP-TEE lets size 0 wrap into a huge page count and fail only when the
    /// allocation does; teeshm refuses it outright.
    #[error("buffer size is 0")]
    ZeroSize,
    /// The offset in the first data page is 4096 or more.
    #[error("offset {offset:#x} in the first data page is not below 4096")]
    OffsetTooLarge {
        /// The offending offset.
        offset: u64,
    },
    /// `size + offset` does not fit in 64 bits.
    #[error("size {size:#x} plus offset {offset:#x} overflows")]
    SizeOverflow {
        /// The buffer size.
        size: u64,
        /// The offset in the first page.
        offset: u64,
    },
    /// The buffer spans more data pages than the caller allows.
    #[error("{count} data pages exceed the limit of {max}")]
    TooManyPages {
        /// Pages the size and offset imply.
        count: u64,
        /// The caller's limit.
        max: u64,
    },
    /// The first list page address is not 4 KiB aligned.
    #[error("first list page address {pa:#x} is not 4 KiB aligned")]
    ListPageUnaligned {
        /// The offending address.
        pa: u64,
    },
    /// A next-list-page pointer is not 4 KiB aligned.
    #[error("next pointer {next:#x} in list page {list_page} is not 4 KiB aligned")]
    NextPointerUnaligned {
        /// Index (0-based) of the list page holding the pointer.
        list_page: u64,
        /// The offending pointer.
        next: u64,
    },
    /// A data-page entry is not 4 KiB aligned.
    #[error("data page entry {index} = {value:#x} is not 4 KiB aligned")]
    EntryUnaligned {
        /// Index (0-based) of the entry in the whole list.
        index: u64,
        /// The offending entry.
        value: u64,
    },
    /// The secure copy of the page array could not be allocated.
    #[error("cannot allocate an array of {pages} page addresses")]
    OutOfMemory {
        /// Pages that were to be stored.
        pages: u64,
    },
    /// The caller's visitor refused a data page (see [`decode_each`]).
    #[error("data page entry {index} = {value:#x} refused")]
    Refused {
        /// Index (0-based) of the entry in the whole list.
        index: u64,
        /// The entry.
        value: u64,
    },
    /// Reading a list page from normal-world memory failed (e.g. it is not NS memory).
    #[error("reading {len} bytes at list page {pa:#x} failed")]
    Read {
        /// Address of the list page.
        pa: u64,
        /// Bytes requested.
        len: usize,
        /// What the [`NsMemory`] reported.
        error: E,
    },
}

/// Number of 4 KiB data pages spanned by `size` bytes starting `offset` bytes into the first
/// page: `(size + offset - 1) / 4096 + 1`, with every step checked.
pub fn num_pages(offset: u64, size: u64) -> Result<u64, PageListError> {
    layout(offset, size)
}

fn layout<E>(offset: u64, size: u64) -> Result<u64, PageListError<E>> {
    if size == 0 {
        return Err(PageListError::ZeroSize);
    }
    if offset >= DATA_PAGE_SIZE {
        return Err(PageListError::OffsetTooLarge { offset });
    }
    let overflow = PageListError::SizeOverflow { size, offset };
    let end = size.checked_add(offset).ok_or(overflow)?;
    // end >= 1 because size >= 1, so the subtraction is exact.
    let last_page = end.saturating_sub(1) / DATA_PAGE_SIZE;
    last_page
        .checked_add(1)
        .ok_or(PageListError::SizeOverflow { size, offset })
}

/// Number of list pages needed to name `num_pages` data pages: ceil(n / 511).
pub const fn list_pages_needed(num_pages: u64) -> u64 {
    num_pages.div_ceil(ENTRIES_U64)
}

// ---- Decoder (secure side) -----------------------------------------------------------------

/// How the decoder reaches normal-world memory.
///
/// The implementation decides how NS memory is reached (a temporary mapping, a simulator) and
/// must itself refuse addresses that are not normal-world memory the caller may use: the decoder
/// passes list-page addresses through unchecked apart from alignment.
///
/// The decoder calls `read` once per list page, with `pa` 4 KiB aligned and
/// `buf.len() <= 4096`, so a read never crosses a page boundary.
pub trait NsMemory {
    /// Why a read failed.
    type Error;

    /// Copies `buf.len()` bytes at physical address `pa` into `buf`.
    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
}

impl<M: NsMemory + ?Sized> NsMemory for &mut M {
    type Error = M::Error;

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(pa, buf)
    }
}

/// A decoded page list: the data pages, held in secure memory, and the buffer they carry.
///
/// Invariant: `pages().len() == num_pages(offset, size)`, every page is 4 KiB aligned and the
/// vector's capacity is exactly its length. Pages are *only* checked for alignment: the caller
/// must still check that each lies in normal-world RAM the calling guest owns. Since this is the
/// secure copy, that check and every later use see the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedPageList {
    pages: Vec<u64>,
    offset: u16,
    size: u64,
}

impl DecodedPageList {
    /// The 4 KiB-aligned physical addresses of the data pages, in buffer order.
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }

    /// Offset of the buffer in its first data page (< 4096).
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Size of the buffer in bytes (> 0).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of data pages.
    pub fn num_pages(&self) -> usize {
        self.pages.len()
    }

    /// Takes the page array, e.g. to move it into a memory object without copying.
    pub fn into_pages(self) -> Vec<u64> {
        self.pages
    }
}

/// Decodes the page list of a NONCONTIG tmem parameter: `buf_ptr` = first list page PA |
/// offset in the first data page, `size` = buffer size. Refuses buffers of more than
/// `max_pages` data pages before reading or allocating anything.
pub fn decode<M: NsMemory>(
    mem: &mut M,
    buf_ptr: u64,
    size: u64,
    max_pages: u64,
) -> Result<DecodedPageList, PageListError<M::Error>> {
    decode_parts(
        mem,
        buf_ptr & !PAGE_MASK,
        buf_ptr & PAGE_MASK,
        size,
        max_pages,
    )
}

/// [`decode`] with the first list page address and the offset given separately; refuses an
/// unaligned `first_list_page` and an `offset` of 4096 or more.
pub fn decode_parts<M: NsMemory>(
    mem: &mut M,
    first_list_page: u64,
    offset: u64,
    size: u64,
    max_pages: u64,
) -> Result<DecodedPageList, PageListError<M::Error>> {
    let count = layout(offset, size)?;
    let cap = usize::try_from(count).map_err(|_| PageListError::OutOfMemory { pages: count })?;
    let mut pages: Vec<u64> = Vec::new();
    if count <= max_pages {
        pages
            .try_reserve_exact(cap)
            .map_err(|_| PageListError::OutOfMemory { pages: count })?;
    }
    let shape = decode_each(mem, first_list_page, offset, size, max_pages, |_, pa| {
        // Never reallocates: capacity was reserved for exactly `count` entries.
        pages.push(pa);
        true
    })?;
    Ok(DecodedPageList {
        pages,
        offset: shape.offset,
        size: shape.size,
    })
}

/// The buffer a page list describes, as [`decode_each`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListShape {
    /// Offset of the buffer in its first data page (< 4096).
    pub offset: u16,
    /// Size in bytes (> 0).
    pub size: u64,
    /// Number of data pages.
    pub num_pages: u64,
}

/// The decoder itself, without a page array: hands each data page, in order, to
/// `visit(index, pa)` straight from the secure copy of its list page, so the caller can store
/// pages in its own form (and check them) without a temporary array. `visit` returning false
/// stops the decode with [`PageListError::Refused`]. Everything that can be checked without
/// normal-world memory (size, offset, `max_pages`, alignment) is checked before the first read.
pub fn decode_each<M: NsMemory>(
    mem: &mut M,
    first_list_page: u64,
    offset: u64,
    size: u64,
    max_pages: u64,
    mut visit: impl FnMut(u64, u64) -> bool,
) -> Result<ListShape, PageListError<M::Error>> {
    decode_chunks(
        mem,
        first_list_page,
        offset,
        size,
        max_pages,
        |first, entries| {
            for (i, entry) in entries.iter().enumerate() {
                if !visit(first + i as u64, entry.get()) {
                    return Err(i);
                }
            }
            Ok(())
        },
    )
}

/// [`decode_each`] one list page at a time: `visit(first_index, entries)` gets the data pages
/// of one list page, in order, from the secure copy of that page — every one of them already
/// checked page aligned — so the caller can check and store a page's worth in one pass (a loop
/// the compiler can vectorize). `visit` returning `Err(i)` refuses the `i`-th of `entries` and
/// stops the decode with [`PageListError::Refused`]. The errors, and which comes first, are
/// those of visiting the pages one by one: an unaligned entry is reported after the entries
/// before it were visited.
pub fn decode_chunks<M: NsMemory>(
    mem: &mut M,
    first_list_page: u64,
    offset: u64,
    size: u64,
    max_pages: u64,
    visit: impl FnMut(u64, &[U64]) -> Result<(), usize>,
) -> Result<ListShape, PageListError<M::Error>> {
    decode_chunks_in(
        mem,
        &mut ListPage::new(),
        first_list_page,
        offset,
        size,
        max_pages,
        visit,
    )
}

/// [`decode_chunks`] with `page` as the secure copy of each list page: a buffer the caller
/// keeps, so that a decode does not clear 4 KiB first (whatever `page` held before is never
/// used: each list page's bytes are read into it before any of them is looked at).
pub fn decode_chunks_in<M: NsMemory>(
    mem: &mut M,
    page: &mut ListPage,
    first_list_page: u64,
    offset: u64,
    size: u64,
    max_pages: u64,
    mut visit: impl FnMut(u64, &[U64]) -> Result<(), usize>,
) -> Result<ListShape, PageListError<M::Error>> {
    // Everything that can be checked without touching NS memory comes first.
    let count = layout(offset, size)?;
    if count > max_pages {
        return Err(PageListError::TooManyPages {
            count,
            max: max_pages,
        });
    }
    if first_list_page & PAGE_MASK != 0 {
        return Err(PageListError::ListPageUnaligned {
            pa: first_list_page,
        });
    }
    let offset16 = u16::try_from(offset).map_err(|_| PageListError::OffsetTooLarge { offset })?;

    // `page`: the secure copy of the current list page; each list page is read into it
    // exactly once.
    let mut list_pa = first_list_page;
    let mut list_index: u64 = 0;
    let mut index: u64 = 0;
    let mut remaining = count;
    loop {
        let here = remaining.min(ENTRIES_U64);
        let more = remaining > here;
        // A full page (entries and next pointer) when the list goes on, else just the entries
        // still needed: the next pointer and unused entries of the last page are never read.
        let len = if more {
            LIST_PAGE_SIZE
        } else {
            // here <= 511, so this is at most 4088.
            usize::try_from(here).map_or(NEXT_POINTER_OFFSET, |n| n.saturating_mul(8))
        };
        let (dst, _) = page.as_mut_bytes().split_at_mut(len.min(LIST_PAGE_SIZE));
        mem.read(list_pa, dst)
            .map_err(|error| PageListError::Read {
                pa: list_pa,
                len,
                error,
            })?;

        let take = usize::try_from(here).unwrap_or(ENTRIES_PER_LIST_PAGE);
        let entries = page.entries.get(..take).unwrap_or(&[]);
        // One pass over the whole page (vectorized) for the usual case of all aligned.
        let all_aligned = entries.iter().fold(0, |bits, e| bits | e.get()) & PAGE_MASK == 0;
        let aligned = if all_aligned {
            entries.len()
        } else {
            entries
                .iter()
                .position(|e| e.get() & PAGE_MASK != 0)
                .unwrap_or(entries.len())
        };
        let (good, rest) = entries.split_at(aligned.min(entries.len()));
        if let Err(i) = visit(index, good) {
            let value = good.get(i).map_or(0, |e| e.get());
            return Err(PageListError::Refused {
                index: index + i as u64,
                value,
            });
        }
        if let Some(bad) = rest.first() {
            return Err(PageListError::EntryUnaligned {
                index: index + good.len() as u64,
                value: bad.get(),
            });
        }
        index += good.len() as u64;
        remaining = remaining.saturating_sub(here);
        if !more {
            break;
        }
        let next = page.next.get();
        if next & PAGE_MASK != 0 {
            return Err(PageListError::NextPointerUnaligned {
                list_page: list_index,
                next,
            });
        }
        list_pa = next;
        list_index = list_index.saturating_add(1);
    }

    Ok(ListShape {
        offset: offset16,
        size,
        num_pages: count,
    })
}

// ---- Encoder (normal-world side) -----------------------------------------------------------

/// Why a page list could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError<E = Infallible> {
    /// Size or offset are invalid (zero size, offset >= 4096, overflow).
    #[error(transparent)]
    Layout(#[from] PageListError),
    /// The number of data pages given differs from what size and offset imply.
    #[error("size and offset need {expected} data pages but {got} were given")]
    PageCountMismatch {
        /// Pages implied by size and offset.
        expected: u64,
        /// Pages given.
        got: usize,
    },
    /// A data page address is not 4 KiB aligned.
    #[error("data page {index} at {pa:#x} is not 4 KiB aligned")]
    DataPageUnaligned {
        /// Index of the data page.
        index: usize,
        /// Its address.
        pa: u64,
    },
    /// The number of list-page addresses differs from [`list_pages_needed`].
    #[error("{expected} list pages are needed but {got} addresses were given")]
    ListPageCountMismatch {
        /// List pages needed.
        expected: u64,
        /// Addresses given.
        got: usize,
    },
    /// A list page address is not 4 KiB aligned.
    #[error("list page {index} at {pa:#x} is not 4 KiB aligned")]
    ListPageUnaligned {
        /// Index of the list page.
        index: usize,
        /// Its address.
        pa: u64,
    },
    /// The output pages could not be allocated.
    #[error("cannot allocate {list_pages} list pages")]
    OutOfMemory {
        /// List pages that were to be allocated.
        list_pages: usize,
    },
    /// The caller's writer failed.
    #[error("writing list page {pa:#x} failed")]
    Write {
        /// Address of the list page.
        pa: u64,
        /// What the writer reported.
        error: E,
    },
}

/// A built page list: the list pages' bytes, in the order of the list-page addresses given,
/// and the tmem fields that point at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPageList {
    /// First list page PA | offset in the first data page.
    pub buf_ptr: u64,
    /// Buffer size in bytes.
    pub size: u64,
    /// Contents of each list page; `pages[i]` goes to the i-th list-page address.
    pub pages: Vec<[u8; LIST_PAGE_SIZE]>,
}

impl EncodedPageList {
    /// The tmem payload for a NONCONTIG param (`attr` must add `OPTEE_MSG_ATTR_NONCONTIG`).
    pub fn tmem(&self, shm_ref: u64) -> Tmem {
        Tmem::new(self.buf_ptr, self.size, shm_ref)
    }
}

/// Checks all inputs; returns `buf_ptr`.
fn validate<E>(
    data_pages: &[u64],
    offset: u64,
    size: u64,
    list_page_pas: &[u64],
) -> Result<u64, EncodeError<E>> {
    let expected = layout::<Infallible>(offset, size)?;
    if expected != data_pages.len() as u64 {
        return Err(EncodeError::PageCountMismatch {
            expected,
            got: data_pages.len(),
        });
    }
    if let Some((index, &pa)) = data_pages
        .iter()
        .enumerate()
        .find(|(_, pa)| **pa & PAGE_MASK != 0)
    {
        return Err(EncodeError::DataPageUnaligned { index, pa });
    }
    let needed = list_pages_needed(expected);
    let count_mismatch = EncodeError::ListPageCountMismatch {
        expected: needed,
        got: list_page_pas.len(),
    };
    if needed != list_page_pas.len() as u64 {
        return Err(count_mismatch);
    }
    if let Some((index, &pa)) = list_page_pas
        .iter()
        .enumerate()
        .find(|(_, pa)| **pa & PAGE_MASK != 0)
    {
        return Err(EncodeError::ListPageUnaligned { index, pa });
    }
    let first = list_page_pas.first().ok_or(count_mismatch)?;
    Ok(first | offset)
}

/// Fills each list page in turn and hands it to `write`; inputs must be validated.
fn emit<E>(
    data_pages: &[u64],
    list_page_pas: &[u64],
    mut write: impl FnMut(u64, &[u8; LIST_PAGE_SIZE]) -> Result<(), E>,
) -> Result<(), EncodeError<E>> {
    let mut page = ListPage::new_zeroed();
    let mut nexts = list_page_pas.iter().skip(1);
    for (chunk, &pa) in data_pages.chunks(ENTRIES_PER_LIST_PAGE).zip(list_page_pas) {
        page.entries.fill(U64::ZERO);
        for (slot, &data) in page.entries.iter_mut().zip(chunk) {
            *slot = U64::new(data);
        }
        page.next = U64::new(nexts.next().copied().unwrap_or(0));
        let bytes: &[u8; LIST_PAGE_SIZE] = zerocopy::transmute_ref!(&page);
        write(pa, bytes).map_err(|error| EncodeError::Write { pa, error })?;
    }
    Ok(())
}

/// Builds the list pages for a buffer of `size` bytes starting `offset` bytes into the first of
/// `data_pages`, to be stored at `list_page_pas` (exactly [`list_pages_needed`] 4 KiB-aligned
/// addresses). Unused entries are zero, each next pointer names the following list page and the
/// last one is 0. All inputs are checked before anything is allocated.
pub fn encode(
    data_pages: &[u64],
    offset: u64,
    size: u64,
    list_page_pas: &[u64],
) -> Result<EncodedPageList, EncodeError> {
    let buf_ptr = validate(data_pages, offset, size, list_page_pas)?;
    let mut pages = Vec::new();
    pages
        .try_reserve_exact(list_page_pas.len())
        .map_err(|_| EncodeError::OutOfMemory {
            list_pages: list_page_pas.len(),
        })?;
    emit::<Infallible>(data_pages, list_page_pas, |_, bytes| {
        pages.push(*bytes);
        Ok(())
    })?;
    Ok(EncodedPageList {
        buf_ptr,
        size,
        pages,
    })
}

/// Like [`encode`], but hands each list page to `write(list_page_pa, bytes)` instead of
/// collecting them, so no heap is needed. Returns `buf_ptr`. Nothing is written unless all inputs
/// are valid.
pub fn encode_with<E>(
    data_pages: &[u64],
    offset: u64,
    size: u64,
    list_page_pas: &[u64],
    write: impl FnMut(u64, &[u8; LIST_PAGE_SIZE]) -> Result<(), E>,
) -> Result<u64, EncodeError<E>> {
    let buf_ptr = validate(data_pages, offset, size, list_page_pas)?;
    emit(data_pages, list_page_pas, write)?;
    Ok(buf_ptr)
}

#[cfg(test)]
mod tests;
