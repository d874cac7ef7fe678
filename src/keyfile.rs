//! The overlay's pre-shared key and the file that holds it.
//!
//! This module owns [`Psk`], the 32-byte secret that every overlay host shares, its text form
//! (64 lowercase hex digits and a newline, written and parsed by hand here) and the key file on
//! disk: [`write_new`] creates one readable by its owner only (what `overlayd keygen` does), and
//! [`load`] reads one back, turning every failure into an error that tells the user what to do.
//! A key file that other users can read still loads, but [`load`] hands back a warning for the
//! caller to log, because refusing to start would be worse for a lab setup than a loud warning.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::rngs::OsRng;
use rand::RngCore;
use ring::digest;
use thiserror::Error;

/// Length of the key in bytes.
pub const PSK_LEN: usize = 32;

/// Length of the key's hex form.
pub const PSK_HEX_LEN: usize = PSK_LEN * 2;

/// A key file is a line of hex; anything much larger is the wrong file (a video, say), and we
/// would rather say so than read it all into memory.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// The overlay's pre-shared key.
///
/// `Debug` never shows the key bytes; use [`Psk::fingerprint`] to tell keys apart in logs.
#[derive(Clone)]
pub struct Psk([u8; PSK_LEN]);

impl Psk {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Psk {
        let mut key = [0u8; PSK_LEN];
        OsRng.fill_bytes(&mut key);
        Psk(key)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(key: [u8; PSK_LEN]) -> Psk {
        Psk(key)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; PSK_LEN] {
        &self.0
    }

    /// The key as 64 lowercase hex digits (the key file's contents, without the newline).
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Parses the text form: 64 hex digits (either case), optionally surrounded by whitespace
    /// such as the trailing newline an editor adds.
    pub fn from_hex(text: &str) -> Result<Psk, ParsePskError> {
        Psk::from_hex_bytes(text.as_bytes())
    }

    /// Like [`Psk::from_hex`], on raw file contents that may not even be UTF-8.
    pub fn from_hex_bytes(text: &[u8]) -> Result<Psk, ParsePskError> {
        let digits = text.trim_ascii();
        // Offsets in errors count from the start of the input, so they match what an editor
        // shows, not the trimmed slice.
        let lead = text.len() - text.trim_ascii_start().len();
        if digits.is_empty() {
            return Err(ParsePskError::Empty);
        }
        if let Some(pos) = digits.iter().position(|b| hex_value(*b).is_none()) {
            return Err(ParsePskError::InvalidChar {
                byte: digits[pos],
                offset: lead + pos,
            });
        }
        if digits.len() != PSK_HEX_LEN {
            return Err(ParsePskError::WrongLength {
                found: digits.len(),
            });
        }
        let mut key = [0u8; PSK_LEN];
        for (out, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
            // Both digits were validated above, so the fallback is never taken.
            let hi = hex_value(pair[0]).unwrap_or(0);
            let lo = hex_value(pair[1]).unwrap_or(0);
            *out = (hi << 4) | lo;
        }
        Ok(Psk(key))
    }

    /// A short, non-secret name for the key (the first 8 bytes of a domain-separated SHA-256 of
    /// it, in hex), so operators can check that two hosts hold the same key without showing it.
    pub fn fingerprint(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"overlayd key fingerprint");
        ctx.update(&self.0);
        encode_hex(&ctx.finish().as_ref()[..8])
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk(fingerprint {})", self.fingerprint())
    }
}

impl FromStr for Psk {
    type Err = ParsePskError;

