//! Clients that misbehave, each reporting what it saw: connections that drip a PROXY
//! header a byte at a time, connections sent to be refused, hostile bytes followed by a
//! read to the end, and connections from a namespace address (trusted or not). Plus the
//! median and maximum of what they measured. Every loop is bounded in count and time.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::lb;
use super::netns::Lab;

/// What one dripping connection saw.
#[derive(Debug)]
pub struct Drip {
    /// From just before `connect()` to the proxy's close (the proxy's deadline runs from
    /// its `accept()`, which comes after); `None`: still open when the drips gave up.
    pub lifetime: Option<Duration>,
    /// Header bytes written.
    pub sent: usize,
    /// Bytes the proxy answered with.
    pub received: usize,
}

/// Connections writing one header, one byte per interval, until the proxy closes them.
pub struct Drips {
    tasks: JoinSet<Drip>,
    connected: mpsc::UnboundedReceiver<()>,
    closed: Arc<AtomicUsize>,
    count: usize,
    give_up: Instant,
}

impl Drips {
    /// Starts `count` connections to `addr`, each writing `header` one byte per
    /// `interval` until the proxy closes it or `give_up` passes.
    pub fn start(
        addr: SocketAddr,
        header: &[u8],
        count: usize,
        interval: Duration,
        give_up: Instant,
    ) -> Drips {
        let header: Arc<[u8]> = header.into();
        let (connected_tx, connected) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            tasks.spawn(drip(
                addr,
                Arc::clone(&header),
                interval,
                connected_tx.clone(),
                Arc::clone(&closed),
                give_up,
            ));
        }
        Drips {
            tasks,
            connected,
            closed,
            count,
            give_up,
        }
    }

    /// Waits until every connection is established (accepted by the kernel; the proxy
    /// may not have called accept() yet). Panics at `give_up`.
    pub async fn connected(&mut self) {
        for n in 0..self.count {
            let got = tokio::time::timeout_at(self.give_up, self.connected.recv()).await;
            assert!(
                matches!(got, Ok(Some(()))),
                "only {n} of {} dripping connections connected",
                self.count
            );
        }
    }

    /// How many have been closed so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits for every connection to end (bounded by `give_up`) and returns what each saw.
    pub async fn join(mut self) -> Vec<Drip> {
        let mut drips = Vec::with_capacity(self.count);
        while let Some(drip) = self.tasks.join_next().await {
            drips.push(drip.expect("a drip task panicked"));
        }
        drips
    }
}

async fn drip(
    addr: SocketAddr,
    header: Arc<[u8]>,
    interval: Duration,
    connected: mpsc::UnboundedSender<()>,
    closed: Arc<AtomicUsize>,
    give_up: Instant,
) -> Drip {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("a trusted peer connects");
    let _ = connected.send(());
    let mut tick = tokio::time::interval(interval);
    let (mut sent, mut received) = (0, 0);
    let mut buf = [0u8; 512];
    // Bounded by `give_up`, and by the header's length in writes.
    let lifetime = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break Some(started.elapsed()),
                Ok(n) => received += n,
            },
            _ = tick.tick(), if sent < header.len() => {
                if stream.write_all(&header[sent..=sent]).await.is_err() {
                    break Some(started.elapsed());
                }
                sent += 1;
            }
            () = tokio::time::sleep_until(give_up) => break None,
        }
    };
    closed.fetch_add(1, Ordering::SeqCst);
    Drip {
        lifetime,
        sent,
        received,
    }
}

/// Sends `bytes` to `addr` on a new connection, half-closes when `half_close` (not when
/// a request follows: an HTTP server may take a half-close for the connection's end),
/// and reads to the end. Returns the answer, and how long until the proxy closed
/// (`None`: not within `limit`). A failed write or a reset counts as closed: the proxy
/// may close before it has read everything.
pub async fn send_and_read(
    addr: SocketAddr,
    bytes: &[u8],
    half_close: bool,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut answer = Vec::new();
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(bytes).await;
        if half_close {
            let _ = stream.shutdown().await;
        }
        let _ = stream.read_to_end(&mut answer).await;
    };
    let closed = tokio::time::timeout(limit, exchange)
        .await
        .ok()
        .map(|()| started.elapsed());
    (answer, closed)
}

/// What a source in the namespace saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Outsider {
    /// No SYN-ACK within the connect timeout: the kernel dropped the SYN.
    Dropped,
    /// Connected, then closed with this many bytes answered.
    Closed(usize),
}

/// From `src` in `lab`, connects to `dst` within `connect_timeout`, sends `header` and a
/// GET, and reads to the end (within `read_timeout`).
pub fn from_namespace(
    lab: &Lab,
    src: IpAddr,
    dst: SocketAddr,
    header: &[u8],
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Outsider {
    let mut stream = match lab.connect(src, dst, connect_timeout) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Outsider::Dropped,
        Err(e) => panic!("{src} -> {dst}: neither connected nor timed out: {e}"),
    };
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("read timeout");
    let mut out = header.to_vec();
    out.extend(lb::get("/from-the-namespace"));
    let _ = stream.write_all(&out);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Outsider::Closed(answer.len())
}

/// [`from_namespace`], for a source that must be answered 200.
pub fn request_from_namespace(
    lab: &Lab,
    src: IpAddr,
    dst: SocketAddr,
    header: &[u8],
    timeout: Duration,
) {
    let mut stream = lab
        .connect(src, dst, timeout)
        .unwrap_or_else(|e| panic!("{src} -> {dst}: {e}"));
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    let mut out = header.to_vec();
    out.extend(lb::get("/from-the-namespace"));
    stream.write_all(&out).expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(lb::is_ok(&answer), "{src} -> {dst}: {answer:?}");
}

pub fn max(d: &[Duration]) -> Duration {
    d.iter().copied().max().unwrap_or_default()
}

pub fn median(d: &[Duration]) -> Duration {
    let mut d = d.to_vec();
    d.sort();
    d.get(d.len() / 2).copied().unwrap_or_default()
}
