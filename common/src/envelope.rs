//! Documents at rest: brotli compression, then AES-256-GCM in fixed-size chunks.
//!
//! A stored document is its rendered bytes, optionally brotli-compressed (quality 5, window
//! 2^22: fast, and a good ratio on HTML and XLSX), then optionally encrypted with the active
//! key of the [`EncryptionKeys`] ring. Whether a document is compressed and encrypted is
//! recorded on its database row, not in the object: the two flags are passed back to
//! [`open_stream`].
//!
//! # Why this format
//!
//! - **Streaming decryption with bounded memory.** Downloads stream the object from the store
//!   to the client. A single AES-GCM seal over the whole document could only be checked after
//!   reading all of it, so the plaintext is cut into 64 KiB chunks, each sealed on its own:
//!   a reader holds one encrypted chunk at a time and releases every chunk as soon as its tag
//!   verifies. Decompression then runs incrementally on what decryption releases.
//! - **Key rotation.** The header names the key id the object was sealed with, so a ring can
//!   gain a new active key while keeping older ones to read older objects. An unknown key id
//!   is an error naming it, never a silent fallback.
//! - **Tamper detection.** Each chunk is authenticated under a nonce carrying its index and
//!   associated data carrying the whole header, its index and whether it is the last chunk
//!   (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár). Editing the header,
//!   any ciphertext or tag byte, reordering, dropping or duplicating chunks, splicing a chunk
//!   from another object, or cutting the object at a chunk boundary all fail authentication.
//!   Only authenticated plaintext is ever released: a stream that fails does so with an
//!   `Err` item after a prefix of the true document, never with altered bytes. An HTTP
//!   handler must therefore abort the response on that error rather than end it cleanly,
//!   so the client sees a failed transfer instead of a short file.
//!
//! # Encrypted layout, version 1
//!
//! ```text
//! offset   size  field
//! 0        4     magic "MAEN"
//! 4        1     format version: 1
//! 5        1     key id length L, 1..=64
//! 6        L     key id, ASCII [A-Za-z0-9_-]
//! 6+L      4     chunk size C in plaintext bytes, big-endian u32 (65536 when writing,
//!                1..=1 MiB accepted when reading)
//! 10+L     16    object nonce, random per object
//! 26+L           chunks: ciphertext (C bytes, the last one 0..=C) followed by a 16-byte tag
//! ```
//!
//! Every chunk but the last holds exactly C plaintext bytes; the last holds the rest, and an
//! empty document still has one empty last chunk, so even it authenticates its header. A
//! reader knows a chunk is the last one because the input ends right after it.
//!
//! Chunk `i` (counting from 0, at most 2^32 chunks) is sealed with AES-256-GCM:
//!
//! - key: `HMAC-SHA256(master key, "MONASSURANCE envelope v1 chunk key" || object nonce)`.
//!   Deriving a key per object means that nonces only need to be unique within one object:
//!   with the 96-bit GCM nonce alone, the random part distinguishing the objects of one
//!   master key could be at most 64 bits, whose collision odds grow with the square of the
//!   number of objects (one in a million by six million objects), and a GCM nonce collision
//!   leaks the authentication key.
//! - nonce (12 bytes): the object nonce's first 8 bytes, then `i` as a big-endian u32.
//! - associated data: the whole header, then `i` as a big-endian u32, then one byte, 1 for
//!   the last chunk and 0 otherwise.
//!
//! A compressed, unencrypted object is a bare brotli stream. Brotli has no checksum, so such
//! an object detects truncation and most corruption but not every flipped byte: only
//! encryption makes an object tamper-evident.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use brotli::enc::{BrotliEncoderParams, StandardAlloc};
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState};
use bytes::{Buf, Bytes};
use futures::stream::{BoxStream, StreamExt};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

const MAGIC: [u8; 4] = *b"MAEN";
const VERSION: u8 = 1;
/// Magic, version and key id length: enough to know the header's full length.
const FIXED_HEADER_LEN: usize = 6;
const KID_MAX_LEN: usize = 64;
const CHUNK_SIZE_LEN: usize = 4;
const OBJECT_NONCE_LEN: usize = 16;
const NONCE_PREFIX_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk when writing.
const CHUNK_SIZE: u32 = 64 * 1024;
/// The largest chunk size a reader accepts: the header is only authenticated by the first
/// chunk's tag, so an edited size must not make the reader buffer more than this first.
const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
const SUBKEY_LABEL: &[u8] = b"MONASSURANCE envelope v1 chunk key";

const BROTLI_QUALITY: i32 = 5;
const BROTLI_LGWIN: i32 = 22;
/// The most decompressed bytes released at once: brotli can expand a few input bytes into
/// megabytes, so output is handed out in pieces of at most this size.
const INFLATE_OUT_LEN: usize = 64 * 1024;

