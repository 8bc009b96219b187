//! Version 1, the text line: `PROXY TCP4|TCP6|UNKNOWN … \r\n`, at most 107 bytes.
//! One left-to-right pass that stops at the first byte no valid line can have, so a
//! verdict never depends on how the line was split; a line is only accepted once its CRLF
//! is in. Addresses and ports are decoded here from bytes, without `str` or allocation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::endpoints::Endpoints;
use super::{Command, Field, Header, Limits, ParseError, Tlvs, Version};

/// The byte that starts every v1 header.
pub(super) const FIRST_BYTE: u8 = b'P';
/// The longest line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses).
pub(super) const MAX_LEN: usize = 107;

const SIGNATURE: &[u8] = b"PROXY";
/// The signature and the space that must follow it: what tells a v1 header apart.
pub(super) const SIGNATURE_WITH_SPACE: &[u8] = b"PROXY ";
/// The largest octet of a dotted quad.
const OCTET_MAX: u32 = 255;
const PORT_MAX: u32 = 65_535;

/// Parses a v1 line at the start of `buf` (whose first byte is `P`).
pub(super) fn parse<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Header<'a>, usize)>, ParseError> {
    let window = buf.get(..MAX_LEN).unwrap_or(buf);
    let mut line = Line {
        buf: window,
        pos: 0,
        mixed_allowed: limits.accept_v1_mixed_families,
        mixed: false,
    };
    match line.header() {
        Ok(endpoints) => {
            let header = Header {
                version: Version::V1,
                command: Command::Proxy,
                endpoints,
                tlvs: Tlvs::default(),
                mixed_families: line.mixed,
            };
            Ok(Some((header, line.pos)))
        }
        Err(Stop::Invalid(e)) => Err(e),
        Err(Stop::Incomplete) if window.len() == MAX_LEN => Err(ParseError::V1TooLong),
        Err(Stop::Incomplete) => Ok(None),
    }
}

/// Why the pass stopped before a complete line.
enum Stop {
    /// The bytes so far are a prefix of some valid line.
    Incomplete,
    Invalid(ParseError),
}

impl From<ParseError> for Stop {
    fn from(e: ParseError) -> Self {
        Self::Invalid(e)
    }
}

/// The token being read, which names the error for a byte that does not fit it.
#[derive(Clone, Copy)]
enum Token {
    Protocol,
    Address(Field),
    Port(Field),
}

impl Token {
    fn error(self, offset: usize) -> ParseError {
        match self {
            Self::Protocol => ParseError::V1BadProtocol { offset },
            Self::Address(field) => ParseError::V1BadAddress { field, offset },
            Self::Port(field) => ParseError::V1BadPort { field, offset },
        }
    }

    /// The error for `byte` where this token required something else: stray spaces and
    /// line ends get their own kinds, anything else is the token's.
    fn unexpected(self, byte: u8, offset: usize) -> ParseError {
        match byte {
            b' ' => ParseError::V1BadSeparator { offset },
            b'\r' | b'\n' => ParseError::V1BadLineEnd { offset },
            _ => self.error(offset),
        }
    }
}

enum Protocol {
    Tcp4,
    Tcp6,
    Unknown,
}

/// A cursor over the first (at most 107) bytes.
struct Line<'a> {
    buf: &'a [u8],
    pos: usize,
    /// [`Limits::accept_v1_mixed_families`].
    mixed_allowed: bool,
    /// Set when an address was of the other family than the line's `TCP4`/`TCP6`.
    mixed: bool,
}

