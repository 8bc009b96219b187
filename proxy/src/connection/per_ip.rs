//! Open connections per client address (`max_clients_per_ip`; the client recovered
//! from the PROXY header, IPv4-mapped addresses normalised): a connection counts until
//! its guard is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::trust::normalize;

/// Open connections per client address (the recovered one under the PROXY protocol).
#[derive(Default)]
pub(crate) struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// Counts a connection from `ip`, unless `max` are open already.
    pub(super) fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let ip = normalize(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            table: Arc::clone(self),
            ip,
        })
    }
}

pub(crate) struct PerIpGuard {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_releases() {
        let table = Arc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("literal");
        let a = table.enter(ip, 2).expect("first");
        let _b = table.enter(ip, 2).expect("second");
        assert!(table.enter(ip, 2).is_none(), "third is over the limit");
        // The mapped form is the same client.
        assert!(
            table
                .enter("::ffff:192.0.2.1".parse().expect("literal"), 2)
                .is_none()
        );
        drop(a);
        assert!(table.enter(ip, 2).is_some(), "a slot was released");
    }

    #[test]
    fn per_ip_table_forgets_clients_with_no_connection() {
        let table = Arc::new(PerIp::default());
        let guard = table
            .enter("2001:db8::1".parse().expect("literal"), 1)
            .expect("enter");
        drop(guard);
        assert!(table.open.lock().expect("lock").is_empty());
    }
}