/// Why keys could not be loaded or an object could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(
        "invalid key id {0:?}: a key id is 1 to 64 characters among A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidKeyId(String),
    #[error("no encryption key is configured")]
    NoKeys,
    #[error("the active key id {0:?} is not among the encryption keys")]
    ActiveKeyNotFound(String),
    #[error("an active key id is required when there are {0} encryption keys")]
    ActiveKeyRequired(usize),
    #[error("the encryption key {kid:?} is not valid base64")]
    KeyNotBase64 { kid: String },
    #[error("bad key length for {kid:?}: {len} bytes, AES-256 needs 32")]
    BadKeyLength { kid: String, len: usize },
    #[error("unknown key id {0:?}: the object was encrypted with a key that is not configured")]
    UnknownKeyId(String),
    #[error("not an encrypted document: the header does not start with the expected magic")]
    NotAnEnvelope,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    #[error("corrupted or tampered data: malformed header ({0})")]
    BadHeader(&'static str),
    #[error("corrupted or tampered data: chunk {0} failed authentication")]
    Tampered(u32),
    #[error("truncated data: the stored object ends before its last chunk")]
    Truncated,
    #[error("corrupted compressed data")]
    CorruptCompressed,
    #[error("truncated compressed data: the brotli stream ends early")]
    TruncatedCompressed,
    #[error("unexpected data after the end of the compressed stream")]
    TrailingData,
    #[error("the document is too large for this format")]
    TooLarge,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl From<EnvelopeError> for io::Error {
    /// Streams of bytes carry `io::Error`; the envelope error rides inside it so that
    /// [`open`] (or any caller) can get it back with `io::Error::downcast`.
    fn from(err: EnvelopeError) -> Self {
        let kind = match err {
            EnvelopeError::Io(inner) => return inner,
            EnvelopeError::Truncated | EnvelopeError::TruncatedCompressed => {
                io::ErrorKind::UnexpectedEof
            }
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

impl EnvelopeError {
    fn from_io(err: io::Error) -> Self {
        err.downcast::<EnvelopeError>()
            .unwrap_or_else(EnvelopeError::Io)
    }
}

/// Encryption keys: key id -> 32-byte AES-256 key, and the id new documents use.
#[derive(Clone)]
pub struct EncryptionKeys {
    // Shared so that every open stream can own a copy cheaply; SecretBox wipes the keys
    // when the last copy goes.
    keys: Arc<BTreeMap<String, SecretBox<[u8; 32]>>>,
    active_kid: String,
}

impl fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKeys")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("active_kid", &self.active_kid)
            .finish()
    }
}

impl EncryptionKeys {
    /// A ring from raw keys. Every key id is 1 to 64 bytes of `[A-Za-z0-9_-]` (it is written
    /// into each object's header), and `active_kid` must be one of them.
    pub fn new(
        keys: BTreeMap<String, [u8; 32]>,
        active_kid: String,
    ) -> Result<Self, EnvelopeError> {
        if keys.is_empty() {
            return Err(EnvelopeError::NoKeys);
        }
        let keys = keys
            .into_iter()
            .map(|(kid, key)| {
                validate_kid(&kid)?;
                Ok((kid, SecretBox::new(Box::new(key))))
            })
            .collect::<Result<BTreeMap<_, _>, EnvelopeError>>()?;
        if !keys.contains_key(&active_kid) {
            return Err(EnvelopeError::ActiveKeyNotFound(active_kid));
        }
        Ok(EncryptionKeys {
            keys: Arc::new(keys),
            active_kid,
        })
    }

    /// A ring from the settings' text forms: key id -> base64 (standard or URL-safe, padded
    /// or not) 32-byte key, and the optional active kid (required when more than one key).
    /// A blank active kid counts as absent, as an empty environment variable would.
    pub fn from_base64(
        encoded: BTreeMap<String, String>,
        active_kid: Option<&str>,
    ) -> Result<Self, EnvelopeError> {
        let keys = encoded
            .into_iter()
            .map(|(kid, text)| {
                let key = decode_key(&kid, &text)?;
                Ok((kid, key))
            })
            .collect::<Result<BTreeMap<_, _>, EnvelopeError>>()?;
        let active = match active_kid.map(str::trim).filter(|kid| !kid.is_empty()) {
            Some(kid) => kid.to_owned(),
            None => {
                let mut kids = keys.keys();
                match (kids.next(), kids.next()) {
                    (Some(only), None) => only.clone(),
                    (None, _) => return Err(EnvelopeError::NoKeys),
                    (Some(_), Some(_)) => {
                        return Err(EnvelopeError::ActiveKeyRequired(keys.len()));
                    }
                }
            }
        };
        EncryptionKeys::new(keys, active)
    }

    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    fn key(&self, kid: &str) -> Result<&[u8; 32], EnvelopeError> {
        self.keys
            .get(kid)
            .map(ExposeSecret::expose_secret)
            .ok_or_else(|| EnvelopeError::UnknownKeyId(kid.to_owned()))
    }
}

fn validate_kid(kid: &str) -> Result<(), EnvelopeError> {
    let valid = (1..=KID_MAX_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(EnvelopeError::InvalidKeyId(kid.to_owned()))
    }
}

/// Keys are pasted into settings by hand from whatever tool made them, so both alphabets
/// are accepted, with or without padding.
fn decode_key(kid: &str, text: &str) -> Result<[u8; 32], EnvelopeError> {
    const INDIFFERENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, INDIFFERENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, INDIFFERENT);

    let text = text.trim();
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE
    } else {
        &STANDARD
    };
    let bytes = engine
        .decode(text)
        .map_err(|_| EnvelopeError::KeyNotBase64 {
            kid: kid.to_owned(),
        })?;
    let len = bytes.len();
    <[u8; 32]>::try_from(bytes).map_err(|_| EnvelopeError::BadKeyLength {
        kid: kid.to_owned(),
        len,
    })
}

/// What is stored: optionally brotli-compressed, then optionally encrypted with the active key.
pub fn seal(
    plain: &[u8],
    compress: bool,
    keys: Option<&EncryptionKeys>,
) -> Result<Vec<u8>, EnvelopeError> {
    let compressed;
    let body = if compress {
        compressed = brotli_compress(plain)?;
        compressed.as_slice()
    } else {
        plain
    };
    match keys {
        Some(keys) => encrypt(body, keys),
        None => Ok(body.to_vec()),
    }
}

fn brotli_compress(plain: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let params = BrotliEncoderParams {
        quality: BROTLI_QUALITY,
        lgwin: BROTLI_LGWIN,
        size_hint: plain.len(),
        ..BrotliEncoderParams::default()
    };
    let mut out = Vec::with_capacity(plain.len() / 4 + 64);
    brotli::BrotliCompress(&mut &plain[..], &mut out, &params)?;
    Ok(out)
}

fn encrypt(body: &[u8], keys: &EncryptionKeys) -> Result<Vec<u8>, EnvelopeError> {
    let kid = keys.active_kid();
    let mut object_nonce = [0u8; OBJECT_NONCE_LEN];
    rand::rng().fill_bytes(&mut object_nonce);
    let header = encode_header(kid, CHUNK_SIZE, &object_nonce);
    let mut cipher = ChunkCipher::new(keys.key(kid)?, &header, &object_nonce);

    let chunk_size = CHUNK_SIZE as usize;
    // An empty body still gets one (empty) last chunk, so its header is authenticated too.
    let chunk_count = body.len().div_ceil(chunk_size).max(1);
    let mut out = Vec::with_capacity(header.len() + body.len() + chunk_count * TAG_LEN);
    out.extend_from_slice(&header);
    for i in 0..chunk_count {
        let start = i * chunk_size;
        let end = (start + chunk_size).min(body.len());
        let index = u32::try_from(i).map_err(|_| EnvelopeError::TooLarge)?;
        cipher.seal_into(index, i + 1 == chunk_count, &body[start..end], &mut out)?;
    }
    Ok(out)
}

