//! `zingqueue bench chaos --rounds N`: the chaos suite (`tests/chaos`) over N rounds of every
//! fault. The suite starts its servers through testkit, a test-only crate, and drives the
//! components as processes of this binary, so the command runs it where it lives: `cargo test
//! --release --test chaos` in the source tree this binary was built from, with
//! `ZQ_CHAOS_ROUNDS=N`. The suite prints the recovery table (median and worst per fault).

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::cli::ChaosBenchArgs;

/// The source tree this binary was built from.
const SOURCE_TREE: &str = env!("CARGO_MANIFEST_DIR");

pub fn run(args: &ChaosBenchArgs) -> anyhow::Result<()> {
    let tree = Path::new(SOURCE_TREE);
    anyhow::ensure!(
        tree.join("tests/chaos/main.rs").is_file(),
        "bench chaos runs the chaos suite from the source tree this binary was built from \
         ({SOURCE_TREE}), which is not here; run it there with `cargo run --release -- bench \
         chaos`"
    );
    println!(
        "bench chaos: {} rounds of every fault (tests/chaos in {SOURCE_TREE})",
        args.rounds
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "test",
            "--release",
            "--locked",
            "--test",
            "chaos",
            "--",
            "--nocapture",
        ])
        .env("ZQ_CHAOS_ROUNDS", args.rounds.to_string())
        .current_dir(tree)
        .status()
        .context("running cargo (bench chaos needs the Rust toolchain)")?;
    anyhow::ensure!(status.success(), "the chaos suite failed ({status})");
    Ok(())
}
