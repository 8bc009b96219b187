//! Load balancing among a route's upstreams: always the first (rpxy's `none`), round robin
//! on a per-route atomic counter, or uniformly random. Lock-free; shared by every request
//! of the route.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::LoadBalance;

/// How a route picks among its upstreams.
#[derive(Debug)]
pub(super) enum Balancer {
    First,
    /// The next index to hand out, modulo the number of upstreams.
    RoundRobin(AtomicUsize),
    Random,
}

impl Balancer {
    pub(super) fn new(method: LoadBalance) -> Balancer {
        match method {
            LoadBalance::First => Balancer::First,
            LoadBalance::RoundRobin => Balancer::RoundRobin(AtomicUsize::new(0)),
            LoadBalance::Random => Balancer::Random,
        }
    }

    /// An index below `n`; `n` is at least 1.
    pub(super) fn pick(&self, n: usize) -> usize {
        match self {
            Balancer::First => 0,
            // Wrapping at usize::MAX skews one turn in 2^64; not worth a CAS loop.
            Balancer::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % n,
            Balancer::Random => fastrand::usize(..n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_always_picks_the_first_upstream() {
        let b = Balancer::new(LoadBalance::First);
        assert!((0..100).all(|_| b.pick(3) == 0));
    }

    #[test]
    fn round_robin_cycles_through_every_upstream_in_order() {
        let b = Balancer::new(LoadBalance::RoundRobin);
        let picks: Vec<usize> = (0..7).map(|_| b.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_spreads_over_every_upstream() {
        let b = Balancer::new(LoadBalance::Random);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[b.pick(3)] += 1;
        }
        // Each expects 1000; 700 is more than 10 standard deviations below.
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }
}
