//! The reader over scripted streams: any segmentation, the bytes after the header handed
//! on through `Rewind` in order, EOF, deadlines on tokio's paused clock, and writes.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::split::vectors;
use super::{tlv, v2};
use crate::proxy_protocol::{Deadlines, Limits, ReadError, parse, read_header};

/// Returns one scripted segment per read (less if the caller's buffer is smaller), then
/// EOF or nothing ever again.
#[derive(Debug)]
struct Script {
    segments: VecDeque<Vec<u8>>,
    at_end: End,
}

#[derive(Clone, Copy, Debug)]
enum End {
    Eof,
    Silence,
}

impl Script {
    fn new(segments: impl IntoIterator<Item = Vec<u8>>, at_end: End) -> Self {
        Self {
            segments: segments.into_iter().filter(|s| !s.is_empty()).collect(),
            at_end,
        }
    }
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(segment) = self.segments.front_mut() else {
            return match self.at_end {
                End::Eof => Poll::Ready(Ok(())),
                // Never woken: only the deadline can end the wait.
                End::Silence => Poll::Pending,
            };
        };
        let n = segment.len().min(out.remaining());
        out.put_slice(&segment[..n]);
        segment.drain(..n);
        if segment.is_empty() {
            self.segments.pop_front();
        }
        Poll::Ready(Ok(()))
    }
}

fn far_deadline() -> Deadlines {
    Deadlines {
        first_byte: Instant::now() + Duration::from_secs(3600),
        header: Duration::from_secs(3600),
    }
}

/// The header may take `header` from its first byte; the first byte may take an hour.
fn header_within(header: Duration) -> Deadlines {
    Deadlines {
        header,
        ..far_deadline()
    }
}

const APP_DATA: &[u8] = b"\x16\x03\x01\x00\x05hello, next layer";

/// The valid vectors, without the application data `vectors()` appends.
fn valid_headers() -> Vec<Vec<u8>> {
    vectors()
        .into_iter()
        .filter_map(|input| match parse(&input, &Limits::default()) {
            Ok(Some((_, used))) => Some(input[..used].to_vec()),
            _ => None,
        })
        .collect()
}

async fn read_all<R: AsyncRead + Unpin>(mut reader: R) -> Vec<u8> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.expect("read the rest");
    out
}

#[tokio::test]
async fn header_split_at_every_byte_is_read_whole_and_app_data_follows_intact() {
    for header in valid_headers() {
        let expected = parse(&header, &Limits::default())
            .expect("valid")
            .expect("complete")
            .0;
        let input = [header.clone(), APP_DATA.to_vec()].concat();
        for cut in 1..input.len() {
            let script = Script::new([input[..cut].to_vec(), input[cut..].to_vec()], End::Eof);
            let (info, rest) = read_header(script, far_deadline(), &Limits::default())
                .await
                .expect("header");
            assert_eq!(info, expected.into(), "cut at {cut}");
            assert_eq!(read_all(rest).await, APP_DATA, "cut at {cut}");
        }
    }
}

#[tokio::test]
async fn header_arriving_one_byte_per_segment_is_read() {
    let header = v2(
        0x21,
        0x11,
        &[vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], tlv(0x05, b"uid")].concat(),
    );
    let segments = [header, APP_DATA.to_vec()]
        .concat()
        .into_iter()
        .map(|b| vec![b]);
    let (info, rest) = read_header(
        Script::new(segments, End::Eof),
        far_deadline(),
        &Limits::default(),
    )
    .await
    .expect("header");
    assert_eq!(info.tlvs().unique_id(), Some(&b"uid"[..]));
    assert_eq!(read_all(rest).await, APP_DATA);
}

#[tokio::test]
async fn bytes_after_the_header_come_before_later_segments_and_tiny_reads_keep_order() {
    let first = [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        b"abc".to_vec(),
    ]
    .concat();
    let script = Script::new([first, b"def".to_vec(), b"ghi".to_vec()], End::Eof);
    let (_, mut rest) = read_header(script, far_deadline(), &Limits::default())
        .await
        .expect("header");
    assert_eq!(rest.buffered(), b"abc");
    let mut byte = [0u8; 1];
    let mut seen = Vec::new();
    while rest.read(&mut byte).await.expect("read") == 1 {
        seen.push(byte[0]);
    }
    assert_eq!(seen, b"abcdefghi");
    assert!(rest.buffered().is_empty());
}