    fn from_str(s: &str) -> Result<Psk, ParsePskError> {
        Psk::from_hex(s)
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Why a key's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParsePskError {
    #[error("it is empty (expected {PSK_HEX_LEN} hex digits)")]
    Empty,
    #[error("expected {PSK_HEX_LEN} hex digits ({PSK_LEN} bytes), found {found}")]
    WrongLength { found: usize },
    #[error("{} at byte offset {offset} is not a hex digit (expected 0-9 or a-f)", describe_byte(*.byte))]
    InvalidChar { byte: u8, offset: usize },
}

fn describe_byte(byte: u8) -> String {
    match byte {
        b' ' => "a space".to_string(),
        b'\t' => "a tab".to_string(),
        b'\n' | b'\r' => "a line break".to_string(),
        0x21..=0x7e => format!("'{}'", char::from(byte)),
        _ => format!("byte 0x{byte:02x}"),
    }
}

/// A key read from its file, with anything the caller should log about it.
#[derive(Debug)]
pub struct LoadedKey {
    pub psk: Psk,
    /// Problems that did not stop the key from loading (e.g. loose file permissions).
    pub warnings: Vec<String>,
}

/// Why a key file could not be written or read.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error(
        "key file '{}' not found: create one with 'overlayd keygen --out {}' and copy it to every overlay host",
        .path.display(), .path.display()
    )]
    NotFound { path: PathBuf },
    #[error("key file '{}' already exists; refusing to overwrite it without --force", .path.display())]
    AlreadyExists { path: PathBuf },
    #[error("cannot read key file '{}': {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write key file '{}': {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("key file '{}' is too large ({len} bytes) to be a key file; expected one line of {PSK_HEX_LEN} hex digits", .path.display())]
    TooLarge { path: PathBuf, len: u64 },
    #[error("key file '{}' does not hold a valid overlay key: {reason}", .path.display())]
    Invalid {
        path: PathBuf,
        reason: ParsePskError,
    },
}

/// Generates a key and writes it to a new file at `path`, readable and writable by its owner
/// only. An existing file is an error unless `force` is set, since overwriting the overlay's key
/// by accident cuts this host off from all the others.
pub fn write_new(path: &Path, force: bool) -> Result<Psk, KeyFileError> {
    let psk = Psk::generate();
    let write_err = |source: io::Error| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };

    let mut options = fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            write_err(e)
        }
    })?;

    // The mode given at open only applies to a file that did not exist yet; an overwritten one
    // keeps its old mode, so tighten it before any key byte lands in it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
    }

    let mut contents = psk.to_hex();
    contents.push('\n');
    file.write_all(contents.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(psk)
}

