//! The byte pattern the TAs fill and check buffers with, and the loops that do it through a
//! TA's memory.

use crate::env::{Stop, UserEnv};

/// Byte `index` of the pattern of `seed`: the top byte of
/// `(seed ^ index) * 0x9E37_79B9_7F4A_7C15` (wrapping). The same function as the pseudo-TA's
/// (`teeshm_core::pta::pattern_byte`), so a client checks either TA's work the same way.
pub fn pattern_byte(seed: u64, index: u64) -> u8 {
    ((seed ^ index).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Bytes moved per access: a small buffer on the TA's stack (16 KiB in all).
const CHUNK: usize = 256;

/// Writes `len` bytes at `va`: byte `i` is `pattern_byte(seed, i) ^ xor`.
///
/// # Errors
/// [`Stop`] if an access faulted and the core ended the TA.
pub fn fill(env: &mut dyn UserEnv, va: u64, len: u64, seed: u64, xor: u8) -> Result<(), Stop> {
    let mut chunk = [0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let part = chunk.get_mut(..n).ok_or(Stop)?;
        for (i, b) in part.iter_mut().enumerate() {
            *b = pattern_byte(seed, done + i as u64) ^ xor;
        }
        env.write(va.wrapping_add(done), part)?;
        done += n as u64;
    }
    Ok(())
}

/// Reads `len` bytes at `va` and compares byte `i` with `pattern_byte(seed, i) ^ xor`: the
/// index of the first that differs, or `None`. Reads the whole range even after a difference
/// (every byte is touched, as the caller asked).
///
/// # Errors
/// [`Stop`] if an access faulted and the core ended the TA.
pub fn check(
    env: &mut dyn UserEnv,
    va: u64,
    len: u64,
    seed: u64,
    xor: u8,
) -> Result<Option<u64>, Stop> {
    let mut chunk = [0u8; CHUNK];
    let mut done = 0u64;
    let mut wrong = None;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let part = chunk.get_mut(..n).ok_or(Stop)?;
        env.read(va.wrapping_add(done), part)?;
        if wrong.is_none() {
            wrong = part
                .iter()
                .enumerate()
                .position(|(i, &b)| b != pattern_byte(seed, done + i as u64) ^ xor)
                .map(|i| done + i as u64);
        }
        done += n as u64;
    }
    Ok(wrong)
}

/// Copies `len` bytes from `from` to `to` (ranges that do not overlap).
///
/// # Errors
/// [`Stop`] if an access faulted and the core ended the TA.
pub fn copy(env: &mut dyn UserEnv, from: u64, to: u64, len: u64) -> Result<(), Stop> {
    let mut chunk = [0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let part = chunk.get_mut(..n).ok_or(Stop)?;
        env.read(from.wrapping_add(done), part)?;
        env.write(to.wrapping_add(done), part)?;
        done += n as u64;
    }
    Ok(())
}

/// Inverts (XOR 0xff) `len` bytes at `va` in place.
///
/// # Errors
/// [`Stop`] if an access faulted and the core ended the TA.
pub fn invert(env: &mut dyn UserEnv, va: u64, len: u64) -> Result<(), Stop> {
    let mut chunk = [0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let part = chunk.get_mut(..n).ok_or(Stop)?;
        let at = va.wrapping_add(done);
        env.read(at, part)?;
        part.iter_mut().for_each(|b| *b ^= 0xff);
        env.write(at, part)?;
        done += n as u64;
    }
    Ok(())
}

/// "No wrong byte" in a CHECK's answer: the largest 32-bit value (GP values are 32 bits, so
/// the client sees exactly this).
pub const NONE_WRONG: u64 = u32::MAX as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_depends_on_seed_and_index() {
        let a: Vec<u8> = (0..64).map(|i| pattern_byte(1, i)).collect();
        let b: Vec<u8> = (0..64).map(|i| pattern_byte(2, i)).collect();
        assert_ne!(a, b);
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }
}