#[tokio::test]
async fn into_parts_returns_the_bytes_not_yet_replayed() {
    let input = [b"PROXY UNKNOWN\r\n".to_vec(), b"0123456789".to_vec()].concat();
    let (_, mut rest) = read_header(
        Script::new([input], End::Eof),
        far_deadline(),
        &Limits::default(),
    )
    .await
    .expect("header");
    let mut four = [0u8; 4];
    rest.read_exact(&mut four).await.expect("read");
    let (_, left) = rest.into_parts();
    assert_eq!(left, b"456789");
}

#[tokio::test]
async fn header_at_the_length_ceiling_is_read_across_many_segments() {
    let header = v2(0x21, 0x00, &tlv(0x04, &[0; 4093]));
    let input = [header, APP_DATA.to_vec()].concat();
    let segments: Vec<Vec<u8>> = input.chunks(1000).map(<[u8]>::to_vec).collect();
    let (info, rest) = read_header(
        Script::new(segments, End::Eof),
        far_deadline(),
        &Limits::default(),
    )
    .await
    .expect("header");
    assert_eq!(info.tlvs().find(0x04).map(<[u8]>::len), Some(4093));
    assert_eq!(read_all(rest).await, APP_DATA);
}

#[tokio::test]
async fn eof_before_the_header_completes_is_its_own_error() {
    let script = Script::new([b"PROXY TCP4 1.2.3.4".to_vec()], End::Eof);
    let err = read_header(script, far_deadline(), &Limits::default())
        .await
        .expect_err("EOF");
    assert!(matches!(err, ReadError::Eof { received: 18 }), "{err:?}");
    assert_eq!(err.kind(), "eof");

    let err = read_header(
        Script::new([], End::Eof),
        far_deadline(),
        &Limits::default(),
    )
    .await
    .expect_err("EOF");
    assert!(matches!(err, ReadError::NoData), "{err:?}");
    assert_eq!(err.kind(), "no_data");
}

#[tokio::test(start_paused = true)]
async fn silence_before_the_header_completes_times_out_at_the_deadline() {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(50);
    let script = Script::new([b"\r\n\r\n\0\r\nQ".to_vec()], End::Silence);
    let err = read_header(
        script,
        header_within(Duration::from_millis(50)),
        &Limits::default(),
    )
    .await
    .expect_err("timeout");
    assert!(matches!(err, ReadError::Timeout { received: 8 }), "{err:?}");
    assert_eq!(err.kind(), "timeout");
    assert_eq!(Instant::now(), deadline);
}

#[tokio::test(start_paused = true)]
async fn no_first_byte_times_out_at_its_own_deadline() {
    let start = Instant::now();
    let deadlines = Deadlines {
        first_byte: start + Duration::from_secs(5),
        header: Duration::from_millis(50),
    };
    let err = read_header(Script::new([], End::Silence), deadlines, &Limits::default())
        .await
        .expect_err("timeout");
    assert!(matches!(err, ReadError::NoFirstByte), "{err:?}");
    assert_eq!(err.kind(), "first_byte_timeout");
    assert_eq!(Instant::now(), start + Duration::from_secs(5));
}

