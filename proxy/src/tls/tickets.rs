//! Session resumption that survives reloads and spans a fleet: the ticket keys (the
//! process's own, rotating, or those of `tls_ticket_key_file`), the session-ID cache, and
//! the per-app scope that keeps a session of one app from resuming on another. The
//! process's own keys and the cache are made once and handed from each runtime to the
//! next ([`Resumption::new`] with the previous one); a key file is read again on every
//! reload, and the key that encrypted before it stays accepted for decryption.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};

use crate::config::App;

/// A ticket key: 32 bytes, an AES-256-GCM key.
pub(crate) const TICKET_KEY_BYTES: usize = 32;
/// The most keys one file may hold: rotation needs two or three.
pub(crate) const MAX_TICKET_KEYS: usize = 16;
/// What a ticket starts with: the name of the key that sealed it (derived from the key).
const KEY_NAME_BYTES: usize = 16;
/// The AES-GCM tag.
const TAG_BYTES: usize = 16;
/// Tickets longer than this are refused unread: rustls's own tickets hold a session
/// (with a client certificate chain, at most a few KB), and refusing long ones keeps
/// partitioning-oracle queries cheap to turn away.
const MAX_TICKET_BYTES: usize = 16 * 1024;
/// The lifetime clients are told for tickets sealed with a key file's keys; the same as
/// rustls's own rotating keys (which also live this long before the next replaces them).
const TICKET_LIFETIME_S: u32 = 6 * 60 * 60;
/// Sessions kept for clients that resume by session ID (TLS 1.2 without tickets).
const SESSION_CACHE_ENTRIES: usize = 4096;
/// The bytes of an app's scope (see [`scope`]).
const SCOPE_BYTES: usize = 16;

/// Why the ticket keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("tls_ticket_key_file {}: cannot read it", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "tls_ticket_key_file {}: readable by {who} (mode {mode:03o}); whoever reads the keys can \
         decrypt every session they protect: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Mode {
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("tls_ticket_key_file {}, line {line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
    #[error(
        "tls_ticket_key_file {}: holds no key: write one per line, 64 hex digits each (from \
         `openssl rand -hex 32`); the first line encrypts, every line decrypts",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "tls_ticket_key_file {}: more than {MAX_TICKET_KEYS} keys: keep the new key and the \
         one or two before it",
        path.display()
    )]
    TooMany { path: PathBuf },
    #[error("making this process's session-ticket keys (the system's random source failed)")]
    Random(#[source] rustls::Error),
}

/// What is wrong with one line of the key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error(
        "not a key: write 64 hex digits (32 bytes, e.g. from `openssl rand -hex 32`), one key \
         per line"
    )]
    NotAKey,
    #[error("the same key as line {first}: list each key once")]
    Repeated { first: usize },
}

/// One key's secret, as read from the file.
pub(crate) type Secret = [u8; TICKET_KEY_BYTES];

/// Parses the key file's text: one key per line (64 hex digits), the first one encrypts;
/// blank lines and `#` comments are skipped. Errors carry the 1-based line number.
pub(crate) fn parse_keys(text: &str) -> Result<Vec<Secret>, (usize, LineProblem)> {
    let mut keys: Vec<(usize, Secret)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let secret = hex_secret(line).ok_or((line_no, LineProblem::NotAKey))?;
        if let Some((first, _)) = keys.iter().find(|(_, k)| *k == secret) {
            return Err((line_no, LineProblem::Repeated { first: *first }));
        }
        keys.push((line_no, secret));
    }
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

fn hex_secret(text: &str) -> Option<Secret> {
    if text.len() != TICKET_KEY_BYTES * 2 {
        return None;
    }
    let mut secret = [0u8; TICKET_KEY_BYTES];
    for (byte, pair) in secret.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(secret)
}

