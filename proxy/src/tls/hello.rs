//! Reading the ClientHello with the transport kept in hand, so that a hello no app serves
//! can be answered with an alert instead of a bare close (tokio-rustls's
//! `LazyConfigAcceptor` keeps the transport once the hello is read). Every byte read is
//! fed to rustls's `Acceptor`, so bytes that came after the ClientHello stay with the
//! connection.

use std::io;

use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What one read takes from the transport.
const READ_BYTES: usize = 4096;

/// A fatal `unrecognized_name` alert (RFC 6066 §3), as a plaintext TLS record: content
/// type alert (21), TLS 1.2 record version (which TLS 1.3 also uses), length 2, level
/// fatal (2), description unrecognized_name (112).
pub(super) const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Reads until rustls has a whole ClientHello. A hello rustls refuses is answered with
/// its alert and fails; EOF before a whole hello fails.
pub(super) async fn read<S>(io: &mut S) -> io::Result<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            // Takes what its buffer has room for (it grows up to the 64 KB rustls allows
            // a handshake message), and fails past that.
            if acceptor.read_tls(&mut rest)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the ClientHello does not fit rustls's buffer",
                ));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(accepted),
            Ok(None) => {}
            Err((err, mut alert)) => {
                let mut record = Vec::new();
                // Writing into a Vec cannot fail.
                let _ = alert.write_all(&mut record);
                send_and_close(io, &record).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, err));
            }
        }
    }
}

/// Refuses the handshake with [`UNRECOGNIZED_NAME_ALERT`] and closes the write side.
/// Best effort: a peer that has gone is not an error of ours.
pub(super) async fn refuse_unrecognized_name<S>(io: &mut S)
where
    S: AsyncWrite + Unpin,
{
    send_and_close(io, &UNRECOGNIZED_NAME_ALERT).await;
}

async fn send_and_close<S>(io: &mut S, bytes: &[u8])
where
    S: AsyncWrite + Unpin,
{
    if io.write_all(bytes).await.is_ok() {
        let _ = io.shutdown().await;
    }
}