fn encode_header(kid: &str, chunk_size: u32, object_nonce: &[u8; OBJECT_NONCE_LEN]) -> Vec<u8> {
    let mut header = Vec::with_capacity(FIXED_HEADER_LEN + kid.len() + 20);
    header.extend_from_slice(&MAGIC);
    header.push(VERSION);
    // Key ids are validated to at most 64 bytes when the ring is built.
    header.push(kid.len() as u8);
    header.extend_from_slice(kid.as_bytes());
    header.extend_from_slice(&chunk_size.to_be_bytes());
    header.extend_from_slice(object_nonce);
    header
}

/// The full header length, known from its first [`FIXED_HEADER_LEN`] bytes; checking them
/// as soon as they arrive rejects a non-envelope before reading any further.
fn header_len(fixed: &[u8]) -> Result<usize, EnvelopeError> {
    match fixed {
        [m0, m1, m2, m3, version, kid_len, ..] => {
            if [*m0, *m1, *m2, *m3] != MAGIC {
                return Err(EnvelopeError::NotAnEnvelope);
            }
            if *version != VERSION {
                return Err(EnvelopeError::UnsupportedVersion(*version));
            }
            let kid_len = usize::from(*kid_len);
            if !(1..=KID_MAX_LEN).contains(&kid_len) {
                return Err(EnvelopeError::BadHeader("key id length"));
            }
            Ok(FIXED_HEADER_LEN + kid_len + CHUNK_SIZE_LEN + OBJECT_NONCE_LEN)
        }
        _ => Err(EnvelopeError::Truncated),
    }
}

/// AES-256-GCM for the chunks of one object, tracking the per-chunk nonce and associated data.
struct ChunkCipher {
    aead: Aes256Gcm,
    /// The object nonce's prefix, then room for the chunk index.
    nonce: [u8; 12],
    /// The header, then room for the chunk index and the last-chunk flag.
    aad: Vec<u8>,
}

impl ChunkCipher {
    fn new(master: &[u8; 32], header: &[u8], object_nonce: &[u8; OBJECT_NONCE_LEN]) -> Self {
        // HMAC zero-pads keys shorter than its 64-byte block, so passing the padded block
        // is the same HMAC as keying with the 32 bytes, without a fallible length check.
        let mut hmac_key = [0u8; 64];
        hmac_key[..32].copy_from_slice(master);
        let mut kdf = <Hmac<Sha256> as KeyInit>::new(&hmac_key.into());
        kdf.update(SUBKEY_LABEL);
        kdf.update(object_nonce);
        let aead = Aes256Gcm::new(&kdf.finalize().into_bytes());

        let mut nonce = [0u8; 12];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&object_nonce[..NONCE_PREFIX_LEN]);
        let mut aad = Vec::with_capacity(header.len() + 5);
        aad.extend_from_slice(header);
        aad.extend_from_slice(&[0; 5]);
        ChunkCipher { aead, nonce, aad }
    }

    /// Points the nonce and associated data at chunk `index`.
    fn position(&mut self, index: u32, last: bool) {
        let index = index.to_be_bytes();
        self.nonce[NONCE_PREFIX_LEN..].copy_from_slice(&index);
        let flag = self.aad.len() - 1;
        self.aad[flag - 4..flag].copy_from_slice(&index);
        self.aad[flag] = u8::from(last);
    }

    fn seal_into(
        &mut self,
        index: u32,
        last: bool,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        self.position(index, last);
        let start = out.len();
        out.extend_from_slice(plain);
        // GCM only refuses inputs beyond 64 GiB, far above one chunk.
        let tag = self
            .aead
            .encrypt_inout_detached(&self.nonce.into(), &self.aad, (&mut out[start..]).into())
            .map_err(|_| EnvelopeError::TooLarge)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts `chunk` (ciphertext then tag) in place, leaving the plaintext.
    fn open(&mut self, index: u32, last: bool, chunk: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        self.position(index, last);
        self.aead
            .decrypt_in_place(&self.nonce.into(), &self.aad, chunk)
            .map_err(|_| EnvelopeError::Tampered(index))
    }
}

/// Reads an encrypted object incrementally: the header, then one chunk at a time.
struct Decryptor {
    keys: EncryptionKeys,
    phase: Phase,
}

enum Phase {
    Header(Vec<u8>),
    Chunks {
        // Boxed: the AES key schedule makes it far larger than the other phases.
        cipher: Box<ChunkCipher>,
        /// Ciphertext and tag of a full chunk.
        chunk_len: usize,
        index: u32,
        /// The current chunk, plus one byte of the next once it arrives: that byte proves
        /// the chunk is not the last one.
        buf: Vec<u8>,
    },
    Done,
}

impl Decryptor {
    fn new(keys: EncryptionKeys) -> Self {
        Decryptor {
            keys,
            phase: Phase::Header(Vec::with_capacity(FIXED_HEADER_LEN + KID_MAX_LEN + 20)),
        }
    }

    /// Moves bytes from the front of `input` into the header or the current chunk, never
    /// more than they need: what is left in `input` waits until the chunk is taken.
    fn absorb(&mut self, input: &mut Bytes) -> Result<(), EnvelopeError> {
        loop {
            match &mut self.phase {
                Phase::Header(buf) => {
                    let needed = if buf.len() < FIXED_HEADER_LEN {
                        FIXED_HEADER_LEN
                    } else {
                        header_len(buf)?
                    };
                    if buf.len() < needed {
                        if input.is_empty() {
                            return Ok(());
                        }
                        move_bytes(input, buf, needed - buf.len());
                        continue;
                    }
                    let header = std::mem::take(buf);
                    self.phase = start_chunks(&self.keys, &header)?;
                }
                Phase::Chunks { chunk_len, buf, .. } => {
                    let wanted = *chunk_len + 1 - buf.len();
                    move_bytes(input, buf, wanted);
                    return Ok(());
                }
                Phase::Done if input.is_empty() => return Ok(()),
                // Unreachable as the last chunk is only known once the input has ended;
                // refusing is safer than dropping bytes.
                Phase::Done => return Err(EnvelopeError::TrailingData),
            }
        }
    }