impl Line<'_> {
    fn peek(&self) -> Result<u8, Stop> {
        self.buf.get(self.pos).copied().ok_or(Stop::Incomplete)
    }

    fn header(&mut self) -> Result<Endpoints, Stop> {
        for &expected in SIGNATURE {
            if self.peek()? != expected {
                return Err(ParseError::BadSignature { offset: self.pos }.into());
            }
            self.pos += 1;
        }
        match self.peek()? {
            b' ' => self.pos += 1,
            b'\r' | b'\n' => return Err(ParseError::V1BadLineEnd { offset: self.pos }.into()),
            _ => return Err(ParseError::V1BadSeparator { offset: self.pos }.into()),
        }
        match self.protocol()? {
            Protocol::Unknown => {
                self.rest_of_unknown()?;
                Ok(Endpoints::UNSPECIFIED)
            }
            Protocol::Tcp4 if self.mixed_allowed => self.tcp(Self::ipv4_or_6, Self::mixed),
            Protocol::Tcp6 if self.mixed_allowed => self.tcp(Self::ipv6_or_4, Self::mixed),
            Protocol::Tcp4 => self.tcp(Self::ipv4, Endpoints::tcp4),
            Protocol::Tcp6 => self.tcp(Self::ipv6, Endpoints::tcp6),
        }
    }

    /// `src dst sport dport\r\n`, after `TCP4 ` or `TCP6 `.
    fn tcp<A>(
        &mut self,
        address: impl Fn(&mut Self, Field) -> Result<A, Stop>,
        endpoints: impl FnOnce(A, A, u16, u16) -> Endpoints,
    ) -> Result<Endpoints, Stop> {
        self.field_start(Token::Address(Field::Source))?;
        let source_ip = address(self, Field::Source)?;
        self.separator(Token::Address(Field::Source))?;
        self.field_start(Token::Address(Field::Destination))?;
        let destination_ip = address(self, Field::Destination)?;
        self.separator(Token::Address(Field::Destination))?;
        self.field_start(Token::Port(Field::Source))?;
        let source_port = self.port(Field::Source)?;
        self.separator(Token::Port(Field::Source))?;
        self.field_start(Token::Port(Field::Destination))?;
        let destination_port = self.port(Field::Destination)?;
        self.crlf(Token::Port(Field::Destination))?;
        Ok(endpoints(
            source_ip,
            destination_ip,
            source_port,
            destination_port,
        ))
    }

    /// The first byte of a field: a space there means an empty field (two spaces in a
    /// row), a CR or LF a line ended too early. Inside a field, an unexpected byte is
    /// the field's own error.
    fn field_start(&self, token: Token) -> Result<(), Stop> {
        match self.peek()? {
            byte @ (b' ' | b'\r' | b'\n') => Err(token.unexpected(byte, self.pos).into()),
            _ => Ok(()),
        }
    }

    /// The single space after a token.
    fn separator(&mut self, after: Token) -> Result<(), Stop> {
        let byte = self.peek()?;
        if byte != b' ' {
            return Err(after.unexpected(byte, self.pos).into());
        }
        self.pos += 1;
        Ok(())
    }

    /// The CRLF that ends the line.
    fn crlf(&mut self, after: Token) -> Result<(), Stop> {
        let byte = self.peek()?;
        if byte != b'\r' {
            return Err(after.unexpected(byte, self.pos).into());
        }
        self.pos += 1;
        if self.peek()? != b'\n' {
            return Err(ParseError::V1BadLineEnd { offset: self.pos }.into());
        }
        self.pos += 1;
        Ok(())
    }

    fn protocol(&mut self) -> Result<Protocol, Stop> {
        let (rest, protocol): (&[u8], _) = match self.peek()? {
            b'T' => (b"CP", None),
            b'U' => (b"NKNOWN", Some(Protocol::Unknown)),
            byte => return Err(Token::Protocol.unexpected(byte, self.pos).into()),
        };
        self.pos += 1;
        for &expected in rest {
            if self.peek()? != expected {
                return Err(ParseError::V1BadProtocol { offset: self.pos }.into());
            }
            self.pos += 1;
        }
        if let Some(protocol) = protocol {
            return Ok(protocol);
        }
        let protocol = match self.peek()? {
            b'4' => Protocol::Tcp4,
            b'6' => Protocol::Tcp6,
            _ => return Err(ParseError::V1BadProtocol { offset: self.pos }.into()),
        };
        self.pos += 1;
        self.separator(Token::Protocol)?;
        Ok(protocol)
    }

    /// After `UNKNOWN`: CRLF at once, or a space and anything up to the first CRLF, which
    /// the receiver must ignore. A lone CR or LF never ends the line.
    fn rest_of_unknown(&mut self) -> Result<(), Stop> {
        match self.peek()? {
            b'\r' => return self.crlf(Token::Protocol),
            b' ' => self.pos += 1,
            byte => return Err(Token::Protocol.unexpected(byte, self.pos).into()),
        }
        loop {
            match self.peek()? {
                b'\r' => return self.crlf(Token::Protocol),
                b'\n' => return Err(ParseError::V1BadLineEnd { offset: self.pos }.into()),
                _ => self.pos += 1,
            }
        }
    }

    /// A decimal number up to `max`: digits only, no sign, no leading zero. Stops before
    /// the first non-digit, which the caller judges.
    fn decimal(&mut self, max: u32, token: Token) -> Result<u32, Stop> {
        let first = self.peek()?;
        if !first.is_ascii_digit() {
            return Err(token.error(self.pos).into());
        }
        self.pos += 1;
        let mut value = u32::from(first - b'0');
        loop {
            let byte = self.peek()?;
            if !byte.is_ascii_digit() {
                return Ok(value);
            }
            if value == 0 {
                return Err(token.error(self.pos).into());
            }
            value = value * 10 + u32::from(byte - b'0');
            if value > max {
                return Err(token.error(self.pos).into());
            }
            self.pos += 1;
        }
    }

    fn port(&mut self, field: Field) -> Result<u16, Stop> {
        let value = self.decimal(PORT_MAX, Token::Port(field))?;
        Ok(u16::try_from(value).expect("decimal() stops at PORT_MAX"))
    }

    fn octet(&mut self, token: Token) -> Result<u8, Stop> {
        let value = self.decimal(OCTET_MAX, token)?;
        Ok(u8::try_from(value).expect("decimal() stops at OCTET_MAX"))
    }

    /// A `TCP4` line's address, or (mixed families accepted) an IPv6 one.
    fn ipv4_or_6(&mut self, field: Field) -> Result<IpAddr, Stop> {
        self.either(
            field,
            |l, f| l.ipv4(f).map(IpAddr::V4),
            |l, f| l.ipv6(f).map(IpAddr::V6),
        )
    }

    /// A `TCP6` line's address, or (mixed families accepted) an IPv4 one.
    fn ipv6_or_4(&mut self, field: Field) -> Result<IpAddr, Stop> {
        self.either(
            field,
            |l, f| l.ipv6(f).map(IpAddr::V6),
            |l, f| l.ipv4(f).map(IpAddr::V4),
        )
    }

    /// The declared family's address, else the other's from the same byte. A prefix of
    /// the declared family waits for more; when neither fits, the declared family's error
    /// stands, so a split line fails as the whole one does.
    fn either(
        &mut self,
        field: Field,
        declared: impl Fn(&mut Self, Field) -> Result<IpAddr, Stop>,
        other: impl Fn(&mut Self, Field) -> Result<IpAddr, Stop>,
    ) -> Result<IpAddr, Stop> {
        let start = self.pos;
        match declared(self, field) {
            Err(Stop::Invalid(first)) => {
                self.pos = start;
                match other(self, field) {
                    Ok(address) => {
                        self.mixed = true;
                        Ok(address)
                    }
                    Err(Stop::Incomplete) => Err(Stop::Incomplete),
                    Err(Stop::Invalid(_)) => Err(Stop::Invalid(first)),
                }
            }
            result => result,
        }
    }

    /// The endpoints of a line whose addresses may differ in family: both IPv4 stay so,
    /// otherwise both are kept as IPv6 (an IPv4 one mapped).
    fn mixed(source: IpAddr, destination: IpAddr, sport: u16, dport: u16) -> Endpoints {
        match (source, destination) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Endpoints::tcp4(s, d, sport, dport),
            (s, d) => Endpoints::tcp6(as_v6(s), as_v6(d), sport, dport),
        }
    }

    /// Four decimal octets 0–255 joined by single dots. A colon can only come from an
    /// IPv6 address, so it is reported as a family mismatch.
    fn ipv4(&mut self, field: Field) -> Result<Ipv4Addr, Stop> {
        self.quad(field, false).map(Ipv4Addr::from)
    }

    /// A dotted quad, alone (`TCP4`) or as the tail of an IPv6 address.
    fn quad(&mut self, field: Field, in_ipv6: bool) -> Result<[u8; 4], Stop> {
        let token = Token::Address(field);
        let mut octets = [0u8; 4];
        for (i, octet) in octets.iter_mut().enumerate() {
            let byte = self.peek()?;
            if byte == b':' && !in_ipv6 {
                return Err(ParseError::V1FamilyMismatch {
                    field,
                    offset: self.pos,
                }
                .into());
            }
            if i > 0 {
                if byte != b'.' {
                    return Err(token.error(self.pos).into());
                }
                self.pos += 1;
            }
            *octet = self.octet(token)?;
        }
        Ok(octets)
    }

    /// Any RFC 4291 text form of exactly 128 bits: eight groups of one to four hex
    /// digits, at most one `::` standing for one or more zero groups, and optionally a
    /// dotted-quad tail for the last 32 bits. No zone id. A dotted quad with no colon
    /// before it is an IPv4 address, reported as a family mismatch.
    fn ipv6(&mut self, field: Field) -> Result<Ipv6Addr, Stop> {
        let token = Token::Address(field);
        let mut groups = Groups::default();
        if self.peek()? == b':' {
            self.pos += 1;
            if self.peek()? != b':' {
                return Err(token.error(self.pos).into());
            }
            self.pos += 1;
            groups.gap = Some(0);
            if !self.peek()?.is_ascii_hexdigit() {
                return Ok(groups.address());
            }
        }
        loop {
            let start = self.pos;
            let mut value = 0u16;
            while let Some(digit) = hex_digit(self.peek()?) {
                if self.pos - start == 4 {
                    return Err(token.error(self.pos).into());
                }
                value = value << 4 | digit;
                self.pos += 1;
            }
            if self.pos == start {
                return Err(token.error(self.pos).into());
            }
            match self.peek()? {
                b'.' => {
                    if groups.len == 0 && groups.gap.is_none() {
                        return Err(ParseError::V1FamilyMismatch {
                            field,
                            offset: self.pos,
                        }
                        .into());
                    }
                    return self.ipv4_tail(field, start, groups);
                }
                b':' => {
                    groups.push(value, start, token)?;
                    if groups.len == groups.capacity() {
                        // Nothing can follow: no room for another group nor for `::`.
                        return Err(token.error(self.pos).into());
                    }
                    self.pos += 1;
                    if self.peek()? == b':' {
                        if groups.gap.is_some() {
                            return Err(token.error(self.pos).into());
                        }
                        groups.gap = Some(groups.len);
                        self.pos += 1;
                        if !self.peek()?.is_ascii_hexdigit() {
                            return Ok(groups.address());
                        }
                        if groups.len == groups.capacity() {
                            return Err(token.error(self.pos).into());
                        }
                    }
                }
                _ => {
                    groups.push(value, start, token)?;
                    return groups.finish(self.pos, token).map_err(Stop::from);
                }
            }
        }
    }

    /// The dotted quad ending an IPv6 address. Its first octet has been read as a hex
    /// group starting at `start`; it is re-read here as decimal.
    fn ipv4_tail(
        &mut self,
        field: Field,
        start: usize,
        mut groups: Groups,
    ) -> Result<Ipv6Addr, Stop> {
        let token = Token::Address(field);
        // The quad is the last 32 bits: without `::` it must follow exactly six groups.
        let fits = match groups.gap {
            None => groups.len == 6,
            Some(_) => groups.len + 2 <= groups.capacity(),
        };
        if !fits {
            return Err(token.error(start).into());
        }
        self.pos = start;
        let octets = self.quad(field, true)?;
        let [a, b, c, d] = octets;
        groups.push(u16::from_be_bytes([a, b]), start, token)?;
        groups.push(u16::from_be_bytes([c, d]), start, token)?;
        groups.finish(self.pos, token).map_err(Stop::from)
    }
}

