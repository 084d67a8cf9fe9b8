//! Copies to and from memory another agent may change during the copy (the normal world's
//! buffers for the core, a TA's parameters for the TA): volatile accesses, 8 bytes at a time
//! where aligned, each byte touched exactly once.

/// Copies `buf.len()` bytes from address `src` into `buf`.
///
/// # Safety
/// Every byte of `[src, src + buf.len())` must be mapped readable for the running exception
/// level, or its load must trap to a handler that either maps it and retries or never returns
/// here (a TA's fault); no Rust object may live there.
pub unsafe fn read_bytes(buf: &mut [u8], src: usize) {
    let mut done = 0usize;
    while done < buf.len() {
        let at = src.wrapping_add(done);
        let left = buf.len() - done;
        if at % 8 == 0 && left >= 8 {
            // SAFETY: by the contract above, an aligned word of readable memory that holds no
            // Rust object (volatile: it may change under us).
            let word = unsafe { (at as *const u64).read_volatile() };
            if let Some(dst) = buf.get_mut(done..done + 8) {
                dst.copy_from_slice(&word.to_ne_bytes());
            }
            done += 8;
        } else {
            // SAFETY: as above, for one byte.
            let byte = unsafe { (at as *const u8).read_volatile() };
            if let Some(dst) = buf.get_mut(done) {
                *dst = byte;
            }
            done += 1;
        }
    }
}

/// Copies `data` to address `dst`.
///
/// # Safety
/// As for [`read_bytes`], with every byte of `[dst, dst + data.len())` writable.
pub unsafe fn write_bytes(dst: usize, data: &[u8]) {
    let mut done = 0usize;
    while done < data.len() {
        let at = dst.wrapping_add(done);
        let word = data
            .get(done..done + 8)
            .filter(|_| at % 8 == 0)
            .and_then(|w| <[u8; 8]>::try_from(w).ok());
        if let Some(word) = word {
            // SAFETY: by the contract above, an aligned word of writable memory that holds no
            // Rust object.
            unsafe { (at as *mut u64).write_volatile(u64::from_ne_bytes(word)) };
            done += 8;
        } else {
            let byte = data.get(done).copied().unwrap_or(0);
            // SAFETY: as above, for one byte.
            unsafe { (at as *mut u8).write_volatile(byte) };
            done += 1;
        }
    }
}
