//! Typed access to the filter's maps: pushes a [`TrustList`] into the LPM tries, each
//! prefix's value its class byte (new entries and class changes first, written in place,
//! then stale ones removed, so no prefix that stays admitted is ever missing), fills the
//! protected ports and the config record, reads the counters.

use std::collections::BTreeMap;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, MapError, PerCpuArray};
use proxy_common::{
    CONFIG_MAP, CONFIG_OBSERVE_ONLY, COUNTER_SLOTS, Counter, FilterConfig, Ipv4Bytes, Ipv6Bytes,
    MAX_TRUSTED_PREFIXES, PORT_PROTECTED, PROTECTED_PORTS_MAP, TRUSTED_V4_MAP, TRUSTED_V6_MAP,
};

use super::KernelError;
use crate::trust::TrustList;

/// Per-counter totals (summed over CPUs) of one program, indexed by [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramCounters([u64; COUNTER_SLOTS as usize]);

impl ProgramCounters {
    /// The total of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// Makes the tries hold exactly the prefixes of `trust`, each with its class.
pub(super) fn sync_trust(ebpf: &mut Ebpf, trust: &TrustList) -> Result<(), KernelError> {
    for (family, count) in [("IPv4", trust.v4().len()), ("IPv6", trust.v6().len())] {
        if count > MAX_TRUSTED_PREFIXES as usize {
            return Err(KernelError::TooManyPrefixes {
                family,
                count,
                max: MAX_TRUSTED_PREFIXES as usize,
            });
        }
    }
    let v4: BTreeMap<(u32, Ipv4Bytes), u8> = trust
        .v4()
        .iter()
        .map(|(n, c)| ((u32::from(n.prefix_len()), n.network().octets()), c.value()))
        .collect();
    let v6: BTreeMap<(u32, Ipv6Bytes), u8> = trust
        .v6()
        .iter()
        .map(|(n, c)| ((u32::from(n.prefix_len()), n.network().octets()), c.value()))
        .collect();
    sync_trie(ebpf, TRUSTED_V4_MAP, &v4)?;
    sync_trie(ebpf, TRUSTED_V6_MAP, &v6)
}

/// Writes the entries of `want` that are missing or hold another value (an update in
/// place: the kernel swaps one element's value atomically, so a prefix moving between
/// classes is never absent), then removes the entries `want` lacks.
fn sync_trie<K>(
    ebpf: &mut Ebpf,
    name: &'static str,
    want: &BTreeMap<(u32, K), u8>,
) -> Result<(), KernelError>
where
    K: aya::Pod + Ord + Copy,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(KernelError::MissingInObject { name })?;
    let mut trie: LpmTrie<&mut MapData, K, u8> =
        LpmTrie::try_from(map).map_err(|source| map_error(name, source))?;
    let have: BTreeMap<(u32, K), u8> = trie
        .iter()
        .map(|entry| entry.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
        .collect::<Result<_, _>>()
        .map_err(|source| map_error(name, source))?;
    for (&(len, addr), &value) in want {
        if have.get(&(len, addr)) != Some(&value) {
            trie.insert(&Key::new(len, addr), value, 0)
                .map_err(|source| map_error(name, source))?;
        }
    }
    for &(len, addr) in have.keys().filter(|k| !want.contains_key(k)) {
        trie.remove(&Key::new(len, addr))
            .map_err(|source| map_error(name, source))?;
    }
    Ok(())
}

/// Flags `new` as protected and clears the ports of `old` that are not in `new`.
pub(super) fn set_ports(ebpf: &mut Ebpf, old: &[u16], new: &[u16]) -> Result<(), KernelError> {
    let name = PROTECTED_PORTS_MAP;
    let map = ebpf
        .map_mut(name)
        .ok_or(KernelError::MissingInObject { name })?;
    let mut array: Array<&mut MapData, u8> =
        Array::try_from(map).map_err(|source| map_error(name, source))?;
    for port in new {
        array
            .set(u32::from(*port), PORT_PROTECTED, 0)
            .map_err(|source| map_error(name, source))?;
    }
    for port in old.iter().filter(|p| !new.contains(p)) {
        array
            .set(u32::from(*port), 0, 0)
            .map_err(|source| map_error(name, source))?;
    }
    Ok(())
}

/// Writes the config record both programs read.
pub(super) fn set_config(ebpf: &mut Ebpf, observe_only: bool) -> Result<(), KernelError> {
    let name = CONFIG_MAP;
    let map = ebpf
        .map_mut(name)
        .ok_or(KernelError::MissingInObject { name })?;
    let mut array: Array<&mut MapData, FilterConfig> =
        Array::try_from(map).map_err(|source| map_error(name, source))?;
    let flags = if observe_only { CONFIG_OBSERVE_ONLY } else { 0 };
    array
        .set(0, FilterConfig { flags }, 0)
        .map_err(|source| map_error(name, source))
}

/// Sums one program's per-CPU counters.
pub(super) fn counters(ebpf: &Ebpf, name: &'static str) -> Result<ProgramCounters, KernelError> {
    let map = ebpf
        .map(name)
        .ok_or(KernelError::MissingInObject { name })?;
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(|source| map_error(name, source))?;
    let mut totals = ProgramCounters::default();
    for counter in Counter::ALL {
        let values = array
            .get(&(counter as u32), 0)
            .map_err(|source| map_error(name, source))?;
        totals.0[counter as usize] = values.iter().sum();
    }
    Ok(totals)
}

fn map_error(map: &'static str, source: MapError) -> KernelError {
    KernelError::Map { map, source }
}
