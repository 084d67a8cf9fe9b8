//! Cases of one session's invokes: values, temporary memrefs (unaligned, up to 1 MiB), a short
//! output buffer, SHA-256 across a page boundary and of NULL memrefs.

use super::{Ctx, Outcome, buf, bytes, free, marker, op, pattern_mismatch, teec};
use alloc::format;
use sha2::{Digest, Sha256};
use teeshm_abi::gp::*;
use teeshm_core::pta::cmd;
use teeshm_nw::client::{Direction, Param, Session, TeecError};

pub(super) fn values(ctx: &mut Ctx, s: &Session) -> Outcome {
    // FILL takes its seed as VALUE_INOUT: read by the TEE, and back unchanged.
    let out = buf(ctx, 100, 7, |_| 0)?;
    let mut o = op([
        Param::TempOutput(out),
        Param::ValueInout { a: 9, b: 0xdead },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        matches!(o.params[1], Param::ValueInout { a: 9, b: 0xdead }),
        "inout value came back as {:?}",
        o.params[1]
    );
    let [Param::TempOutput(out), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(
        pattern_mismatch(&bytes(ctx, &out)?, 9).is_none(),
        "FILL with an inout seed wrote the wrong bytes"
    );
    // WHERE answers in a VALUE_OUTPUT and a VALUE_INOUT (32-bit in the client API).
    let first = out.pages.first().copied().unwrap_or(0);
    let mut o = op([
        Param::TempInput(out),
        Param::ValueOutput { a: 0, b: 0 },
        Param::ValueInout { a: 7, b: 7 },
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::WHERE, &mut o).map_err(teec)?;
    let (
        Param::ValueOutput { a: va, b: pa },
        Param::ValueInout {
            a: cached,
            b: pages,
        },
    ) = (&o.params[1], &o.params[2])
    else {
        return Err("params changed kind".into());
    };
    ensure!(
        u64::from(*pa) == first + 7,
        "WHERE says PA {pa:#x}, the buffer is at {:#x}",
        first + 7
    );
    ensure!(
        *cached == 0 && *pages == 1,
        "WHERE: cached {cached}, pages {pages}"
    );
    let (va, pa) = (*va, *pa);
    let [Param::TempInput(out), ..] = o.params else {
        return Err("params".into());
    };
    free(ctx, out);
    Ok(format!(
        "inout seed read and returned unchanged; WHERE: first byte at window VA ..{va:08x} -> PA {pa:#x}, a fresh 1-page mapping"
    ))
}

pub(super) fn temporary(ctx: &mut Ctx, s: &Session) -> Outcome {
    let total = temporary_of(
        ctx,
        s,
        &[(0, 1), (0xfff, 2), (0x123, 10_000), (1, (1 << 20) + 3)],
    )?;
    Ok(format!(
        "FILL and COPY of 1 B, 2 B across a page line, 10000 B at 0x123, 1 MiB + 3 at 1: {total} bytes each way, every byte checked"
    ))
}

/// FILL into and COPY through temporary memrefs of each (offset, size); returns the bytes
/// checked each way.
pub(super) fn temporary_of(
    ctx: &mut Ctx,
    s: &Session,
    sizes: &[(u64, u64)],
) -> Result<u64, alloc::string::String> {
    let mut total = 0;
    for &(offset, size) in sizes {
        // FILL: the TEE writes every byte of a temporary output.
        let out = buf(ctx, size, offset, |_| 0x5a)?;
        let mut o = op([
            Param::TempOutput(out),
            Param::ValueInput { a: 77, b: 0 },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(s, cmd::FILL, &mut o)
            .map_err(|e| format!("FILL {size} at {offset:#x}: {}", teec(e)))?;
        ensure!(
            o.returned_sizes[0] == Some(size),
            "FILL returned size {:?}",
            o.returned_sizes[0]
        );
        let [Param::TempOutput(out), ..] = o.params else {
            return Err("params changed kind".into());
        };
        if let Some(i) = pattern_mismatch(&bytes(ctx, &out)?, 77) {
            return Err(format!("FILL {size} at {offset:#x}: byte {i} wrong"));
        }
        // COPY: the TEE reads every byte of a temporary input into a bigger inout.
        let input = buf(ctx, size, 0xfff - offset, marker(size))?;
        let bigger = buf(ctx, size + 100, offset, |_| 0)?;
        let mut o = op([
            Param::TempInput(input),
            Param::TempInout(bigger),
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(s, cmd::COPY, &mut o)
            .map_err(|e| format!("COPY {size}: {}", teec(e)))?;
        let [Param::TempInput(input), Param::TempInout(mut bigger), ..] = o.params else {
            return Err("params changed kind".into());
        };
        ensure!(bigger.size == size, "COPY wrote back size {}", bigger.size);
        ensure!(
            bytes(ctx, &bigger)? == bytes(ctx, &input)?,
            "COPY of {size} bytes: output differs from input"
        );
        bigger.size = size + 100;
        let all = bytes(ctx, &bigger)?;
        ensure!(
            all.iter().skip(size as usize).all(|&b| b == 0),
            "COPY wrote past the size"
        );
        for b in [out, input, bigger] {
            free(ctx, b);
        }
        total += size;
    }
    Ok(total)
}

pub(super) fn short_buffer(ctx: &mut Ctx, s: &Session) -> Outcome {
    let input = buf(ctx, 5000, 3, marker(1))?;
    let small = buf(ctx, 4000, 3, |_| 0)?;
    let mut o = op([
        Param::TempInput(input),
        Param::TempOutput(small),
        Param::None,
        Param::None,
    ]);
    let r = ctx.invoke_command(s, cmd::COPY, &mut o);
    ensure!(
        r == Err(TeecError {
            code: TEE_ERROR_SHORT_BUFFER,
            origin: TEE_ORIGIN_TRUSTED_APP
        }),
        "COPY into a short buffer answered {r:?}"
    );
    ensure!(
        o.returned_sizes[1] == Some(5000),
        "needed size {:?}",
        o.returned_sizes[1]
    );
    let [Param::TempInput(input), Param::TempOutput(mut small), ..] = o.params else {
        return Err("params changed kind".into());
    };
    small.size = 4000;
    ensure!(
        bytes(ctx, &small)?.iter().all(|&b| b == 0),
        "the short buffer was written"
    );
    free(ctx, input);
    free(ctx, small);
    Ok("TEE_ERROR_SHORT_BUFFER with the needed size 5000, the 4000-byte output untouched".into())
}

pub(super) fn sha256(ctx: &mut Ctx, s: &Session) -> Outcome {
    const SHA_ABC: [u8; 32] = [
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22,
        0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00,
        0x15, 0xad,
    ];
    let abc = buf(ctx, 3, 0xffe, |i| b"abc"[i as usize])?;
    let digest = buf(ctx, 32, 0xff0, |_| 0)?;
    let mut o = op([
        Param::TempInput(abc),
        Param::TempOutput(digest),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [Param::TempInput(abc), Param::TempOutput(digest), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(bytes(ctx, &digest)? == SHA_ABC, "SHA-256(\"abc\") wrong");
    let mut o = op([
        Param::Null {
            dir: Direction::Input,
            size: 0,
        },
        Param::TempOutput(digest),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(digest), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let empty: [u8; 32] = Sha256::digest([]).into();
    ensure!(
        bytes(ctx, &digest)? == empty,
        "SHA-256 of a NULL memref wrong"
    );
    // A NULL output asks for the size.
    let mut o = op([
        Param::TempInput(abc),
        Param::Null {
            dir: Direction::Output,
            size: 0,
        },
        Param::None,
        Param::None,
    ]);
    let r = ctx.invoke_command(s, cmd::SHA256, &mut o);
    ensure!(
        r.map_err(|e| e.code) == Err(TEE_ERROR_SHORT_BUFFER),
        "NULL output answered {r:?}"
    );
    ensure!(
        o.returned_sizes[1] == Some(32),
        "NULL output: size {:?}",
        o.returned_sizes[1]
    );
    let [Param::TempInput(abc), ..] = o.params else {
        return Err("params changed kind".into());
    };
    free(ctx, abc);
    free(ctx, digest);
    Ok("\"abc\" split over two pages hashes right; NULL input hashes as empty; NULL output learns 32".into())
}
