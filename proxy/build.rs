//! Embeds the eBPF object that `cargo xtask build-ebpf` built, so the binary carries
//! its kernel programs. When the object is missing, an empty one is embedded and the
//! loader fails at run time with "run `cargo xtask build-ebpf`": plain `cargo build` and
//! the host tests keep working without the eBPF toolchain.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let objects = manifest.join("../target/ebpf/bpfel-unknown-none");
    // The object of the same profile first, then the other one.
    let profiles = match std::env::var("PROFILE").as_deref() {
        Ok("release") => ["release", "debug"],
        _ => ["debug", "release"],
    };
    let dest = out.join("trustgate.bpf.o");
    let found = profiles
        .iter()
        .map(|p| objects.join(p).join("proxy-ebpf"))
        .find(|p| p.is_file());
    // Watch what decides the choice: the embedded object, and the preferred profile's
    // object when another one stood in for it. A path that does not exist makes cargo
    // rerun this script on every build, which is right only while nothing is built yet.
    let preferred = objects.join(profiles[0]).join("proxy-ebpf");
    match &found {
        Some(object) if *object == preferred => {
            println!("cargo:rerun-if-changed={}", object.display());
        }
        Some(object) => {
            println!("cargo:rerun-if-changed={}", object.display());
            // The preferred object may appear later: watch its directory if it exists.
            let dir = objects.join(profiles[0]);
            if dir.is_dir() {
                println!("cargo:rerun-if-changed={}", dir.display());
            }
        }
        None => {
            for profile in profiles {
                println!(
                    "cargo:rerun-if-changed={}",
                    objects.join(profile).join("proxy-ebpf").display()
                );
            }
        }
    }
    // An object older than the programs' sources would load the wrong maps: say so.
    let sources = [
        manifest.join("../proxy-ebpf/src"),
        manifest.join("../proxy-common/src"),
    ];
    for dir in &sources {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    match found {
        Some(object) => {
            let built = modified(&object);
            if sources
                .iter()
                .filter_map(|d| newest(d))
                .any(|source| Some(source) > built)
            {
                println!(
                    "cargo:warning=the eBPF object {} is older than its sources: run `cargo xtask build-ebpf`",
                    object.display()
                );
            }
            std::fs::copy(&object, &dest).expect("copying the eBPF object into OUT_DIR");
        }
        None => {
            std::fs::write(&dest, b"").expect("writing an empty eBPF object into OUT_DIR");
            println!(
                "cargo:warning=no eBPF object found: run `cargo xtask build-ebpf`; the kernel filter will not load"
            );
        }
    }
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the files directly in `dir`.
fn newest(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| modified(&e.path()))
        .max()
}