/// Reads the key file at `path`: refused when its group or other users may read or
/// write it, or when it holds no key, a line that is not one, or too many.
pub(crate) fn read_key_file(path: &Path) -> Result<Vec<Secret>, TicketKeyError> {
    let read = |source| TicketKeyError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let who = if mode & 0o007 != 0 {
            "every user"
        } else {
            "its group"
        };
        return Err(TicketKeyError::Mode {
            path: path.to_owned(),
            who,
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let keys = parse_keys(&text).map_err(|(line, problem)| TicketKeyError::Line {
        path: path.to_owned(),
        line,
        problem,
    })?;
    if keys.is_empty() {
        return Err(TicketKeyError::Empty {
            path: path.to_owned(),
        });
    }
    if keys.len() > MAX_TICKET_KEYS {
        return Err(TicketKeyError::TooMany {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// One ticket key, ready to seal and open.
struct TicketKey {
    /// Derived from the secret, so every instance given the same key names it alike, and
    /// the name tells nothing of the key.
    name: [u8; KEY_NAME_BYTES],
    key: LessSafeKey,
}

impl TicketKey {
    fn new(secret: &Secret) -> TicketKey {
        let mut named = b"trustgate ticket key name\0".to_vec();
        named.extend_from_slice(secret);
        let mut name = [0u8; KEY_NAME_BYTES];
        name.copy_from_slice(&digest(&SHA256, &named).as_ref()[..KEY_NAME_BYTES]);
        let key = UnboundKey::new(&AES_256_GCM, secret)
            .expect("32 bytes are an AES-256 key, whatever their value");
        TicketKey {
            name,
            key: LessSafeKey::new(key),
        }
    }
}

/// Tickets sealed with the key file's keys: `name ‖ nonce ‖ AES-256-GCM(session) ‖ tag`,
/// the key name as associated data and a random nonce per ticket. The first key seals;
/// every key opens a ticket that names it.
pub(crate) struct KeyFileTicketer {
    /// Never empty; the first one encrypts. The file's keys, in its order, then the one
    /// kept from before the file last changed.
    keys: Vec<Arc<TicketKey>>,
    /// How many of `keys` the file lists.
    listed: usize,
    random: SystemRandom,
}

impl KeyFileTicketer {
    /// The file's keys, plus the key `previous` encrypted with when the file no longer
    /// lists it, so that sessions from before a rotation still resume. One generation: the
    /// kept key stays while the file is unchanged (reloads for other reasons keep it), and
    /// goes when the file changes again.
    fn new(secrets: &[Secret], previous: Option<&KeyFileTicketer>) -> KeyFileTicketer {
        let mut keys: Vec<Arc<TicketKey>> = secrets
            .iter()
            .map(|s| Arc::new(TicketKey::new(s)))
            .collect();
        let listed = keys.len();
        if let Some(previous) = previous {
            let unchanged = previous.keys[..previous.listed]
                .iter()
                .map(|k| k.name)
                .eq(keys.iter().map(|k| k.name));
            let kept = if unchanged {
                &previous.keys[previous.listed..]
            } else {
                &previous.keys[..previous.keys.len().min(1)]
            };
            for key in kept {
                if !keys.iter().any(|k| k.name == key.name) {
                    keys.push(Arc::clone(key));
                }
            }
        }
        KeyFileTicketer {
            keys,
            listed,
            random: SystemRandom::new(),
        }
    }

    /// How many keys open tickets.
    pub(crate) fn decrypting(&self) -> usize {
        self.keys.len()
    }
}

impl fmt::Debug for KeyFileTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key names are not secret; the keys are never shown.
        f.debug_struct("KeyFileTicketer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl ProducesTickets for KeyFileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(KEY_NAME_BYTES + NONCE_LEN + plain.len() + TAG_BYTES);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// The ticket comes from the client: any length and content, never a panic.
    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET_BYTES {
            return None;
        }
        let (name, rest) = ticket.split_at_checked(KEY_NAME_BYTES)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let key = self.keys.iter().find(|k| k.name[..] == *name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(key.name), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// What resumption is made of; handed from each runtime to the next.
#[derive(Clone)]
pub(crate) struct Resumption {
    /// This process's own ticket keys (rustls's rotating ticketer: a new key every 6 h,
    /// the one before still accepted), made once: used when no key file is set.
    own: Arc<dyn ProducesTickets>,
    /// The session-ID cache, made once.
    sessions: Arc<dyn StoresServerSessions>,
    /// The key file's keys, read for this runtime.
    file: Option<Arc<KeyFileTicketer>>,
}

impl Resumption {
    /// Resumption for a new runtime: `previous`'s own keys and cache (new ones at start),
    /// and the key file's keys when `key_file` is set, read now.
    pub(crate) fn new(
        key_file: Option<&Path>,
        previous: Option<&Resumption>,
    ) -> Result<Resumption, TicketKeyError> {
        let (own, sessions) = match previous {
            Some(p) => (Arc::clone(&p.own), Arc::clone(&p.sessions)),
            None => (
                rustls::crypto::ring::Ticketer::new().map_err(TicketKeyError::Random)?,
                ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES)
                    as Arc<dyn StoresServerSessions>,
            ),
        };
        let file = match key_file {
            None => None,
            Some(path) => {
                let secrets = read_key_file(path)?;
                let before = previous.and_then(|p| p.file.as_deref());
                Some(Arc::new(KeyFileTicketer::new(&secrets, before)))
            }
        };
        Ok(Resumption {
            own,
            sessions,
            file,
        })
    }

    /// The key file's ticketer, when one is set.
    pub(crate) fn key_file(&self) -> Option<&KeyFileTicketer> {
        self.file.as_deref()
    }

    /// The ticketer and the session store of `app`: shared with every app, but scoped to
    /// this one, so that a session resumes only on the app (and client-certificate
    /// settings) it was made on.
    pub(crate) fn for_app(
        &self,
        app: &App,
    ) -> (Arc<dyn ProducesTickets>, Arc<dyn StoresServerSessions>) {
        let scope = scope(app);
        let tickets: Arc<dyn ProducesTickets> = match &self.file {
            Some(file) => Arc::clone(file) as Arc<dyn ProducesTickets>,
            None => Arc::clone(&self.own),
        };
        (
            Arc::new(ScopedTickets {
                inner: tickets,
                scope,
            }),
            Arc::new(ScopedSessions {
                inner: Arc::clone(&self.sessions),
                scope,
            }),
        )
    }
}

/// An app's scope: a digest of its server name and client CA path. rustls lets a
/// session resume on any config that shares the ticketer (its SNI check does not cover a
/// handshake without SNI, whose app can change on reload), so a session made on an app
/// without client certificates could otherwise resume on one that requires them. Equal on
/// every instance given the same config, so a fleet still shares sessions.
fn scope(app: &App) -> [u8; SCOPE_BYTES] {
    let mut input = b"trustgate session scope v1\0".to_vec();
    input.extend_from_slice(app.server_name.as_bytes());
    input.push(0);
    if let Some(ca) = app.tls.as_ref().and_then(|t| t.client_ca_path.as_ref()) {
        input.extend_from_slice(ca.as_os_str().as_encoded_bytes());
    }
    let mut scope = [0u8; SCOPE_BYTES];
    scope.copy_from_slice(&digest(&SHA256, &input).as_ref()[..SCOPE_BYTES]);
    scope
}

/// Tickets whose sealed content starts with the app's scope: a ticket opens for the app
/// that made it only.
#[derive(Debug)]
struct ScopedTickets {
    inner: Arc<dyn ProducesTickets>,
    scope: [u8; SCOPE_BYTES],
}

impl ProducesTickets for ScopedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut scoped = Vec::with_capacity(SCOPE_BYTES + plain.len());
        scoped.extend_from_slice(&self.scope);
        scoped.extend_from_slice(plain);
        self.inner.encrypt(&scoped)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(ticket)?;
        plain.strip_prefix(&self.scope[..]).map(<[u8]>::to_vec)
    }
}

/// The shared session cache, with the app's scope before every session ID.
#[derive(Debug)]
struct ScopedSessions {
    inner: Arc<dyn StoresServerSessions>,
    scope: [u8; SCOPE_BYTES],
}

impl ScopedSessions {
    fn key(&self, id: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(SCOPE_BYTES + id.len());
        key.extend_from_slice(&self.scope);
        key.extend_from_slice(id);
        key
    }
}

impl StoresServerSessions for ScopedSessions {
    fn put(&self, id: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.key(&id), value)
    }

    fn get(&self, id: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(id))
    }

    fn take(&self, id: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.key(id))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "FFEEDDCCBBAA99887766554433221100ffeeddccbbaa99887766554433221100";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn secret(hex: &str) -> Secret {
        hex_secret(hex).expect("test key")
    }

    fn ticketer(keys: &[&str], previous: Option<&KeyFileTicketer>) -> KeyFileTicketer {
        let secrets: Vec<Secret> = keys.iter().map(|k| secret(k)).collect();
        KeyFileTicketer::new(&secrets, previous)
    }

    #[test]
    fn key_file_lines_are_hex_keys_comments_and_blanks() {
        let text = format!("# rotated 2024-05-01\n{A}\n\n  {B}  \n");
        assert_eq!(parse_keys(&text), Ok(vec![secret(A), secret(B)]));
        assert_eq!(parse_keys(""), Ok(vec![]));
        // One digit short, one too many, not hex, a repeat.
        assert_eq!(parse_keys(&A[1..]), Err((1, LineProblem::NotAKey)));
        assert_eq!(parse_keys(&format!("{A}0")), Err((1, LineProblem::NotAKey)));
        assert_eq!(
            parse_keys(&format!("{A}\n{}", A.replace('0', "g"))),
            Err((2, LineProblem::NotAKey))
        );
        assert_eq!(
            parse_keys(&format!("{A}\n#\n{}", A.to_uppercase())),
            Err((3, LineProblem::Repeated { first: 1 }))
        );
        // Multi-byte characters of the right byte length are not hex either.
        assert_eq!(parse_keys(&"é".repeat(32)), Err((1, LineProblem::NotAKey)));
    }

    #[test]
    fn tickets_open_with_any_listed_key_and_seal_with_the_first() {
        let old = ticketer(&[A], None);
        let ticket = old.encrypt(b"session").expect("sealed");
        assert_eq!(old.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        // Another instance given the same file opens it.
        assert_eq!(
            ticketer(&[A], None).decrypt(&ticket).as_deref(),
            Some(&b"session"[..])
        );
        // Rotated: B seals, A still opens.
        let rotated = ticketer(&[B, A], None);
        assert_eq!(rotated.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        let new = rotated.encrypt(b"later").expect("sealed");
        assert_eq!(old.decrypt(&new), None, "sealed with B, which old lacks");
        assert_eq!(
            ticketer(&[B], None).decrypt(&new).as_deref(),
            Some(&b"later"[..])
        );
        // B alone, with the previous runtime's: A (which encrypted) is kept to open.
        let alone = ticketer(&[B], Some(&old));
        assert_eq!(alone.decrypting(), 2);
        assert_eq!(alone.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        // A reload that leaves the file as it is keeps A.
        let again = ticketer(&[B], Some(&alone));
        assert_eq!(again.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        // One generation only: once the file changes again, A is gone (B is kept).
        let next = ticketer(&[C], Some(&again));
        assert_eq!(next.decrypting(), 2);
        assert_eq!(next.decrypt(&ticket), None);
        assert_eq!(next.decrypt(&new).as_deref(), Some(&b"later"[..]));
    }

    #[test]
    fn tickets_from_the_client_never_panic_and_tampering_fails() {
        let t = ticketer(&[A], None);
        let ticket = t.encrypt(b"session").expect("sealed");
        for len in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..len]), None, "cut at {len}");
        }
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "bit flipped in byte {i}");
        }
        assert_eq!(t.decrypt(&vec![0u8; MAX_TICKET_BYTES + 1]), None);
        // Two tickets of one session differ (random nonces).
        assert_ne!(t.encrypt(b"session"), t.encrypt(b"session"));
    }

    #[test]
    fn a_scope_opens_only_its_own_tickets_and_sessions() {
        let inner: Arc<dyn ProducesTickets> = Arc::new(ticketer(&[A], None));
        let a = ScopedTickets {
            inner: Arc::clone(&inner),
            scope: [1; SCOPE_BYTES],
        };
        let b = ScopedTickets {
            inner,
            scope: [2; SCOPE_BYTES],
        };
        let ticket = a.encrypt(b"session").expect("sealed");
        assert_eq!(a.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(b.decrypt(&ticket), None);

        let cache: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(8);
        let a = ScopedSessions {
            inner: Arc::clone(&cache),
            scope: [1; SCOPE_BYTES],
        };
        let b = ScopedSessions {
            inner: cache,
            scope: [2; SCOPE_BYTES],
        };
        assert!(a.put(b"id".to_vec(), b"value".to_vec()));
        assert_eq!(b.get(b"id"), None);
        assert_eq!(b.take(b"id"), None);
        assert_eq!(a.take(b"id").as_deref(), Some(&b"value"[..]));
    }

    #[test]
    fn key_files_others_may_read_are_refused_with_chmod_600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ticket.keys");
        std::fs::write(&path, format!("{A}\n")).expect("write");
        for (mode, who) in [
            (0o640, "its group"),
            (0o604, "every user"),
            (0o660, "its group"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = read_key_file(&path).expect_err("refused");
            assert!(
                matches!(&err, TicketKeyError::Mode { who: w, .. } if *w == who),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(read_key_file(&path).expect("read").len(), 1);
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "# nothing yet\n").expect("write");
        assert!(matches!(
            read_key_file(&path),
            Err(TicketKeyError::Empty { .. })
        ));
        std::fs::write(&path, format!("{A}\nnot a key\n")).expect("write");
        let err = read_key_file(&path).expect_err("refused");
        assert!(matches!(err, TicketKeyError::Line { line: 2, .. }), "{err}");
    }
}
