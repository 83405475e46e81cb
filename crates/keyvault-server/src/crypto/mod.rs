//! Envelope encryption at rest, and backup blob encryption.
//!
//! Every secret version is sealed under its own random 256-bit data key with AES-256-GCM; the data key is
//! wrapped (AES-256-GCM) by the vault's key-encryption key (KEK) from a [`KeyProvider`]. The associated data
//! of both encryptions binds the ciphertext to (format version, KEK id, vault, name key, version), so rows
//! cannot be swapped between names, versions or vaults.
//!
//! Sealed value layout (format 1):
//!
//! ```text
//! [format = 1][kek id len: u8][kek id][wrap nonce: 12][wrapped data key + tag: 48][data nonce: 12][ciphertext + tag]
//! ```
//!
//! Rotation: a provider has one *current* key, which seals every new value, backup blob and listing cursor,
//! and any number of *previous* keys, which only open ([`KeyRing`]). A value names its KEK id in its header
//! and opens under the key with that id; one under an id the provider does not hold fails with
//! [`CryptoError::UnknownKey`], naming the id. Re-sealing a value under the current key means opening it and
//! sealing it again (the KEK id is part of the associated data of both encryptions): `keyvault rekey`.
//!
//! Backup blobs are encrypted under a key derived from the KEK with HKDF-SHA256, so any server holding the
//! same KEK (current or previous) can restore them:
//!
//! ```text
//! ["KVRSBACKUP1"][kek id len: u8][kek id][nonce: 12][ciphertext + tag]      (AAD = everything before the ciphertext)
//! ```
//!
//! Nothing in this module logs, formats or returns key material or plaintext in an error.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

mod audit_mac;
pub use audit_mac::audit_mac_key;

/// Length of a key-encryption key and of a data key, in bytes.
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Format byte of sealed values written by this version.
const FORMAT_V1: u8 = 1;
/// Magic prefix of backup blobs.
const BACKUP_MAGIC: &[u8] = b"KVRSBACKUP1";
/// HKDF info for the backup key.
const BACKUP_INFO: &[u8] = b"keyvault-rs backup v1";
/// HKDF salt for the keys derived from the KEK (fixed: the KEK is already uniformly random).
const BACKUP_SALT: &[u8] = b"keyvault-rs backup salt";
/// HKDF info for the key of listing cursors shown to callers who may not see every name.
const CURSOR_INFO: &[u8] = b"keyvault-rs list cursor v1";
/// HKDF info for the key of the access-control document's integrity tag ([`Envelope::tag_access_doc`]).
const ACCESS_INFO: &[u8] = b"keyvault-rs access document tag v1";
/// Domain labels mixed into the AAD so the wrap and data encryptions can never be confused.
const LABEL_WRAP: &[u8] = b"keyvault-rs wrap";
const LABEL_DATA: &[u8] = b"keyvault-rs data";
/// Largest key file we are willing to read (a key is one line of 64 hex chars).
const MAX_KEY_FILE_LEN: u64 = 1024;

/// Errors of this module. Messages never contain key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The value or blob could not be authenticated/decrypted (tampered, truncated, foreign key, wrong binding).
    #[error("decryption failed")]
    Decrypt,
    /// The input is not a backup blob of a known format.
    #[error("not a valid backup blob")]
    BadBlob,
    /// The key file (or key variable) could not be created, read or accepted.
    #[error("key file: {0}")]
    KeyFile(String),
    /// A new key file was asked for where a file already is (a key file is never overwritten).
    #[error("key file: {0} already exists: a key file is never overwritten")]
    KeyFileExists(String),
    /// A key given in a variable (`KEYVAULT_KEK`, `KEYVAULT_PREVIOUS_KEKS`) is not usable. Never its text.
    #[error("{0}")]
    KeyVariable(String),
    /// The value or blob was sealed under a key-encryption key this provider does not hold (neither the
    /// current key nor a previous one). Names the key id (a hash prefix, not key material).
    #[error(
        "sealed under key-encryption key id {0}, which is not configured (neither the current key nor a previous one)"
    )]
    UnknownKey(String),
    /// The system random number generator failed.
    #[error("random number generator failure")]
    Rng,
    /// This server's current key-encryption key was retired by `keyvault rekey` (another process's): it
    /// seals nothing more ([`Envelope::retire_current`]). Names the key id.
    #[error(
        "this node's key-encryption key (id {0}) was retired by `keyvault rekey`: it seals no new value; restart \
         it with the new key current"
    )]
    Retired(String),
}

