//! Reading PostgreSQL v3 messages: the untyped start-up family and typed
//! messages (`Byte1` type, `Int32` length counting itself, body), plus a
//! cursor over message bodies. Nothing here panics on any input.

/// A typed message longer than this (the length field, which counts itself)
/// is not believed: PostgreSQL caps a field at 1 GiB, and every
/// four-letter ASCII word read as a length exceeds it, so text protocols
/// are not mistaken for PostgreSQL.
const MAX_MESSAGE_LEN: u32 = 1 << 30;
/// The server refuses start-up packets longer than this
/// (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_LEN: u32 = 10_000;
/// Start-up packet codes.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// A CancelRequest: length, code, process id, secret key of 4 bytes
/// (protocol 3.0) up to 256 bytes (3.2).
const MIN_CANCEL_LEN: u32 = 16;
const MAX_CANCEL_LEN: u32 = 12 + 256;

/// Frontend (client) message types.
pub(super) const FRONTEND_TYPES: &[u8] = b"QPBDESHCFpdcfX";
/// Backend (server) message types.
pub(super) const BACKEND_TYPES: &[u8] = b"RK123CdcGHWDIEVvnNAtSsZT";

/// Progress of reading: a value, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step<T> {
    Done(T),
    NeedMore,
    Invalid,
}

/// One typed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Message<'a> {
    pub kind: u8,
    pub body: &'a [u8],
}

impl Message<'_> {
    /// Bytes the message takes on the wire: type, length, body.
    pub fn wire_len(&self) -> usize {
        5 + self.body.len()
    }
}

/// Reads the typed message at the start of `bytes` whose type is one of
/// `types`.
pub(super) fn read_typed<'a>(bytes: &'a [u8], types: &[u8]) -> Step<Message<'a>> {
    let Some(&kind) = bytes.first() else {
        return Step::NeedMore;
    };
    if !types.contains(&kind) {
        return Step::Invalid;
    }
    let Some(length) = bytes.get(1..5) else {
        // The length bytes seen so far must still allow a sane length.
        return match bytes.get(1) {
            Some(&high) if u32::from(high) << 24 > MAX_MESSAGE_LEN => Step::Invalid,
            _ => Step::NeedMore,
        };
    };
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
    if !(4..=MAX_MESSAGE_LEN).contains(&length) {
        return Step::Invalid;
    }
    // At most 1 GiB + 1: fits a usize on every platform Rust supports here.
    let end = 1 + length as usize;
    match bytes.get(5..end) {
        Some(body) => Step::Done(Message { kind, body }),
        None => Step::NeedMore,
    }
}

/// Reads the typed messages of `bytes` one after another: stops at the
/// first message that is incomplete or not one of `types`.
pub(super) fn messages<'a>(
    bytes: &'a [u8],
    types: &'a [u8],
) -> impl Iterator<Item = (usize, Message<'a>)> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        let Step::Done(message) = read_typed(bytes.get(at..)?, types) else {
            return None;
        };
        let start = at;
        at += message.wire_len();
        Some((start, message))
    })
}

/// A message of the untyped start-up family (only ever the first thing a
/// client sends, after an SSL/GSSAPI answer at most).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StartupPacket<'a> {
    /// StartupMessage: protocol minor version and the `name\0value\0`
    /// pairs (without the final NUL).
    Startup {
        minor: u16,
        parameters: &'a [u8],
    },
    Ssl,
    GssEnc,
    /// CancelRequest for backend `pid`.
    Cancel {
        pid: u32,
    },
}

/// Reads a start-up family message at the start of `bytes`, with its length.
pub(super) fn read_startup(bytes: &[u8]) -> Step<(StartupPacket<'_>, usize)> {
    match bytes.first() {
        None => return Step::NeedMore,
        // Lengths are below 16 MiB: a start-up packet starts with 0, a
        // typed message never does.
        Some(&first) if first != 0 => return Step::Invalid,
        Some(_) => {}
    }
    let Some(length) = bytes.get(..4) else {
        return Step::NeedMore;
    };
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
    if !(8..=MAX_STARTUP_LEN).contains(&length) {
        return Step::Invalid;
    }
    let Some(code) = bytes.get(4..8) else {
        return Step::NeedMore;
    };
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    let fits = match code {
        SSL_REQUEST | GSSENC_REQUEST => length == 8,
        CANCEL_REQUEST => (MIN_CANCEL_LEN..=MAX_CANCEL_LEN).contains(&length),
        _ if code >> 16 == 3 => length > 8,
        _ => false,
    };
    if !fits {
        return Step::Invalid;
    }
    let length = length as usize;
    let Some(body) = bytes.get(8..length) else {
        return Step::NeedMore;
    };
    let message = match code {
        SSL_REQUEST => StartupPacket::Ssl,
        GSSENC_REQUEST => StartupPacket::GssEnc,
        CANCEL_REQUEST => StartupPacket::Cancel {
            // The body holds at least the pid and a 4-byte key.
            pid: Cursor::new(body).i32().unwrap_or_default() as u32,
        },
        _ => {
            // `name\0value\0`... then a final NUL, no empty name.
            let Some((&0, parameters)) = body.split_last() else {
                return Step::Invalid;
            };
            if startup_parameters(parameters).is_none() {
                return Step::Invalid;
            }
            StartupPacket::Startup {
                minor: (code & 0xFFFF) as u16,
                parameters,
            }
        }
    };
    Step::Done((message, length))
}