/// Reads the key file at `path`.
pub fn load(path: &Path) -> Result<LoadedKey, KeyFileError> {
    let read_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            KeyFileError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            KeyFileError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    };

    let file = fs::File::open(path).map_err(read_err)?;
    let metadata = file.metadata().map_err(read_err)?;
    if metadata.len() > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: metadata.len(),
        });
    }

    let mut contents = Vec::new();
    // The bound also covers files whose size metadata lies (e.g. /dev/zero or a FIFO).
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut contents)
        .map_err(read_err)?;
    if contents.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: contents.len() as u64,
        });
    }

    let psk = Psk::from_hex_bytes(&contents).map_err(|reason| KeyFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    })?;

    let mut warnings = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "key file '{}' is accessible by other users (mode {mode:04o}); restrict it with 'chmod 600 {}'",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(LoadedKey { psk, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "overlayd-keyfile-{}-{name}-{n}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn hex_round_trip() {
        let psk = Psk::generate();
        let hex = psk.to_hex();
        assert_eq!(hex.len(), PSK_HEX_LEN);
        assert_eq!(Psk::from_hex(&hex).unwrap().as_bytes(), psk.as_bytes());
        // Upper case and surrounding whitespace are accepted too.
        let padded = format!("  {}\r\n", hex.to_uppercase());
        assert_eq!(Psk::from_hex(&padded).unwrap().as_bytes(), psk.as_bytes());
    }

    #[test]
    fn hex_known_value() {
        let mut bytes = [0u8; PSK_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(17);
        }
        let hex = Psk::from_bytes(bytes).to_hex();
        assert!(hex.starts_with("00112233445566778899aabbccddeeff"));
        assert_eq!(Psk::from_hex(&hex).unwrap().as_bytes(), &bytes);
    }

    #[test]
    fn bad_hex_is_refused_with_position() {
        let mut text = "ab".repeat(PSK_LEN);
        text.replace_range(10..11, "g");
        let err = Psk::from_hex(&text).unwrap_err();
        assert_eq!(
            err,
            ParsePskError::InvalidChar {
                byte: b'g',
                offset: 10
            }
        );
        assert!(err.to_string().contains("'g'"), "{err}");

        let spaced = format!("{} {}", "ab".repeat(16), "ab".repeat(16));
        let err = Psk::from_hex(&spaced).unwrap_err();
        assert!(err.to_string().contains("a space"), "{err}");

        let err = Psk::from_hex_bytes(&[0xff; PSK_HEX_LEN]).unwrap_err();
        assert!(err.to_string().contains("0xff"), "{err}");
    }

    #[test]
    fn wrong_length_is_refused() {
        let err = Psk::from_hex(&"ab".repeat(PSK_LEN - 1)).unwrap_err();
        assert_eq!(err, ParsePskError::WrongLength { found: 62 });
        assert!(err.to_string().contains("found 62"), "{err}");
        assert_eq!(
            Psk::from_hex(&"ab".repeat(PSK_LEN + 1)).unwrap_err(),
            ParsePskError::WrongLength { found: 66 }
        );
        assert_eq!(Psk::from_hex(" \n").unwrap_err(), ParsePskError::Empty);
    }

    #[test]
    fn debug_does_not_leak_key() {
        let psk = Psk::from_bytes([0xab; PSK_LEN]);
        let shown = format!("{psk:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(shown.contains(&psk.fingerprint()));
        assert_ne!(
            psk.fingerprint(),
            Psk::from_bytes([0xac; PSK_LEN]).fingerprint()
        );
    }

    /// The fingerprint is SHA-256("overlayd key fingerprint" || key), first 8 bytes; the
    /// expected value was computed outside Rust (Python's hashlib), so operators comparing
    /// fingerprints across builds see the same text.
    #[test]
    fn fingerprint_is_the_documented_digest() {
        assert_eq!(
            Psk::from_bytes([7; PSK_LEN]).fingerprint(),
            "2d377e23e1bc1445"
        );
    }

    #[test]
    fn file_round_trip_with_private_mode() {
        let dir = TempDir::new("roundtrip");
        let path = dir.path("overlay.key");
        let psk = write_new(&path, false).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", psk.to_hex()));
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.psk.as_bytes(), psk.as_bytes());
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn write_refuses_to_overwrite_unless_forced() {
        let dir = TempDir::new("overwrite");
        let path = dir.path("overlay.key");
        let first = write_new(&path, false).unwrap();
        let err = write_new(&path, false).unwrap_err();
        assert!(matches!(err, KeyFileError::AlreadyExists { .. }), "{err}");
        assert_eq!(load(&path).unwrap().psk.as_bytes(), first.as_bytes());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let second = write_new(&path, true).unwrap();
        assert_ne!(second.as_bytes(), first.as_bytes());
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.psk.as_bytes(), second.as_bytes());
        // Forcing over a loose file also tightens its mode.
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn missing_file_tells_how_to_create_one() {
        let dir = TempDir::new("missing");
        let path = dir.path("nope.key");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::NotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains("overlayd keygen --out"), "{msg}");
        assert!(msg.contains("nope.key"), "{msg}");
    }

    #[test]
    fn bad_content_names_file_and_reason() {
        let dir = TempDir::new("bad");
        let path = dir.path("bad.key");
        fs::write(&path, "not a key\n").unwrap();
        let err = load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KeyFileError::Invalid { .. }), "{msg}");
        assert!(msg.contains("bad.key"), "{msg}");
        assert!(msg.contains("not a hex digit"), "{msg}");

        fs::write(&path, "abcd\n").unwrap();
        let msg = load(&path).unwrap_err().to_string();
        assert!(msg.contains("found 4"), "{msg}");

        fs::write(&path, vec![b'a'; 10_000]).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::TooLarge { .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_warn_but_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("perm");
        let path = dir.path("loose.key");
        let psk = write_new(&path, false).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.psk.as_bytes(), psk.as_bytes());
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("0644"), "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("chmod 600"));
    }
}
