//! Every map of the eBPF object. Their names are the statics' names, which must equal
//! the `*_MAP` constants of proxy-common (user space looks them up by those constants,
//! and its kernel tests fail if one is missing).

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, LpmTrie, PerCpuArray};
use proxy_common::{
    COUNTER_SLOTS, FilterConfig, Ipv4Bytes, Ipv6Bytes, MAX_TRUSTED_PREFIXES, PORT_SLOTS,
};

/// Admitted IPv4 prefixes and their class byte ([`proxy_common::TRUSTED_V4_MAP`]).
#[map]
pub static TRUSTED_V4: LpmTrie<Ipv4Bytes, u8> = LpmTrie::with_max_entries(MAX_TRUSTED_PREFIXES, 0);

/// Admitted IPv6 prefixes and their class byte ([`proxy_common::TRUSTED_V6_MAP`]).
#[map]
pub static TRUSTED_V6: LpmTrie<Ipv6Bytes, u8> = LpmTrie::with_max_entries(MAX_TRUSTED_PREFIXES, 0);

/// One flag per TCP port, indexed by the destination port in host byte order: non-zero
/// when protected ([`proxy_common::PROTECTED_PORTS_MAP`]). An array, because the
/// verifier inlines array lookups: cheaper per packet than a hash.
#[map]
pub static PROTECTED_PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

/// The XDP program's counters ([`proxy_common::XDP_COUNTERS_MAP`]).
#[map]
pub static XDP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// The socket filter's counters ([`proxy_common::SOCKET_COUNTERS_MAP`]).
#[map]
pub static SOCKET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Slot 0: the [`FilterConfig`] ([`proxy_common::CONFIG_MAP`]).
#[map]
pub static CONFIG: Array<FilterConfig> = Array::with_max_entries(1, 0);