/// The `(name, value)` pairs of a StartupMessage, `None` when malformed.
pub(super) fn startup_parameters(parameters: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut pairs = Vec::new();
    let mut cursor = Cursor::new(parameters);
    while !cursor.is_empty() {
        let name = cursor.cstr()?;
        let value = cursor.cstr()?;
        if name.is_empty() {
            return None;
        }
        pairs.push((name, value));
    }
    Some(pairs)
}

/// A reader of message bodies: every read is checked, `None` past the end.
#[derive(Clone, Debug)]
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.bytes.len() {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn i16(&mut self) -> Option<i16> {
        let bytes = self.take(2)?;
        Some(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        let bytes = self.take(4)?;
        Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A count (`Int16` that must not be negative).
    pub fn count(&mut self) -> Option<usize> {
        usize::try_from(self.i16()?).ok()
    }

    /// A NUL-terminated string, without its NUL.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.bytes.iter().position(|&byte| byte == 0)?;
        let text = self.take(end)?;
        self.take(1)?;
        Some(text)
    }

    /// A length-prefixed value (`Int32` length, -1 for NULL): `Some(None)`
    /// for NULL.
    pub fn value(&mut self) -> Option<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Some(None),
            length => Some(Some(self.take(usize::try_from(length).ok()?)?)),
        }
    }
}

/// Whether the body of frontend message `kind` is well formed: every field
/// present and nothing left over.
pub(super) fn frontend_body_ok(kind: u8, body: &[u8]) -> bool {
    let mut cursor = Cursor::new(body);
    let parsed = match kind {
        // Password and SASL messages: opaque, but never empty.
        b'p' => return !body.is_empty(),
        // CopyData: opaque.
        b'd' => return true,
        // Sync, Flush, CopyDone, Terminate: no body.
        b'S' | b'H' | b'c' | b'X' => return body.is_empty(),
        // Query: one NUL-terminated string.
        b'Q' => cursor.cstr().map(drop),
        // Parse: name, query, parameter type oids.
        b'P' => parse(&mut cursor).map(drop),
        b'B' => bind(&mut cursor).map(drop),
        // Describe, Close: 'S'tatement or 'P'ortal, and a name.
        b'D' | b'C' => match cursor.u8() {
            Some(b'S' | b'P') => cursor.cstr().map(drop),
            _ => None,
        },
        // Execute: portal name and a row limit.
        b'E' => cursor.cstr().and_then(|_| cursor.i32()).map(drop),
        b'F' => function_call(&mut cursor).map(drop),
        // CopyFail: the reason.
        b'f' => cursor.cstr().map(drop),
        _ => None,
    };
    parsed.is_some() && cursor.is_empty()
}

/// Reads a Parse body: statement name, query text, parameter type oids.
pub(super) fn parse<'a>(cursor: &mut Cursor<'a>) -> Option<(&'a [u8], &'a [u8], Vec<i32>)> {
    let name = cursor.cstr()?;
    let query = cursor.cstr()?;
    let types = (0..cursor.count()?)
        .map(|_| cursor.i32())
        .collect::<Option<Vec<_>>>()?;
    Some((name, query, types))
}

/// A Bind body.
#[derive(Debug)]
pub(super) struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub formats: Vec<i16>,
    pub values: Vec<Option<&'a [u8]>>,
}

impl Bind<'_> {
    /// Whether parameter `index` is sent in binary.
    pub fn is_binary(&self, index: usize) -> bool {
        let format = match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => self.formats.get(index).copied().unwrap_or(0),
        };
        format == 1
    }
}

/// Reads a Bind body (portal, statement, parameter formats and values,
/// result formats).
pub(super) fn bind<'a>(cursor: &mut Cursor<'a>) -> Option<Bind<'a>> {
    let portal = cursor.cstr()?;
    let statement = cursor.cstr()?;
    let formats = (0..cursor.count()?)
        .map(|_| cursor.i16())
        .collect::<Option<Vec<_>>>()?;
    let values = (0..cursor.count()?)
        .map(|_| cursor.value())
        .collect::<Option<Vec<_>>>()?;
    let results = cursor.count()?;
    cursor.take(results.checked_mul(2)?)?;
    Some(Bind {
        portal,
        statement,
        formats,
        values,
    })
}

/// Reads a FunctionCall body: the function oid and the argument values.
pub(super) fn function_call<'a>(cursor: &mut Cursor<'a>) -> Option<(i32, Vec<Option<&'a [u8]>>)> {
    let oid = cursor.i32()?;
    let formats = cursor.count()?;
    cursor.take(formats.checked_mul(2)?)?;
    let values = (0..cursor.count()?)
        .map(|_| cursor.value())
        .collect::<Option<Vec<_>>>()?;
    cursor.i16()?;
    Some((oid, values))
}

/// The code of an Authentication ('R') message body.
pub(super) fn auth_code(body: &[u8]) -> Option<i32> {
    Cursor::new(body).i32()
}

/// Appends a typed message.
pub(super) fn push_message(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    // Bodies built here are small; saturate rather than wrap regardless.
    let length = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
}
