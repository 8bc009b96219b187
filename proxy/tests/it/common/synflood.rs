//! An outsider's SYN flood from inside a lab namespace, and a count of what came back:
//! one thread sends crafted SYNs from a raw socket at a bounded rate (and for a bounded
//! time), another counts the SYN-ACKs the host sends to the flooding address, per port.
//! For tests asserting that a filter never let an outsider's handshake through, not even
//! for an instant. Both threads run in the namespace; `Drop` stops them.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::netns::Lab;
use super::wire::{syn_ack_port, tcp_syn};

/// The sender's pacing step: `rate / 1000` SYNs per millisecond.
const TICK: Duration = Duration::from_millis(1);
/// How often the counter looks at the stop flag while nothing arrives.
const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// How long the counter keeps reading after the sender stopped: an answer to the last
/// SYN arrives within microseconds over veth.
const LATE_ANSWERS: Duration = Duration::from_millis(200);
/// Room for the host's answers (RSTs from ports nothing listens on) between reads.
const RECV_BUFFER_BYTES: usize = 4 << 20;

/// What to flood.
pub struct Target {
    /// The flooding (untrusted) address, one of the namespace's.
    pub src: Ipv4Addr,
    /// The host end's address.
    pub dst: Ipv4Addr,
    /// The ports SYNs go to, in turn.
    pub ports: Vec<u16>,
    /// SYNs per second, all ports together.
    pub rate: u32,
    /// The sender stops by itself after this long.
    pub limit: Duration,
}

/// What the flood saw once stopped.
#[derive(Debug)]
pub struct Outcome {
    pub sent: u64,
    /// SYN-ACKs from the host to the flooding address, by the host's port.
    pub syn_acks: BTreeMap<u16, u64>,
}

impl Outcome {
    pub fn total_syn_acks(&self) -> u64 {
        self.syn_acks.values().sum()
    }
}

/// A running flood and its counter.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    syn_acks: Arc<Mutex<BTreeMap<u16, u64>>>,
    sender: Option<JoinHandle<io::Result<()>>>,
    counter: Option<JoinHandle<io::Result<()>>>,
}

impl Flood {
    /// Starts counting, then flooding, from inside `lab`'s namespace. Returns once the
    /// counter's socket is open, so no answer to the first SYN can be missed.
    pub fn start(lab: &Lab, target: Target) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let syn_acks = Arc::new(Mutex::new(BTreeMap::new()));
        let (ready_tx, ready) = channel();
        let counter = {
            let ns = lab.ns_path();
            let (stop, syn_acks) = (Arc::clone(&stop), Arc::clone(&syn_acks));
            let (src, dst, ports) = (target.src, target.dst, target.ports.clone());
            std::thread::spawn(move || {
                Lab::enter(&ns)?;
                let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
                socket.set_recv_buffer_size(RECV_BUFFER_BYTES)?;
                socket.set_read_timeout(Some(READ_TIMEOUT))?;
                let _ = ready_tx.send(());
                count(socket, dst, src, &ports, &stop, &syn_acks)
            })
        };
        if ready.recv().is_err() {
            match counter.join() {
                Ok(Err(err)) => panic!("the SYN-ACK counter could not start: {err}"),
                _ => panic!("the SYN-ACK counter thread died"),
            }
        }
        let sender = {
            let ns = lab.ns_path();
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::spawn(move || {
                Lab::enter(&ns)?;
                flood(&target, &stop, &sent)
            })
        };
        Flood {
            stop,
            sent,
            syn_acks,
            sender: Some(sender),
            counter: Some(counter),
        }
    }

    /// SYNs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the sender, lets the counter see the last answers, and reports. Panics when
    /// either thread failed.
    pub fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for (name, thread) in [
            ("sender", self.sender.take()),
            ("counter", self.counter.take()),
        ] {
            if let Some(thread) = thread {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => panic!("the SYN flood's {name} failed: {err}"),
                    Err(_) => panic!("the SYN flood's {name} panicked"),
                }
            }
        }
        let syn_acks = self
            .syn_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Outcome {
            sent: self.sent(),
            syn_acks,
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in [self.sender.take(), self.counter.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

/// Sends SYNs from `target.src`, `rate / 1000` per millisecond, until stopped or
/// `target.limit` has passed. A send the qdisc refuses (ENOBUFS) is not counted.
fn flood(target: &Target, stop: &AtomicBool, sent: &AtomicU64) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    // The kernel writes the IPv4 header, with this source address.
    socket.bind(&SocketAddr::new(target.src.into(), 0).into())?;
    let to = SocketAddr::new(target.dst.into(), 0).into();
    let per_tick = (target.rate / 1000).max(1);
    let started = Instant::now();
    let mut next = started;
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < target.limit {
        for _ in 0..per_tick {
            let dport = target.ports[n as usize % target.ports.len()];
            // A new source port each time round the ports: every SYN opens a new
            // handshake.
            let sport = 1024 + (n / target.ports.len() as u32 % 64000) as u16;
            let segment = tcp_syn(target.src, target.dst, sport, dport, n);
            match socket.send_to(&segment, &to) {
                Ok(_) => {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(err) => return Err(err),
            }
            n = n.wrapping_add(1);
        }
        next += TICK;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// Counts the SYN-ACKs from `host` to `outsider` on `ports` until stopped (and
/// [`LATE_ANSWERS`] after).
fn count(
    socket: Socket,
    host: Ipv4Addr,
    outsider: Ipv4Addr,
    ports: &[u16],
    stop: &AtomicBool,
    syn_acks: &Mutex<BTreeMap<u16, u64>>,
) -> io::Result<()> {
    let mut socket = socket;
    let mut buf = [0u8; 2048];
    let mut stopped: Option<Instant> = None;
    loop {
        if stopped.is_none() && stop.load(Ordering::Relaxed) {
            stopped = Some(Instant::now());
        }
        if stopped.is_some_and(|at| at.elapsed() >= LATE_ANSWERS) {
            return Ok(());
        }
        let n = match socket.read(&mut buf) {
            Ok(n) => n,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(err) => return Err(err),
        };
        if let Some(port) = syn_ack_port(&buf[..n], host, outsider)
            && ports.contains(&port)
        {
            *syn_acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(port)
                .or_default() += 1;
        }
    }
}