/// The groups of an IPv6 address read so far.
#[derive(Default)]
struct Groups {
    values: [u16; 8],
    len: usize,
    /// Where `::` stands, as a count of the groups before it.
    gap: Option<usize>,
}

impl Groups {
    /// How many groups may be written out: `::` stands for at least one.
    fn capacity(&self) -> usize {
        if self.gap.is_some() { 7 } else { 8 }
    }

    fn push(&mut self, value: u16, offset: usize, token: Token) -> Result<(), ParseError> {
        if self.len >= self.capacity() {
            return Err(token.error(offset));
        }
        self.values[self.len] = value;
        self.len += 1;
        Ok(())
    }

    /// Without `::`, all eight groups must be there.
    fn finish(&self, offset: usize, token: Token) -> Result<Ipv6Addr, ParseError> {
        if self.gap.is_none() && self.len != 8 {
            return Err(token.error(offset));
        }
        Ok(self.address())
    }

    fn address(&self) -> Ipv6Addr {
        let mut out = [0u16; 8];
        let (head, tail) = self.values[..self.len].split_at(self.gap.unwrap_or(self.len));
        out[..head.len()].copy_from_slice(head);
        out[8 - tail.len()..].copy_from_slice(tail);
        Ipv6Addr::from(out)
    }
}

fn hex_digit(byte: u8) -> Option<u16> {
    match byte {
        b'0'..=b'9' => Some(u16::from(byte - b'0')),
        b'a'..=b'f' => Some(u16::from(byte - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(byte - b'A' + 10)),
        _ => None,
    }
}

fn as_v6(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}