/// NLB sends the header with the client's first data, however late: the header's own
/// timeout counts from that first byte, not from accept.
#[tokio::test(start_paused = true)]
async fn a_header_that_comes_late_with_the_first_data_is_read() {
    let (mut client, server) = tokio::io::duplex(1024);
    let deadlines = Deadlines {
        first_byte: Instant::now() + Duration::from_secs(5),
        header: Duration::from_millis(50),
    };
    let reader = tokio::spawn(async move {
        read_header(server, deadlines, &Limits::default())
            .await
            .map(|(info, _)| info)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    client
        .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n")
        .await
        .expect("write");
    let info = reader
        .await
        .expect("task")
        .expect("header 3 s after accept");
    assert_eq!(info.client(), Some("1.2.3.4:1".parse().expect("literal")));
}

#[tokio::test]
async fn a_second_header_right_behind_the_first_is_refused() {
    let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
    let v2_header = v2(
        0x21,
        0x11,
        &[[1u8, 2, 3, 4, 5, 6, 7, 8].as_slice(), &[0, 1, 0, 2]].concat(),
    );
    for (outer, inner, expected) in [
        (&v1, &v1, crate::proxy_protocol::Version::V1),
        (&v2_header, &v1, crate::proxy_protocol::Version::V1),
        (&v1, &v2_header, crate::proxy_protocol::Version::V2),
        (&v2_header, &v2_header, crate::proxy_protocol::Version::V2),
    ] {
        // Whole, and with the inner signature split after its first byte.
        for segments in [
            vec![[outer.as_slice(), inner].concat()],
            vec![
                [outer.as_slice(), &inner[..1]].concat(),
                inner[1..].to_vec(),
            ],
        ] {
            let err = read_header(
                Script::new(segments, End::Eof),
                far_deadline(),
                &Limits::default(),
            )
            .await
            .expect_err("nested");
            assert!(
                matches!(err, ReadError::Nested { version } if version == expected),
                "{err:?}"
            );
            assert_eq!(err.kind(), "nested_header");
        }
    }
}

/// Bytes that only begin like a signature are passed on: after the header's deadline
/// when nothing more comes, and as soon as a byte tells them apart.
#[tokio::test(start_paused = true)]
async fn what_only_begins_like_a_second_signature_is_passed_on() {
    let header = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
    let start = Instant::now();
    let script = Script::new([[header.as_slice(), b"PR"].concat()], End::Silence);
    let (_, rest) = read_header(
        script,
        header_within(Duration::from_millis(50)),
        &Limits::default(),
    )
    .await
    .expect("a prefix then silence is not a header");
    assert_eq!(rest.buffered(), b"PR");
    assert_eq!(Instant::now(), start + Duration::from_millis(50));
    let script = Script::new(
        [[header.as_slice(), b"PRI * HTTP/2.0"].concat()],
        End::Silence,
    );
    let (_, rest) = read_header(script, far_deadline(), &Limits::default())
        .await
        .expect("the h2 preface is not a header");
    assert_eq!(rest.buffered(), b"PRI * HTTP/2.0");
}

#[tokio::test(start_paused = true)]
async fn invalid_bytes_fail_at_once_without_waiting_for_the_deadline() {
    let start = Instant::now();
    let script = Script::new([b"GET / HTTP/1.1\r\n".to_vec()], End::Silence);
    let err = read_header(
        script,
        header_within(Duration::from_secs(5)),
        &Limits::default(),
    )
    .await
    .expect_err("invalid");
    assert_eq!(err.kind(), "bad_signature");
    assert_eq!(Instant::now(), start);

    let script = Script::new([b"PROXY TCP4 1.2.3.4 5.6.7.8 080".to_vec()], End::Silence);
    let err = read_header(
        script,
        header_within(Duration::from_secs(5)),
        &Limits::default(),
    )
    .await
    .expect_err("invalid");
    assert_eq!(err.kind(), "v1_bad_port");
}

#[tokio::test]
async fn announced_length_over_the_ceiling_fails_before_reading_it() {
    let mut fixed = v2(0x21, 0x00, &[]);
    fixed[14..16].copy_from_slice(&5000u16.to_be_bytes());
    let err = read_header(
        Script::new([fixed], End::Silence),
        far_deadline(),
        &Limits::default(),
    )
    .await
    .expect_err("too long");
    assert_eq!(err.kind(), "v2_too_long");
}

#[tokio::test]
async fn writes_flushes_and_shutdown_reach_the_inner_stream() {
    let (client, server) = tokio::io::duplex(1024);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    client_write
        .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nping")
        .await
        .expect("write");
    let (info, mut rest) = read_header(server, far_deadline(), &Limits::default())
        .await
        .expect("header");
    assert_eq!(info.client(), Some("1.2.3.4:1".parse().expect("literal")));
    let mut ping = [0u8; 4];
    rest.read_exact(&mut ping).await.expect("read");
    assert_eq!(&ping, b"ping");

    rest.write_all(b"pong").await.expect("write");
    rest.flush().await.expect("flush");
    rest.shutdown().await.expect("shutdown");
    assert_eq!(read_all(&mut client_read).await, b"pong");
}