/// A 256-bit key-encryption key. Zeroized on drop; `Debug` never shows it.
///
/// It keeps its AES-256-GCM key schedule, built once: every seal and open wraps or unwraps a data key under
/// the KEK, and expanding the key each time cost about as much as the unwrap itself. (ring does not zeroize
/// a schedule when it is dropped; one kept for the key's lifetime leaves fewer copies behind than one built
/// per request.)
#[derive(Clone)]
pub struct Kek {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    aead: LessSafeKey,
}

impl Kek {
    /// Wrap raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("32 bytes make an AES-256 key"),
        );
        Kek { bytes, aead }
    }

    /// The key's id: the first 8 hex characters of SHA-256 of the key.
    pub fn id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.bytes.as_ref());
        hex::encode(&digest.as_ref()[..4])
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    fn aead(&self) -> &LessSafeKey {
        &self.aead
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// Where key-encryption keys come from. `current` seals new values; `get` opens values sealed under any
/// key the provider still knows (so the KEK can be rotated: see [`KeyRing`]).
pub trait KeyProvider: Send + Sync + 'static {
    /// The id and key used to seal new values.
    fn current(&self) -> (&str, &Kek);
    /// The key with this id, if known (the current key or a previous one).
    fn get(&self, kek_id: &str) -> Option<&Kek>;
    /// The ids of the previous keys: they open, never seal. None by default.
    fn previous_ids(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// One fixed key with its id (shared by the file and static providers).
struct SingleKey {
    id: String,
    kek: Kek,
}

impl SingleKey {
    fn new(kek: Kek) -> Self {
        SingleKey { id: kek.id(), kek }
    }

    fn get(&self, kek_id: &str) -> Option<&Kek> {
        (kek_id == self.id).then_some(&self.kek)
    }
}

/// A KEK stored in a local file (one line, hex), created with mode 0600 on first start.
pub struct FileKeyProvider {
    key: SingleKey,
}

impl fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKeyProvider")
            .field("kek_id", &self.key.id)
            .finish_non_exhaustive()
    }
}

