//! `cargo xtask loom`: the loom models of the use count, the mapping cache's eviction and the
//! copy gate
//! (crates/core/src/lifecycle.rs, docs/assurance.md), built with `--cfg loom` in a target
//! directory of their own so the host build is untouched:
//! `RUSTFLAGS="--cfg loom" cargo test -p teeshm-core --release --lib loom --target-dir target/loom`.

use crate::{run, workspace_root};
use std::process::Command;

/// Runs the models.
pub fn main() -> Result<(), String> {
    let root = workspace_root();
    run(Command::new(env!("CARGO"))
        .current_dir(&root)
        .env("RUSTFLAGS", "--cfg loom")
        .args([
            "test",
            "-p",
            "teeshm-core",
            "--release",
            "--lib",
            "--target-dir",
        ])
        .arg(root.join("target").join("loom"))
        .arg("loom"))
}
