//! `cargo xtask build-ebpf`: builds proxy-ebpf for `bpfel-unknown-none` with the nightly
//! toolchain, provisioning what that needs on a fresh machine: the nightly's `rust-src`
//! and a `bpf-linker` built against the nightly's own LLVM (kept in
//! `~/.cache/trustgate`, rebuilt when the nightly changes). Quick when all is there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, exec, output, workspace_root};

/// The toolchain that builds the eBPF crate (proxy-ebpf/rust-toolchain.toml says the same).
const NIGHTLY: &str = "nightly";
pub const TARGET: &str = "bpfel-unknown-none";

#[derive(clap::Args, Default)]
pub struct Options {
    /// Build with the release profile (the dev profile is optimised the same way, with
    /// the same verifier-friendly settings).
    #[arg(long)]
    pub release: bool,
}

/// Builds the object and returns its path.
pub fn build(opts: &Options) -> Result<PathBuf> {
    let linker_dir = provision()?;
    let root = workspace_root();
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = cargo_nightly();
    cmd.current_dir(root.join("proxy-ebpf"))
        .args([
            "build",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir);
    if opts.release {
        cmd.arg("--release");
    }
    cmd.env("PATH", prepend_path(&linker_dir));
    exec(&mut cmd).context("building proxy-ebpf")?;
    let profile = if opts.release { "release" } else { "debug" };
    let object = target_dir.join(TARGET).join(profile).join("proxy-ebpf");
    if !object.is_file() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    eprintln!("eBPF object: {}", object.display());
    Ok(object)
}

/// A `cargo +nightly` command cleared of the settings the outer (stable) `cargo xtask`
/// leaves in the environment.
pub fn cargo_nightly() -> Command {
    let mut cmd = cargo();
    cmd.arg(format!("+{NIGHTLY}"));
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Makes sure the nightly toolchain, its rust-src and a matching bpf-linker are there;
/// returns the directory holding `bpf-linker`.
fn provision() -> Result<PathBuf> {
    let version = output(Command::new("rustc").arg(format!("+{NIGHTLY}")).arg("-vV")).context(
        "the `nightly` Rust toolchain is missing: it builds the eBPF programs. \
         Install it with `rustup toolchain install nightly`",
    )?;
    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
            .context(
                "installing rust-src for the nightly toolchain (needed by -Z build-std=core)",
            )?;
    }
    let cache = cache_dir()?;
    let stamp_path = cache.join("bpf-linker.stamp");
    let linker_root = cache.join("bpf-linker");
    let linker = linker_root.join("bin").join("bpf-linker");
    let stamp = fs::read_to_string(&stamp_path).unwrap_or_default();
    let runs = output(Command::new(&linker).arg("--version")).is_some();
    if runs && stamp == version {
        return Ok(linker_root.join("bin"));
    }
    install_bpf_linker(&version, &cache, &linker_root)?;
    fs::write(&stamp_path, &version)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(linker_root.join("bin"))
}

/// Builds bpf-linker against the nightly's libLLVM: a prefix with `lib/libLLVM.so`
/// pointing at the sysroot's library, and the `llvm-<major>` feature.
fn install_bpf_linker(version: &str, cache: &Path, linker_root: &Path) -> Result<()> {
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc +nightly -vV` printed no LLVM version")?
        .to_string();
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )
    .context("asking the nightly rustc for its sysroot")?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm_so = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: this nightly does not ship LLVM as a shared library, \
                 so bpf-linker cannot be built against it",
                sysroot_lib.display()
            )
        })?;
    let prefix = cache.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(&llvm_so)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&llvm_so), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("building bpf-linker against {llvm_so} (once per nightly; about two minutes)");
    exec(
        cargo()
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .arg("--root")
            .arg(linker_root)
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .context("building bpf-linker (needs crates.io and a C toolchain)")
}

fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?,
        )
        .join(".cache"),
    };
    let dir = base.join("trustgate");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(old) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap_or_default()
}