impl FileKeyProvider {
    /// Load the key file at `path`, or create it with a fresh random key if it does not exist.
    ///
    /// A new file is written with permissions 0600 from the moment it exists and fsynced (file and
    /// directory) before this returns. An existing file is refused if it is not a regular file, is readable
    /// or writable by group/others, or does not hold exactly one 32-byte key (64 hex chars, or base64).
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path, true),
            Err(e) => Err(key_file_err(path, "cannot inspect", &e)),
        }
    }

    /// The id of the key.
    pub fn kek_id(&self) -> &str {
        &self.key.id
    }

    /// The key itself (for a [`KeyRing`]).
    pub fn kek(&self) -> &Kek {
        &self.key.kek
    }

    /// Load an existing key file (never creates one): a previous key, or the current key of a command that
    /// must not make keys (`keyvault rekey`). The same checks as [`FileKeyProvider::load_or_create`].
    pub fn load_existing(path: &Path) -> Result<Self, CryptoError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CryptoError::KeyFile(
                format!("{} does not exist", path.display()),
            )),
            Err(e) => Err(key_file_err(path, "cannot inspect", &e)),
        }
    }

    /// Create a new key file with a fresh random key (mode 0600, fsynced), refusing if anything is at
    /// `path` already: a key file is never overwritten (the values sealed under it would be lost).
    pub fn create_new(path: &Path) -> Result<Self, CryptoError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Err(CryptoError::KeyFileExists(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path, false),
            Err(e) => Err(key_file_err(path, "cannot inspect", &e)),
        }
    }

    fn load(path: &Path) -> Result<Self, CryptoError> {
        let meta = std::fs::metadata(path).map_err(|e| key_file_err(path, "cannot inspect", &e))?;
        if !meta.is_file() {
            return Err(CryptoError::KeyFile(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        check_private(path, &meta)?;
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(CryptoError::KeyFile(format!(
                "{} is malformed: expected one line holding a 32-byte key",
                path.display()
            )));
        }
        let mut file =
            std::fs::File::open(path).map_err(|e| key_file_err(path, "cannot open", &e))?;
        let mut raw = Zeroizing::new(Vec::new());
        Read::by_ref(&mut file)
            .take(MAX_KEY_FILE_LEN)
            .read_to_end(&mut raw)
            .map_err(|e| key_file_err(path, "cannot read", &e))?;
        // A file of raw key bytes is not text: the same "malformed" answer as any other wrong content.
        let text = std::str::from_utf8(&raw).unwrap_or_default();
        let kek = parse_key_text(text).ok_or_else(|| {
            CryptoError::KeyFile(format!(
                "{} is malformed: expected one line holding a 32-byte key (64 hex characters or base64)",
                path.display()
            ))
        })?;
        Ok(FileKeyProvider {
            key: SingleKey::new(kek),
        })
    }

    /// Write a new key file. `use_existing`: one created by someone else meanwhile is loaded (start-up);
    /// otherwise that is an error (a new key was asked for).
    fn create(path: &Path, use_existing: bool) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| CryptoError::Rng)?;
        let mut line = Zeroizing::new(hex::encode(bytes.as_ref()));
        line.push('\n');

        // Written whole to a temporary file (0600) in the same directory, synced, then linked to `path`: the
        // link is atomic and fails if `path` exists, so a crash never leaves an empty or partial key file.
        let file_name = path.file_name().ok_or_else(|| {
            CryptoError::KeyFile(format!("{} is not a file path", path.display()))
        })?;
        let mut tag = [0u8; 8];
        SystemRandom::new()
            .fill(&mut tag)
            .map_err(|_| CryptoError::Rng)?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(format!(".tmp-{}", hex::encode(tag)));
        let temp = path.with_file_name(temp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(&temp)
            .map_err(|e| key_file_err(path, "cannot create a temporary file beside", &e))?;
        let written = file
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(key_file_err(path, "cannot write", &e));
        }
        let linked = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => {}
            // Someone else created it between our check and now: use theirs (at start-up).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && use_existing => {
                return Self::load(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CryptoError::KeyFileExists(path.display().to_string()));
            }
            Err(e) => return Err(key_file_err(path, "cannot create", &e)),
        }
        sync_parent_dir(path)?;
        let kek = Kek::from_bytes(*bytes);
        tracing::info!(path = %path.display(), kek_id = %kek.id(), "created a new key-encryption key file");
        Ok(FileKeyProvider {
            key: SingleKey::new(kek),
        })
    }
}

impl KeyProvider for FileKeyProvider {
    fn current(&self) -> (&str, &Kek) {
        (&self.key.id, &self.key.kek)
    }
    fn get(&self, kek_id: &str) -> Option<&Kek> {
        self.key.get(kek_id)
    }
}

/// A KEK given directly: from text (e.g. the `KEYVAULT_KEK` environment variable) or raw bytes.
pub struct StaticKeyProvider {
    key: SingleKey,
}

impl fmt::Debug for StaticKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeyProvider")
            .field("kek_id", &self.key.id)
            .finish_non_exhaustive()
    }
}

impl StaticKeyProvider {
    /// A key written as a key file holds it: 64 hex characters (what `kek.key` holds), or standard or
    /// URL-safe base64 (padded or not) of exactly 32 bytes; surrounding whitespace is ignored.
    pub fn from_text(s: &str) -> Result<Self, CryptoError> {
        let kek = parse_key_text(s)
            .ok_or_else(|| CryptoError::KeyVariable(format!("the key must be {KEY_TEXT_FORMS}")))?;
        Ok(StaticKeyProvider {
            key: SingleKey::new(kek),
        })
    }