    /// A decrypted chunk, once it is complete and known not to be the last.
    fn take_chunk(&mut self) -> Result<Option<Bytes>, EnvelopeError> {
        let Phase::Chunks {
            cipher,
            chunk_len,
            index,
            buf,
        } = &mut self.phase
        else {
            return Ok(None);
        };
        if buf.len() <= *chunk_len {
            return Ok(None);
        }
        let mut next = Vec::with_capacity(*chunk_len + 1);
        next.extend_from_slice(&buf[*chunk_len..]);
        buf.truncate(*chunk_len);
        let mut chunk = std::mem::replace(buf, next);
        cipher.open(*index, false, &mut chunk)?;
        *index = index.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
        Ok(Some(Bytes::from(chunk)))
    }

    /// The input has ended: what is buffered must be the last chunk.
    fn finish(&mut self) -> Result<Option<Bytes>, EnvelopeError> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Header(_) => Err(EnvelopeError::Truncated),
            Phase::Chunks {
                mut cipher,
                index,
                mut buf,
                ..
            } => {
                if buf.len() < TAG_LEN {
                    return Err(EnvelopeError::Truncated);
                }
                let sealed = buf.clone();
                match cipher.open(index, true, &mut buf) {
                    Ok(()) => Ok(Some(Bytes::from(buf))),
                    Err(err) => {
                        // A chunk that authenticates as a middle one means the object was
                        // cut at a chunk boundary: worth saying so rather than "tampered".
                        let mut retry = sealed;
                        match cipher.open(index, false, &mut retry) {
                            Ok(()) => Err(EnvelopeError::Truncated),
                            Err(_) => Err(err),
                        }
                    }
                }
            }
            Phase::Done => Ok(None),
        }
    }
}

fn start_chunks(keys: &EncryptionKeys, header: &[u8]) -> Result<Phase, EnvelopeError> {
    let kid_end = header.len() - CHUNK_SIZE_LEN - OBJECT_NONCE_LEN;
    let kid = String::from_utf8_lossy(&header[FIXED_HEADER_LEN..kid_end]);
    let key = keys.key(&kid)?;
    let (size, object_nonce) = header[kid_end..].split_at(CHUNK_SIZE_LEN);
    let chunk_size = u32::from_be_bytes(
        size.try_into()
            .map_err(|_| EnvelopeError::BadHeader("chunk size"))?,
    );
    if !(1..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(EnvelopeError::BadHeader("chunk size"));
    }
    let object_nonce: &[u8; OBJECT_NONCE_LEN] = object_nonce
        .try_into()
        .map_err(|_| EnvelopeError::BadHeader("object nonce"))?;
    let chunk_len = chunk_size as usize + TAG_LEN;
    Ok(Phase::Chunks {
        cipher: Box::new(ChunkCipher::new(key, header, object_nonce)),
        chunk_len,
        index: 0,
        buf: Vec::with_capacity(chunk_len + 1),
    })
}

fn move_bytes(from: &mut Bytes, to: &mut Vec<u8>, at_most: usize) {
    let n = at_most.min(from.len());
    to.extend_from_slice(&from[..n]);
    from.advance(n);
}

/// Incremental brotli decompression into pieces of at most [`INFLATE_OUT_LEN`] bytes.
struct Inflater {
    state: BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
    out: Vec<u8>,
    total_out: usize,
    finished: bool,
}

impl Inflater {
    fn new() -> Self {
        Inflater {
            state: BrotliState::new(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ),
            out: vec![0; INFLATE_OUT_LEN],
            total_out: 0,
            finished: false,
        }
    }

    /// Decompresses from the front of `input`. `None` means `input` is used up and more is
    /// needed (or the stream is complete); otherwise call again, even with empty input, as
    /// the decoder may hold more output.
    fn inflate(&mut self, input: &mut Bytes) -> Result<Option<Bytes>, EnvelopeError> {
        if self.finished {
            return if input.is_empty() {
                Ok(None)
            } else {
                Err(EnvelopeError::TrailingData)
            };
        }
        let mut available_in = input.len();
        let mut input_offset = 0;
        let mut available_out = self.out.len();
        let mut output_offset = 0;
        let result = BrotliDecompressStream(
            &mut available_in,
            &mut input_offset,
            input,
            &mut available_out,
            &mut output_offset,
            &mut self.out,
            &mut self.total_out,
            &mut self.state,
        );
        input.advance(input_offset);
        match result {
            BrotliResult::NeedsMoreInput => {}
            // "More output" with none produced would make the caller spin, and hand it a
            // partly consumed input it takes for used up.
            BrotliResult::NeedsMoreOutput if output_offset == 0 => {
                return Err(EnvelopeError::CorruptCompressed);
            }
            BrotliResult::NeedsMoreOutput => {}
            BrotliResult::ResultSuccess => {
                self.finished = true;
                if !input.is_empty() {
                    return Err(EnvelopeError::TrailingData);
                }
            }
            BrotliResult::ResultFailure => return Err(EnvelopeError::CorruptCompressed),
        }
        Ok((output_offset > 0).then(|| Bytes::copy_from_slice(&self.out[..output_offset])))
    }

    fn finish(&self) -> Result<(), EnvelopeError> {
        if self.finished {
            Ok(())
        } else {
            Err(EnvelopeError::TruncatedCompressed)
        }
    }
}

/// The stored bytes in, the document out: decryption then decompression, each optional.
struct Pipeline {
    input: BoxStream<'static, Result<Bytes, io::Error>>,
    input_done: bool,
    /// The rest of the latest input piece, not yet taken by the decryptor.
    pending: Bytes,
    decryptor: Option<Decryptor>,
    inflater: Option<Inflater>,
    /// Decrypted bytes not yet taken by the inflater.
    plain: Bytes,
    finished: bool,
}

