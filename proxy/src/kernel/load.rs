//! The embedded eBPF object and the translation of aya's load errors into
//! [`KernelError`]s that name the cause: missing capability, verifier rejection (with
//! the verifier's log), a program or map missing from the object.
//!
//! No memlock rlimit is raised: since Linux 5.11 BPF memory is charged to the cgroup,
//! and trustgate targets newer kernels.

use std::io;

use aya::programs::ProgramError;
use aya::{Ebpf, EbpfError, EbpfLoader, VerifierLogLevel};

use super::KernelError;

/// The object built by `cargo xtask build-ebpf`; empty when it was not built first.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trustgate.bpf.o"));

/// Parses the object and creates its maps (programs are loaded one by one later).
pub(super) fn object() -> Result<Ebpf, KernelError> {
    if OBJECT.is_empty() {
        return Err(KernelError::ObjectMissing);
    }
    EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
        .load(OBJECT)
        .map_err(from_ebpf)
}

fn from_ebpf(err: EbpfError) -> KernelError {
    if is_permission(&err) {
        return KernelError::Permission {
            action: "creating the eBPF maps",
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
    }
    KernelError::Object(err)
}

/// Maps a failed `program.load()` to a [`KernelError`].
pub(super) fn from_program_load(program: &'static str, err: ProgramError) -> KernelError {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } if matches!(io_error.raw_os_error(), Some(libc::EPERM)) => {
            let _ = verifier_log;
            KernelError::Permission {
                action: "loading an eBPF program",
                source: io_error,
            }
        }
        ProgramError::LoadError { verifier_log, .. } => KernelError::Verifier {
            program,
            log: verifier_log.to_string(),
        },
        other => KernelError::Program {
            program,
            action: "loading",
            source: other,
        },
    }
}

/// Whether the error chain bottoms out in EPERM or EACCES.
fn is_permission(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        cur = e.source();
    }
    false
}