    /// A provider for these raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        StaticKeyProvider {
            key: SingleKey::new(Kek::from_bytes(bytes)),
        }
    }

    /// The id of the key.
    pub fn kek_id(&self) -> &str {
        &self.key.id
    }

    /// The key itself (for a [`KeyRing`]).
    pub fn kek(&self) -> &Kek {
        &self.key.kek
    }
}

impl KeyProvider for StaticKeyProvider {
    fn current(&self) -> (&str, &Kek) {
        (&self.key.id, &self.key.kek)
    }
    fn get(&self, kek_id: &str) -> Option<&Kek> {
        self.key.get(kek_id)
    }
}

/// A current key-encryption key and the previous ones (rotation). The current key seals every new value,
/// backup blob and cursor; a previous key only opens what was sealed under it. A previous key with the
/// current key's id (the same key listed twice) is dropped, as is a repeated previous key.
pub struct KeyRing {
    current: SingleKey,
    previous: Vec<SingleKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("kek_id", &self.current.id)
            .field("previous", &self.previous_ids())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// A ring sealing under `current` and opening under `current` and `previous`.
    pub fn new(current: Kek, previous: impl IntoIterator<Item = Kek>) -> Self {
        let current = SingleKey::new(current);
        let mut kept: Vec<SingleKey> = Vec::new();
        for kek in previous {
            let key = SingleKey::new(kek);
            if key.id != current.id && kept.iter().all(|k| k.id != key.id) {
                kept.push(key);
            }
        }
        KeyRing {
            current,
            previous: kept,
        }
    }

    /// Previous keys from a comma-separated list of keys, each hex or base64 as [`StaticKeyProvider::from_text`]
    /// reads it (`KEYVAULT_PREVIOUS_KEKS`); empty entries are skipped. The error names the entry's position,
    /// never its text.
    pub fn parse_list(list: &str) -> Result<Vec<Kek>, CryptoError> {
        let mut keys = Vec::new();
        for (i, item) in list.split(',').enumerate() {
            if item.trim().is_empty() {
                continue;
            }
            let provider = StaticKeyProvider::from_text(item).map_err(|_| {
                CryptoError::KeyVariable(format!("entry {} is not {KEY_TEXT_FORMS}", i + 1))
            })?;
            keys.push(provider.key.kek);
        }
        Ok(keys)
    }
}

impl KeyProvider for KeyRing {
    fn current(&self) -> (&str, &Kek) {
        (&self.current.id, &self.current.kek)
    }
    fn get(&self, kek_id: &str) -> Option<&Kek> {
        self.current
            .get(kek_id)
            .or_else(|| self.previous.iter().find_map(|k| k.get(kek_id)))
    }
    fn previous_ids(&self) -> Vec<&str> {
        self.previous.iter().map(|k| k.id.as_str()).collect()
    }
}

/// The integrity tag of an access-control document: HMAC-SHA256 of its exact bytes under a key derived from
/// one KEK (HKDF, for this purpose only), and that KEK's id, so that a document tagged under a previous key
/// still verifies after a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessTag {
    /// The id of the KEK the tag was made under (8 hex digits).
    pub kek_id: String,
    /// The HMAC, base64url without padding.
    pub tag: String,
}

/// The id of the KEK a value from [`Envelope::seal`] was sealed under (None if it is not such a value).
pub fn sealed_kek_id(sealed: &[u8]) -> Option<&str> {
    let mut r = Reader(sealed);
    if r.u8()? != FORMAT_V1 {
        return None;
    }
    let id_len = usize::from(r.u8()?);
    std::str::from_utf8(r.take(id_len)?).ok()
}