impl Pipeline {
    async fn next_item(&mut self) -> Option<Result<Bytes, EnvelopeError>> {
        if self.finished {
            return None;
        }
        match self.produce().await {
            Ok(Some(piece)) => Some(Ok(piece)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(err) => {
                // One error ends the stream: nothing after it could be trusted.
                self.finished = true;
                Some(Err(err))
            }
        }
    }

    async fn produce(&mut self) -> Result<Option<Bytes>, EnvelopeError> {
        loop {
            if let Some(inflater) = &mut self.inflater
                && let Some(out) = inflater.inflate(&mut self.plain)?
            {
                return Ok(Some(out));
            }
            match self.next_plain().await? {
                Some(piece) if self.inflater.is_some() => self.plain = piece,
                Some(piece) if piece.is_empty() => {}
                Some(piece) => return Ok(Some(piece)),
                None => {
                    if let Some(inflater) = &self.inflater {
                        inflater.finish()?;
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The next piece of (decrypted) stored bytes, or `None` at the end.
    async fn next_plain(&mut self) -> Result<Option<Bytes>, EnvelopeError> {
        let Pipeline {
            input,
            input_done,
            pending,
            decryptor,
            ..
        } = self;
        let Some(decryptor) = decryptor else {
            return next_input(input, input_done).await;
        };
        loop {
            decryptor.absorb(pending)?;
            if let Some(chunk) = decryptor.take_chunk()? {
                return Ok(Some(chunk));
            }
            match next_input(input, input_done).await? {
                Some(piece) => *pending = piece,
                None => return decryptor.finish(),
            }
        }
    }
}

async fn next_input(
    input: &mut BoxStream<'static, Result<Bytes, io::Error>>,
    done: &mut bool,
) -> Result<Option<Bytes>, EnvelopeError> {
    // A finished stream must not be polled again.
    if *done {
        return Ok(None);
    }
    loop {
        match input.next().await {
            Some(Ok(piece)) if piece.is_empty() => {}
            Some(Ok(piece)) => return Ok(Some(piece)),
            Some(Err(err)) => return Err(EnvelopeError::Io(err)),
            None => {
                *done = true;
                return Ok(None);
            }
        }
    }
}

/// The original bytes back, as a stream with bounded memory (never buffers the whole object):
/// decrypt chunk by chunk (if `encrypted`), then brotli-decompress incrementally (if `compressed`).
/// Any tampering, truncation, reordering or unknown key id yields an Err item — never garbage bytes.
///
/// Memory: one encrypted chunk, the current input piece, up to 64 KiB of output, and the
/// brotli window (4 MiB for what [`seal`] writes; a hand-made unencrypted stream may ask
/// for more, as the decoder accepts brotli's large-window extension). The work per item is
/// one chunk's decryption or 64 KiB of decompression, small enough to run inline on the
/// runtime.
/// Errors are `io::Error`s wrapping an [`EnvelopeError`] (see `io::Error::downcast`),
/// except the input's own errors, passed through unchanged.
pub fn open_stream<S>(
    stored: S,
    compressed: bool,
    encrypted: bool,
    keys: EncryptionKeys,
) -> BoxStream<'static, Result<Bytes, io::Error>>
where
    S: futures::Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
{
    let pipeline = Pipeline {
        input: stored.boxed(),
        input_done: false,
        pending: Bytes::new(),
        decryptor: encrypted.then(|| Decryptor::new(keys)),
        inflater: compressed.then(Inflater::new),
        plain: Bytes::new(),
        finished: false,
    };
    futures::stream::unfold(pipeline, |mut pipeline| async move {
        let item = pipeline.next_item().await?;
        Some((item.map_err(io::Error::from), pipeline))
    })
    .boxed()
}

/// Convenience for tests and small objects: collects open_stream.
pub async fn open(
    stored: &[u8],
    compressed: bool,
    encrypted: bool,
    keys: &EncryptionKeys,
) -> Result<Vec<u8>, EnvelopeError> {
    let input = futures::stream::iter([Ok(Bytes::copy_from_slice(stored))]);
    let mut pieces = open_stream(input, compressed, encrypted, keys.clone());
    let mut plain = Vec::with_capacity(stored.len());
    while let Some(piece) = pieces.next().await {
        plain.extend_from_slice(&piece.map_err(EnvelopeError::from_io)?);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const MODES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

    fn ring(kids: &[&str], active: &str) -> EncryptionKeys {
        let keys = kids
            .iter()
            .enumerate()
            .map(|(i, kid)| (kid.to_string(), [i as u8 + 1; 32]))
            .collect();
        EncryptionKeys::new(keys, active.to_owned()).unwrap()
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        bytes
    }

    fn html(len: usize) -> Vec<u8> {
        let mut page = b"<!doctype html><html><body><table>\n".to_vec();
        let mut row = 0;
        while page.len() < len {
            page.extend_from_slice(
                format!(
                    "<tr><td class=\"policy\">POL-{:06}</td><td>Ada Lovelace</td>\
                     <td class=\"amount\">1 234,56 &euro;</td></tr>\n",
                    row % 500
                )
                .as_bytes(),
            );
            row += 1;
        }
        page.truncate(len);
        page
    }

    /// The stored bytes as a stream of pieces of `size` bytes.
    fn pieces(
        stored: &[u8],
        size: usize,
    ) -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let pieces: Vec<_> = stored
            .chunks(size)
            .map(|piece| Ok(Bytes::copy_from_slice(piece)))
            .collect();
        futures::stream::iter(pieces)
    }

    /// The Ok bytes a stream yields before its first error, and that error.
    async fn drain(
        mut stream: BoxStream<'static, Result<Bytes, io::Error>>,
    ) -> (Vec<u8>, Option<EnvelopeError>) {
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(piece) => out.extend_from_slice(&piece),
                Err(err) => {
                    assert!(
                        stream.next().await.is_none(),
                        "the stream ends at its error"
                    );
                    return (out, Some(EnvelopeError::from_io(err)));
                }
            }
        }
        (out, None)
    }

    /// Opens `stored` expecting a failure, and checks nothing but a prefix of `plain` came
    /// out before it.
    async fn open_fails(stored: &[u8], plain: &[u8], keys: &EncryptionKeys) -> EnvelopeError {
        let stream = open_stream(pieces(stored, 7 * 1024), false, true, keys.clone());
        let (out, err) = drain(stream).await;
        assert!(plain.starts_with(&out), "only authentic bytes are released");
        err.expect("opening must fail")
    }

    /// Encrypted-only 200 KiB object: header, then 3 full chunks and a last one of 8 KiB.
    fn sealed_200k(keys: &EncryptionKeys) -> (Vec<u8>, Vec<u8>, usize, usize) {
        let plain = random_bytes(200 * 1024, 7);
        let stored = seal(&plain, false, Some(keys)).unwrap();
        let header = 26 + keys.active_kid().len();
        let chunk = CHUNK_SIZE as usize + TAG_LEN;
        assert_eq!(stored.len(), header + 3 * chunk + 8 * 1024 + TAG_LEN);
        (plain, stored, header, chunk)
    }

    #[tokio::test]
    async fn round_trips_every_size_in_every_mode() {
        let keys = ring(&["k1"], "k1");
        let mut cases: Vec<(String, Vec<u8>)> = [0, 1, 65_535, 65_536, 65_537]
            .into_iter()
            .map(|len| (format!("{len} random bytes"), random_bytes(len, len as u64)))
            .collect();
        cases.push(("1 MiB random".into(), random_bytes(1 << 20, 1)));
        cases.push(("300 KiB of HTML".into(), html(300 * 1024)));

        for (name, plain) in &cases {
            for (compress, encrypt) in MODES {
                let stored = seal(plain, compress, encrypt.then_some(&keys)).unwrap();
                let opened = open(&stored, compress, encrypt, &keys).await.unwrap();
                assert!(
                    opened == *plain,
                    "{name}, compress {compress}, encrypt {encrypt}"
                );
                if encrypt {
                    assert_eq!(stored[..5], *b"MAEN\x01");
                    if plain.len() >= 32 {
                        let probe = &plain[plain.len() / 2..][..32];
                        assert!(!stored.windows(32).any(|w| w == probe), "{name} leaks");
                    }
                }
                if !compress && !encrypt {
                    assert!(stored == *plain);
                }
            }
        }

        let page = html(300 * 1024);
        for encrypt in [false, true] {
            let stored = seal(&page, true, encrypt.then_some(&keys)).unwrap();
            assert!(
                stored.len() * 20 < page.len(),
                "HTML shrinks from {} to {}",
                page.len(),
                stored.len()
            );
        }
        // An empty document is the header and one empty, authenticated chunk.
        assert_eq!(
            seal(b"", false, Some(&keys)).unwrap().len(),
            26 + 2 + TAG_LEN
        );
    }

    /// Builds an object by following the layout in the module documentation, with the
    /// crates' plain APIs rather than this module's helpers, so the documented format and
    /// the code cannot drift apart.
    #[tokio::test]
    async fn an_object_built_from_the_documented_layout_opens() {
        use aes_gcm::aead::{Aead, Payload};

        let master = [1; 32];
        let keys = ring(&["k1"], "k1");
        assert_eq!(keys.key("k1").unwrap(), &master);
        let plain = random_bytes(70_000, 5);
        let object_nonce = [0x42; 16];

        let mut header = b"MAEN\x01\x02k1".to_vec();
        header.extend_from_slice(&65_536u32.to_be_bytes());
        header.extend_from_slice(&object_nonce);
        let mut kdf = <Hmac<Sha256> as KeyInit>::new_from_slice(&master).unwrap();
        kdf.update(b"MONASSURANCE envelope v1 chunk key");
        kdf.update(&object_nonce);
        let aead = Aes256Gcm::new(&kdf.finalize().into_bytes());

        let mut stored = header.clone();
        let chunks: Vec<&[u8]> = plain.chunks(65_536).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let index = (i as u32).to_be_bytes();
            let nonce: [u8; 12] = [&object_nonce[..8], &index].concat().try_into().unwrap();
            let last = u8::from(i + 1 == chunks.len());
            let aad = [&header[..], &index, &[last]].concat();
            let payload = Payload {
                msg: chunk,
                aad: &aad,
            };
            stored.extend(aead.encrypt(&nonce.into(), payload).unwrap());
        }
        assert_eq!(stored.len(), 26 + 2 + 70_000 + 2 * TAG_LEN);
        assert_eq!(open(&stored, false, true, &keys).await.unwrap(), plain);
    }

    #[tokio::test]
    async fn any_input_chunking_decrypts_identically() {
        let keys = ring(&["k1"], "k1");
        let plain = [random_bytes(150 * 1024, 3), html(100 * 1024)].concat();
        for (compress, encrypt) in MODES {
            let stored = seal(&plain, compress, encrypt.then_some(&keys)).unwrap();
            for size in [1, 7, 100 * 1024] {
                let stream = open_stream(pieces(&stored, size), compress, encrypt, keys.clone());
                let (out, err) = drain(stream).await;
                assert!(err.is_none(), "{err:?}");
                assert!(
                    out == plain,
                    "compress {compress}, encrypt {encrypt}, pieces of {size}"
                );
            }
        }
    }

    #[tokio::test]
    async fn any_flipped_byte_is_detected() {
        let keys = ring(&["k1"], "k1");
        let (plain, stored, header, chunk) = sealed_200k(&keys);
        let mut positions: Vec<usize> = (0..header).collect();
        for start in (0..4).map(|i| header + i * chunk) {
            let end = (start + chunk).min(stored.len());
            let tag = end - TAG_LEN;
            positions.extend([start, start + 1, (start + tag) / 2, tag - 1]);
            positions.extend([tag, tag + 7, end - 1]);
        }
        for position in positions {
            for bit in [0x01, 0x80] {
                let mut tampered = stored.clone();
                tampered[position] ^= bit;
                let err = open_fails(&tampered, &plain, &keys).await;
                assert!(
                    !matches!(err, EnvelopeError::Io(_)),
                    "byte {position}: {err}"
                );
            }
        }
        // Flipping a chunk's byte names that chunk; flipping the header fails from chunk 0.
        let mut tampered = stored.clone();
        tampered[header + 2 * chunk + 100] ^= 1;
        let err = open_fails(&tampered, &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::Tampered(2)), "{err}");
        assert!(err.to_string().contains("corrupted or tampered data"));
        let mut tampered = stored.clone();
        tampered[header - 1] ^= 1;
        let err = open_fails(&tampered, &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::Tampered(0)), "{err}");
    }

    #[tokio::test]
    async fn edited_header_fields_are_refused() {
        let keys = ring(&["k1"], "k1");
        let (plain, stored, _, _) = sealed_200k(&keys);
        let edit = |at: usize, value: u8| {
            let mut edited = stored.clone();
            edited[at] = value;
            edited
        };
        let err = open_fails(&edit(0, b'X'), &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::NotAnEnvelope), "{err}");
        let err = open_fails(&edit(4, 2), &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::UnsupportedVersion(2)), "{err}");
        assert_eq!(err.to_string(), "unsupported format version 2");
        let err = open_fails(&edit(5, 0), &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::BadHeader(_)), "{err}");
        // Chunk size 0x10_0001_0000: more than a reader agrees to buffer.
        let err = open_fails(&edit(8, 0x10), &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::BadHeader(_)), "{err}");
        // Another chunk size within bounds no longer matches how the object was cut.
        let err = open_fails(&edit(10, 0x80), &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::Tampered(0)), "{err}");
    }

    #[tokio::test]
    async fn truncation_is_detected() {
        let keys = ring(&["k1"], "k1");
        let (plain, stored, header, chunk) = sealed_200k(&keys);
        // At every chunk boundary, including right after the header.
        for chunks in 0..4 {
            let cut = &stored[..header + chunks * chunk];
            let err = open_fails(cut, &plain, &keys).await;
            assert!(
                matches!(err, EnvelopeError::Truncated),
                "{chunks} chunks: {err}"
            );
            assert!(err.to_string().starts_with("truncated data"));
        }
        // Inside the header, inside a chunk, inside the last tag, or nothing at all.
        for len in [0, 3, header - 1, header + chunk + 500, stored.len() - 1] {
            let err = open_fails(&stored[..len], &plain, &keys).await;
            assert!(
                matches!(err, EnvelopeError::Truncated | EnvelopeError::Tampered(_)),
                "{len} bytes: {err}"
            );
        }
    }

    #[tokio::test]
    async fn dropped_swapped_or_spliced_chunks_are_detected() {
        let keys = ring(&["k1"], "k1");
        let (plain, stored, header, chunk) = sealed_200k(&keys);
        let chunk_at = |i: usize| header + i * chunk..header + (i + 1) * chunk;

        let mut dropped = stored.clone();
        dropped.drain(chunk_at(1));
        let err = open_fails(&dropped, &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::Tampered(1)), "{err}");

        let mut swapped = stored.clone();
        swapped[chunk_at(1)].copy_from_slice(&stored[chunk_at(2)]);
        swapped[chunk_at(2)].copy_from_slice(&stored[chunk_at(1)]);
        let err = open_fails(&swapped, &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::Tampered(1)), "{err}");

        let mut duplicated = stored.clone();
        duplicated.splice(
            chunk_at(1).start..chunk_at(1).start,
            stored[chunk_at(0)].to_vec(),
        );
        assert!(open(&duplicated, false, true, &keys).await.is_err());

        // Same key, same index, another object: its chunk key differs.
        let (_, other, _, _) = sealed_200k(&keys);
        let mut spliced = stored.clone();
        spliced[chunk_at(1)].copy_from_slice(&other[chunk_at(1)]);
        let err = open_fails(&spliced, &plain, &keys).await;
        assert!(matches!(err, EnvelopeError::Tampered(1)), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_key_id_is_named() {
        let stored = seal(b"attestation", true, Some(&ring(&["k9"], "k9"))).unwrap();
        let err = open(&stored, true, true, &ring(&["k1"], "k1"))
            .await
            .unwrap_err();
        assert!(matches!(&err, EnvelopeError::UnknownKeyId(kid) if kid == "k9"));
        assert!(err.to_string().contains("unknown key id \"k9\""), "{err}");
        // The same key bytes under another id do not help: the id selects the key.
        let stored = seal(b"attestation", false, Some(&ring(&["k1", "k2"], "k2"))).unwrap();
        let err = open(&stored, false, true, &ring(&["k2"], "k2")).await;
        assert!(err.is_err());
    }

    #[tokio::test]
    async fn objects_stay_readable_across_key_rotation() {
        let plain = html(80 * 1024);
        let before = ring(&["old"], "old");
        let old_object = seal(&plain, true, Some(&before)).unwrap();

        let mut keys = BTreeMap::new();
        keys.insert("old".to_owned(), [1; 32]);
        keys.insert("new".to_owned(), [9; 32]);
        let after = EncryptionKeys::new(keys, "new".to_owned()).unwrap();
        assert_eq!(after.active_kid(), "new");
        assert_eq!(open(&old_object, true, true, &after).await.unwrap(), plain);

        let new_object = seal(&plain, true, Some(&after)).unwrap();
        assert_eq!(new_object[5], 3);
        assert_eq!(new_object[6..9], *b"new");
        assert_eq!(open(&new_object, true, true, &after).await.unwrap(), plain);
        let err = open(&new_object, true, true, &before).await.unwrap_err();
        assert!(matches!(&err, EnvelopeError::UnknownKeyId(kid) if kid == "new"));
    }

    /// A key id -> base64 text map, as the settings hand it over.
    fn encoded(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(kid, text)| (kid.to_string(), text.clone()))
            .collect()
    }

    #[test]
    fn from_base64_accepts_every_base64_form() {
        // 0xfb bytes encode to '+' and '/' (or '-' and '_'), and 32 bytes need padding.
        let key = [0xfb; 32];
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            let text = engine.encode(key);
            let keys = EncryptionKeys::from_base64(encoded(&[("k1", text.clone())]), None).unwrap();
            assert_eq!(keys.active_kid(), "k1");
            assert_eq!(keys.key("k1").unwrap(), &key, "{text}");
        }
        let two = encoded(&[
            ("2024", STANDARD.encode([1; 32])),
            ("2025", URL_SAFE_NO_PAD.encode([2; 32])),
        ]);
        let keys = EncryptionKeys::from_base64(two.clone(), Some("2025")).unwrap();
        assert_eq!(keys.active_kid(), "2025");
        assert_eq!(keys.key("2024").unwrap(), &[1; 32]);
        // A blank active kid is no active kid.
        assert!(matches!(
            EncryptionKeys::from_base64(two, Some(" ")),
            Err(EnvelopeError::ActiveKeyRequired(2))
        ));
    }

    #[test]
    fn from_base64_rejects_bad_keys_and_rings() {
        let one = |text: String| encoded(&[("k1", text)]);

        let err = EncryptionKeys::from_base64(one(STANDARD.encode([1; 16])), None).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::BadKeyLength { len: 16, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "bad key length for \"k1\": 16 bytes, AES-256 needs 32"
        );
        let err = EncryptionKeys::from_base64(one(STANDARD.encode([1; 33])), None).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::BadKeyLength { len: 33, .. }),
            "{err}"
        );
        let err = EncryptionKeys::from_base64(one("not base64!".into()), None).unwrap_err();
        assert!(matches!(err, EnvelopeError::KeyNotBase64 { .. }), "{err}");
        let err =
            EncryptionKeys::from_base64(one(STANDARD.encode([1; 32])), Some("k2")).unwrap_err();
        assert!(matches!(&err, EnvelopeError::ActiveKeyNotFound(kid) if kid == "k2"));

        let two = encoded(&[
            ("k1", STANDARD.encode([1; 32])),
            ("k2", STANDARD.encode([2; 32])),
        ]);
        let err = EncryptionKeys::from_base64(two, None).unwrap_err();
        assert!(matches!(err, EnvelopeError::ActiveKeyRequired(2)), "{err}");

        assert!(matches!(
            EncryptionKeys::from_base64(BTreeMap::new(), None),
            Err(EnvelopeError::NoKeys)
        ));
        let secret = STANDARD.encode([7; 32]);
        let err = EncryptionKeys::from_base64(encoded(&[("bad kid", secret)]), None).unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidKeyId(_)), "{err}");
    }

    #[test]
    fn new_checks_key_ids_and_the_active_one() {
        let with = |kid: &str| {
            let keys = BTreeMap::from([(kid.to_owned(), [1; 32])]);
            EncryptionKeys::new(keys, kid.to_owned())
        };
        assert!(with("2025-01_a").is_ok());
        assert!(with(&"k".repeat(64)).is_ok());
        for bad in ["", "a b", "k/1", "clé", &"k".repeat(65)] {
            assert!(
                matches!(with(bad), Err(EnvelopeError::InvalidKeyId(_))),
                "{bad:?}"
            );
        }
        let keys = BTreeMap::from([("k1".to_owned(), [1; 32])]);
        assert!(matches!(
            EncryptionKeys::new(keys, "k2".to_owned()),
            Err(EnvelopeError::ActiveKeyNotFound(_))
        ));
        assert!(matches!(
            EncryptionKeys::new(BTreeMap::new(), "k1".to_owned()),
            Err(EnvelopeError::NoKeys)
        ));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = [0xfb; 32];
        let both = encoded(&[
            ("k1", STANDARD.encode(key)),
            ("k2", STANDARD.encode([1; 32])),
        ]);
        let keys = EncryptionKeys::from_base64(both, Some("k2")).unwrap();
        let shown = format!("{keys:?} {keys:#?}");
        assert!(shown.contains("k1") && shown.contains("k2"), "{shown}");
        for material in [
            STANDARD.encode(key),
            "251".into(),
            "0xfb".into(),
            "[1, 1".into(),
        ] {
            assert!(!shown.contains(&material), "{shown}");
        }
    }

    #[tokio::test]
    async fn broken_brotli_streams_fail() {
        let keys = ring(&["k1"], "k1");
        let plain = html(300 * 1024);
        let stored = seal(&plain, true, None).unwrap();

        let err = open(&stored[..stored.len() - 1], true, false, &keys)
            .await
            .unwrap_err();
        assert!(matches!(err, EnvelopeError::TruncatedCompressed), "{err}");
        let err = open(&stored[..stored.len() / 2], true, false, &keys)
            .await
            .unwrap_err();
        assert!(matches!(err, EnvelopeError::TruncatedCompressed), "{err}");
        let err = open(b"", true, false, &keys).await.unwrap_err();
        assert!(matches!(err, EnvelopeError::TruncatedCompressed), "{err}");

        let err = open(&[&stored[..], b"junk"].concat(), true, false, &keys)
            .await
            .unwrap_err();
        assert!(matches!(err, EnvelopeError::TrailingData), "{err}");

        // Bytes that were never brotli: a reserved window size in the very first byte.
        let err = open(&[0x11; 64], true, false, &keys).await.unwrap_err();
        assert!(matches!(err, EnvelopeError::CorruptCompressed), "{err}");
        assert_eq!(err.to_string(), "corrupted compressed data");
        // Random noise fails one way or another, never quietly.
        for seed in 0..20 {
            let noise = random_bytes(4096, seed);
            assert!(
                open(&noise, true, false, &keys).await.is_err(),
                "seed {seed}"
            );
        }
    }

    #[tokio::test]
    async fn output_starts_after_a_few_input_pieces() {
        const PIECE: usize = 64 * 1024;
        let keys = ring(&["k1"], "k1");
        let plain = random_bytes(20 << 20, 11);
        for compress in [false, true] {
            let stored = seal(&plain, compress, Some(&keys)).unwrap();
            assert!(stored.len() > 20 << 20);
            let pulled = Arc::new(AtomicUsize::new(0));
            let counter = pulled.clone();
            let input = pieces(&stored, PIECE).inspect(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            });
            let mut output = open_stream(input, compress, true, keys.clone());

            let first = output.next().await.unwrap().unwrap();
            let at_first = pulled.load(Ordering::SeqCst);
            assert!(
                at_first <= 3,
                "compress {compress}: {at_first} pieces pulled first"
            );
            assert!(plain.starts_with(&first));

            // It stays incremental: over the next 4 MiB, the input read never runs more
            // than a few pieces ahead of the output released.
            let mut offset = first.len();
            let mut most_ahead = 0;
            while offset < 4 << 20 {
                let piece = output.next().await.unwrap().unwrap();
                assert!(!piece.is_empty() && piece.len() <= PIECE);
                assert!(plain[offset..].starts_with(&piece));
                offset += piece.len();
                let read = pulled.load(Ordering::SeqCst) * PIECE;
                most_ahead = most_ahead.max(read.saturating_sub(offset));
            }
            assert!(most_ahead <= 3 * PIECE, "{most_ahead} bytes read ahead");
        }
    }
}
