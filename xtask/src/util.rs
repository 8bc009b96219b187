//! Small helpers for xtask: the workspace root, running a command with context, and the
//! `cargo` command every step runs, with the environment a shell would give it (see
//! [`cargo`]).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of xtask's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Variables that `cargo run` sets for the program it runs (here, xtask itself) and that
/// a `cargo` started from a shell does not have. Every `CARGO_PKG_*` is one too.
const SET_BY_CARGO_RUN: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// A `cargo` command with the environment of a shell, not of `cargo run`: without the
/// variables that `cargo run` set for xtask, and with the library path it extended put
/// back. Build scripts that watch such a variable (ring's `rerun-if-env-changed` on
/// `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR`) would otherwise see it change between
/// `cargo xtask …` and a plain `cargo build`, and rebuild ring, rustls and the fat-LTO
/// release binary every time the two alternate.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    shell_env(&mut cmd);
    cmd
}

/// Removes from `cmd`'s environment what `cargo run` added to this process's (see
/// [`cargo`]).
fn shell_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("CARGO_PKG_") || SET_BY_CARGO_RUN.contains(&n))
        {
            cmd.env_remove(&name);
        }
    }
    // `cargo run` puts the target directory and the toolchain's libraries in front of
    // the dynamic library path.
    const LIBRARY_PATH: &str = "LD_LIBRARY_PATH";
    if let Some(paths) = std::env::var_os(LIBRARY_PATH) {
        let target = workspace_root().join("target");
        let toolchains =
            std::env::var_os("RUSTUP_HOME").map(|h| PathBuf::from(h).join("toolchains"));
        let kept: Vec<PathBuf> = std::env::split_paths(&paths)
            .filter(|p| {
                !p.starts_with(&target) && !toolchains.as_ref().is_some_and(|t| p.starts_with(t))
            })
            .collect();
        match std::env::join_paths(&kept) {
            Ok(joined) if !kept.is_empty() => {
                cmd.env(LIBRARY_PATH, joined);
            }
            _ => {
                cmd.env_remove(LIBRARY_PATH);
            }
        }
    }
}

/// Runs `cmd`, echoing it, and fails with its exit status when it does not succeed.
pub fn exec(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its standard output, or `None` when it cannot be
/// started or does not succeed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test` sets for this test what `cargo run` sets for xtask, so the test sees
    /// the environment `cargo xtask` runs in.
    #[test]
    fn cargo_runs_in_the_environment_of_a_shell() {
        assert!(
            std::env::var_os("CARGO_PKG_NAME").is_some(),
            "this test expects to run under cargo"
        );
        let mut env = Command::new("env");
        shell_env(&mut env);
        let printed = output(&mut env).expect("`env` runs");
        let target = workspace_root().join("target");
        for line in printed.lines() {
            let (name, value) = line.split_once('=').unwrap_or((line, ""));
            assert!(
                !name.starts_with("CARGO_PKG_") && !SET_BY_CARGO_RUN.contains(&name),
                "left for the inner cargo: {line}"
            );
            if name == "LD_LIBRARY_PATH" {
                assert!(
                    std::env::split_paths(value).all(|p| !p.starts_with(&target)),
                    "the target directory is still on the library path: {line}"
                );
            }
        }
    }
}