/// Seals and opens secret values and backup blobs with keys from a [`KeyProvider`].
#[derive(Clone)]
pub struct Envelope {
    provider: Arc<dyn KeyProvider>,
    rng: SystemRandom,
    /// Set once a rekey retired the current key (shared by clones): [`Envelope::seal`] then refuses.
    retired: Arc<AtomicBool>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("kek_id", &self.provider.current().0)
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// An envelope over this provider.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Envelope {
            provider,
            rng: SystemRandom::new(),
            retired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the current key as retired (a node learnt that `keyvault rekey` retired it): from then on
    /// [`Envelope::seal`] (every new value, restored version or re-seal) and [`Envelope::seal_backup`] fail
    /// with [`CryptoError::Retired`]: a backup made under a retired key would stop restoring once the old key
    /// is removed. Listing cursors are still sealed (they live for a listing, and nothing is stored under them).
    pub fn retire_current(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Whether [`Envelope::retire_current`] was called.
    pub fn current_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The id of the KEK new values are sealed under.
    pub fn current_kek_id(&self) -> &str {
        self.provider.current().0
    }

    /// The ids of the previous KEKs (they open, never seal).
    pub fn previous_kek_ids(&self) -> Vec<&str> {
        self.provider.previous_ids()
    }

    /// Whether a key with this id is configured (current or previous).
    pub fn knows(&self, kek_id: &str) -> bool {
        self.provider.get(kek_id).is_some()
    }

    /// Open a value sealed for (vault, name, version) and seal it again under the current key: a value
    /// under a previous key moves to the current one. (Not a re-wrap of the data key alone: the KEK id is
    /// part of the associated data of the value's own encryption too.)
    pub fn reseal(
        &self,
        vault: &str,
        name_key: &str,
        version: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let plain = self.open(vault, name_key, version, sealed)?;
        self.seal(vault, name_key, version, &plain)
    }

    /// Seal `plaintext` for (vault, name, version). `name_key` is compared case-insensitively: it is
    /// lower-cased (ASCII) before being bound, so the display casing and the name key give the same binding.
    pub fn seal(
        &self,
        vault: &str,
        name_key: &str,
        version: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let (kek_id, kek) = self.provider.current();
        if self.current_retired() {
            return Err(CryptoError::Retired(kek_id.to_owned()));
        }
        let kek_id_bytes = kek_id.as_bytes();
        let kek_id_len = u8::try_from(kek_id_bytes.len())
            .map_err(|_| CryptoError::KeyFile("key id too long".into()))?;
        let name_key = ascii_lowercase(name_key);

        // The data key and both nonces from one call to the system's generator (one system call, not three).
        let mut random = Zeroizing::new([0u8; KEY_LEN + 2 * NONCE_LEN]);
        self.rng
            .fill(random.as_mut())
            .map_err(|_| CryptoError::Rng)?;
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        data_key.copy_from_slice(&random[..KEY_LEN]);
        let mut wrap_nonce = [0u8; NONCE_LEN];
        wrap_nonce.copy_from_slice(&random[KEY_LEN..KEY_LEN + NONCE_LEN]);
        let mut data_nonce = [0u8; NONCE_LEN];
        data_nonce.copy_from_slice(&random[KEY_LEN + NONCE_LEN..]);

        let mut out = Vec::with_capacity(
            2 + kek_id_bytes.len()
                + NONCE_LEN
                + KEY_LEN
                + TAG_LEN
                + NONCE_LEN
                + plaintext.len()
                + TAG_LEN,
        );
        out.push(FORMAT_V1);
        out.push(kek_id_len);
        out.extend_from_slice(kek_id_bytes);

        // Wrap the data key under the KEK.
        let mut aad = binding_aad(LABEL_WRAP, FORMAT_V1, kek_id, vault, &name_key, version);
        let mut wrapped = Zeroizing::new(*data_key);
        let wrap_tag = kek
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(wrap_nonce),
                Aad::from(&aad),
                wrapped.as_mut(),
            )
            .map_err(|_| CryptoError::Decrypt)?;
        out.extend_from_slice(&wrap_nonce);
        out.extend_from_slice(wrapped.as_ref());
        out.extend_from_slice(wrap_tag.as_ref());

        // Encrypt the value under the data key.
        relabel(&mut aad, LABEL_DATA);
        let data_aad = aad;
        out.extend_from_slice(&data_nonce);
        let mut body = Vec::with_capacity(plaintext.len() + TAG_LEN);
        body.extend_from_slice(plaintext);
        let sealed = aead_key(data_key.as_ref())?.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(data_nonce),
            Aad::from(&data_aad),
            &mut body,
        );
        if sealed.is_err() {
            body.zeroize();
            return Err(CryptoError::Decrypt);
        }
        out.append(&mut body);
        data_key.zeroize();
        Ok(out)
    }

    /// Open a value sealed by [`Envelope::seal`] for the same (vault, name, version), under the current key
    /// or a previous one (the value names its KEK id). A KEK id the provider does not hold gives
    /// [`CryptoError::UnknownKey`]; any mismatch, tampering or truncation gives [`CryptoError::Decrypt`].
    pub fn open(
        &self,
        vault: &str,
        name_key: &str,
        version: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut r = Reader(sealed);
        let format = r.u8().ok_or(CryptoError::Decrypt)?;
        if format != FORMAT_V1 {
            return Err(CryptoError::Decrypt);
        }
        let id_len = usize::from(r.u8().ok_or(CryptoError::Decrypt)?);
        let kek_id = std::str::from_utf8(r.take(id_len).ok_or(CryptoError::Decrypt)?)
            .map_err(|_| CryptoError::Decrypt)?;
        let wrap_nonce = r.nonce().ok_or(CryptoError::Decrypt)?;
        let wrapped = r.take(KEY_LEN + TAG_LEN).ok_or(CryptoError::Decrypt)?;
        let data_nonce = r.nonce().ok_or(CryptoError::Decrypt)?;
        let ciphertext = r.rest();
        if ciphertext.len() < TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        let kek = self
            .provider
            .get(kek_id)
            .ok_or_else(|| unknown_key(kek_id))?;
        let name_key = ascii_lowercase(name_key);

        let mut aad = binding_aad(LABEL_WRAP, format, kek_id, vault, &name_key, version);
        let mut key_buf = Zeroizing::new([0u8; KEY_LEN + TAG_LEN]);
        key_buf.copy_from_slice(wrapped);
        let data_key = kek
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(wrap_nonce),
                Aad::from(&aad),
                key_buf.as_mut(),
            )
            .map_err(|_| CryptoError::Decrypt)?;
        if data_key.len() != KEY_LEN {
            return Err(CryptoError::Decrypt);
        }

        relabel(&mut aad, LABEL_DATA);
        let data_aad = aad;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = aead_key(data_key)?
            .open_in_place(
                Nonce::assume_unique_for_key(data_nonce),
                Aad::from(&data_aad),
                &mut buf,
            )
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Encrypt and authenticate a backup payload under the backup key derived from the current KEK.
    pub fn seal_backup(&self, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (kek_id, kek) = self.provider.current();
        if self.current_retired() {
            return Err(CryptoError::Retired(kek_id.to_owned()));
        }
        let kek_id_len = u8::try_from(kek_id.len())
            .map_err(|_| CryptoError::KeyFile("key id too long".into()))?;
        let nonce = self.nonce()?;
        let mut out = Vec::with_capacity(
            BACKUP_MAGIC.len() + 1 + kek_id.len() + NONCE_LEN + payload.len() + TAG_LEN,
        );
        out.extend_from_slice(BACKUP_MAGIC);
        out.push(kek_id_len);
        out.extend_from_slice(kek_id.as_bytes());
        out.extend_from_slice(&nonce);
        let header_len = out.len();
        let mut body = Vec::with_capacity(payload.len() + TAG_LEN);
        body.extend_from_slice(payload);
        let sealed = backup_key(kek)?.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..header_len]),
            &mut body,
        );
        if sealed.is_err() {
            body.zeroize();
            return Err(CryptoError::Decrypt);
        }
        out.append(&mut body);
        Ok(out)
    }

    /// Open a backup blob made under the current key or a previous one. Not a blob (bad magic, truncated
    /// header) → [`CryptoError::BadBlob`]; a KEK id the provider does not hold → [`CryptoError::UnknownKey`];
    /// tampered or truncated body → [`CryptoError::Decrypt`].
    pub fn open_backup(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut r = Reader(blob);
        if r.take(BACKUP_MAGIC.len()) != Some(BACKUP_MAGIC) {
            return Err(CryptoError::BadBlob);
        }
        let id_len = usize::from(r.u8().ok_or(CryptoError::BadBlob)?);
        let kek_id = std::str::from_utf8(r.take(id_len).ok_or(CryptoError::BadBlob)?)
            .map_err(|_| CryptoError::BadBlob)?;
        let nonce = r.nonce().ok_or(CryptoError::BadBlob)?;
        let header_len = blob.len() - r.0.len();
        let body = r.rest();
        if body.len() < TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        let kek = self
            .provider
            .get(kek_id)
            .ok_or_else(|| unknown_key(kek_id))?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = backup_key(kek)?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&blob[..header_len]),
                &mut buf,
            )
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Seals a listing cursor (the name key a page ended at) into opaque URL-safe text, bound to `kind` (which
    /// listing it belongs to), under a key derived from the current KEK: every node sharing the KEK opens it.
    pub fn seal_cursor(&self, kind: &str, cursor: &str) -> Result<String, CryptoError> {
        use base64::Engine;
        let nonce = self.nonce()?;
        let mut buf = Vec::with_capacity(NONCE_LEN + cursor.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        let mut body = cursor.as_bytes().to_vec();
        cursor_key(self.provider.current().1)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kind.as_bytes()),
                &mut body,
            )
            .map_err(|_| CryptoError::Decrypt)?;
        buf.append(&mut body);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
    }

    /// Opens a cursor made by [`Envelope::seal_cursor`] for the same `kind`, under the current key or a
    /// previous one (a cursor handed out just before a rotation still pages on); `None` if it was not
    /// (altered, another listing's, or sealed under a key not configured). A cursor carries no key id: the
    /// keys are tried in turn, the current one first (one or two keys: a rotation's).
    pub fn open_cursor(&self, kind: &str, text: &str) -> Option<String> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let mut r = Reader(&raw);
        let nonce = r.nonce()?;
        let sealed = r.rest();
        let current = self.provider.current().1;
        let previous = self.provider.previous_ids();
        let keys =
            std::iter::once(current).chain(previous.iter().filter_map(|id| self.provider.get(id)));
        for kek in keys {
            let mut body = sealed.to_vec();
            let Ok(key) = cursor_key(kek) else { continue };
            let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kind.as_bytes()),
                &mut body,
            ) else {
                continue;
            };
            let len = plain.len();
            body.truncate(len);
            return String::from_utf8(body).ok();
        }
        None
    }

    /// Tags an access-control document's exact bytes under the current KEK. Refused, as a seal is, once the
    /// current key was retired: a document tagged under it would stop verifying when the old key is removed.
    pub fn tag_access_doc(&self, document: &[u8]) -> Result<AccessTag, CryptoError> {
        let (kek_id, kek) = self.provider.current();
        if self.current_retired() {
            return Err(CryptoError::Retired(kek_id.to_owned()));
        }
        let tag = ring::hmac::sign(&access_key(kek), document);
        Ok(AccessTag {
            kek_id: kek_id.to_owned(),
            tag: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref()),
        })
    }

    /// Checks a tag made by [`Envelope::tag_access_doc`] over `document`, under the key it names (the
    /// current one or a previous one), in constant time. A key id the provider does not hold gives
    /// [`CryptoError::UnknownKey`]; a tag that does not match (or is not one) gives [`CryptoError::Decrypt`].
    pub fn verify_access_doc(&self, tag: &AccessTag, document: &[u8]) -> Result<(), CryptoError> {
        let kek = self
            .provider
            .get(&tag.kek_id)
            .ok_or_else(|| unknown_key(&tag.kek_id))?;
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&tag.tag)
            .map_err(|_| CryptoError::Decrypt)?;
        ring::hmac::verify(&access_key(kek), document, &mac).map_err(|_| CryptoError::Decrypt)
    }

    fn nonce(&self) -> Result<[u8; NONCE_LEN], CryptoError> {
        let mut n = [0u8; NONCE_LEN];
        self.rng.fill(&mut n).map_err(|_| CryptoError::Rng)?;
        Ok(n)
    }
}

/// `s` with ASCII letters lower-cased, borrowed when it has no upper-case letter (names usually have none).
fn ascii_lowercase(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The two bindings of a value differ only in their label, and the labels are as long as each other: the
/// data binding is the wrap binding with its label overwritten (one buffer for both).
const _: () = assert!(LABEL_WRAP.len() == LABEL_DATA.len());

/// Replaces the label of an associated data made by [`binding_aad`] (after its 4-byte length).
fn relabel(aad: &mut [u8], label: &[u8]) {
    aad[4..4 + label.len()].copy_from_slice(label);
}

/// The associated data binding a sealed value: a domain label, then each field length-prefixed (u32 BE).
fn binding_aad(
    label: &[u8],
    format: u8,
    kek_id: &str,
    vault: &str,
    name_key: &str,
    version: &str,
) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(64 + kek_id.len() + vault.len() + name_key.len() + version.len());
    for field in [
        label,
        &[format][..],
        kek_id.as_bytes(),
        vault.as_bytes(),
        name_key.as_bytes(),
        version.as_bytes(),
    ] {
        // Fields longer than u32::MAX cannot occur (names and versions are short); saturate rather than panic.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}

fn unknown_key(kek_id: &str) -> CryptoError {
    // The id comes from stored bytes: shown only if it looks like one of ours (8 hex digits).
    if kek_id.len() == 8 && kek_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        CryptoError::UnknownKey(kek_id.to_owned())
    } else {
        CryptoError::UnknownKey("(malformed)".to_owned())
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, CryptoError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Decrypt)
}

fn backup_key(kek: &Kek) -> Result<LessSafeKey, CryptoError> {
    derived_key(kek, BACKUP_INFO)
}

fn cursor_key(kek: &Kek) -> Result<LessSafeKey, CryptoError> {
    derived_key(kek, CURSOR_INFO)
}

/// The HMAC-SHA256 key of access-document tags, derived from the KEK with HKDF-SHA256 (its own `info`).
fn access_key(kek: &Kek) -> ring::hmac::Key {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, BACKUP_SALT).extract(kek.bytes());
    let info = [ACCESS_INFO];
    match prk.expand(&info, ring::hmac::HMAC_SHA256) {
        Ok(okm) => ring::hmac::Key::from(okm),
        // Unreachable: ring refuses only an output longer than 255 hashes (this one is one hash long).
        Err(_) => unreachable!("HKDF-SHA256 gives a 32-byte key"),
    }
}

/// An AES-256-GCM key derived from the KEK with HKDF-SHA256 for one purpose (`info`).
fn derived_key(kek: &Kek, info: &[u8]) -> Result<LessSafeKey, CryptoError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, BACKUP_SALT).extract(kek.bytes());
    let info = [info];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn nonce(&mut self) -> Option<[u8; NONCE_LEN]> {
        self.take(NONCE_LEN).and_then(|b| b.try_into().ok())
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn decode_base64_key(s: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        if let Ok(v) = engine.decode(s) {
            let v = Zeroizing::new(v);
            if let Ok(arr) = <[u8; KEY_LEN]>::try_from(v.as_slice()) {
                return Some(Zeroizing::new(arr));
            }
        }
    }
    None
}

/// How a key may be written, for messages.
const KEY_TEXT_FORMS: &str = "64 hex characters or the base64 encoding of exactly 32 bytes";

/// The key in a key file or a variable: one line, 64 hex characters (what we write) or base64 of 32 bytes.
fn parse_key_text(text: &str) -> Option<Kek> {
    let t = text.trim();
    if t.is_empty() || t.contains(['\n', '\r']) {
        return None;
    }
    if t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(t, bytes.as_mut()).ok()?;
        return Some(Kek::from_bytes(*bytes));
    }
    decode_base64_key(t).map(|b| Kek::from_bytes(*b))
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), CryptoError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::KeyFile(format!(
            "{} has permissions {mode:03o}: it must not be accessible by group or others (chmod 600)",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), CryptoError> {
    Ok(())
}

fn sync_parent_dir(path: &Path) -> Result<(), CryptoError> {
    #[cfg(unix)]
    crate::store::sqlite::snapshot::sync_dir(path.parent().unwrap_or(Path::new("")))
        .map_err(|e| key_file_err(path, "cannot sync the directory of", &e))?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn key_file_err(path: &Path, what: &str, e: &std::io::Error) -> CryptoError {
    CryptoError::KeyFile(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
