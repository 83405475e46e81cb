use super::*;

fn envelope_with(bytes: [u8; KEY_LEN]) -> Envelope {
    Envelope::new(Arc::new(StaticKeyProvider::from_bytes(bytes)))
}

fn envelope() -> Envelope {
    envelope_with([7u8; KEY_LEN])
}

const V: &str = "vault1";
const N: &str = "my-secret";
const VER: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn round_trip() {
    let env = envelope();
    for plaintext in [&b""[..], b"x", b"hello world", &[0u8; 4096][..]] {
        let sealed = env.seal(V, N, VER, plaintext).unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(
            sealed.len(),
            2 + 8 + NONCE_LEN + KEY_LEN + TAG_LEN + NONCE_LEN + plaintext.len() + TAG_LEN
        );
        if plaintext.len() > 8 && plaintext.iter().any(|&b| b != 0) {
            assert!(
                !sealed.windows(plaintext.len()).any(|w| w == plaintext),
                "plaintext visible"
            );
        }
        let opened = env.open(V, N, VER, &sealed).unwrap();
        assert_eq!(opened.as_slice(), plaintext);
    }
}

#[test]
fn name_binding_is_case_insensitive() {
    let env = envelope();
    let sealed = env.seal(V, "My-Secret", VER, b"v").unwrap();
    assert_eq!(
        env.open(V, "my-secret", VER, &sealed).unwrap().as_slice(),
        b"v"
    );
    assert_eq!(
        env.open(V, "MY-SECRET", VER, &sealed).unwrap().as_slice(),
        b"v"
    );
}

#[test]
fn binding_mismatch_fails() {
    let env = envelope();
    let sealed = env.seal(V, N, VER, b"value").unwrap();
    assert!(matches!(
        env.open("vault2", N, VER, &sealed),
        Err(CryptoError::Decrypt)
    ));
    assert!(matches!(
        env.open(V, "other", VER, &sealed),
        Err(CryptoError::Decrypt)
    ));
    assert!(matches!(
        env.open(V, N, "00000000000000000000000000000000", &sealed),
        Err(CryptoError::Decrypt)
    ));
    // Length prefixes make field boundaries unambiguous.
    let a = env.seal("ab", "c", VER, b"value").unwrap();
    assert!(env.open("a", "bc", VER, &a).is_err());
}

#[test]
fn every_byte_flip_fails() {
    let env = envelope();
    let sealed = env.seal(V, N, VER, b"some secret value").unwrap();
    for i in 0..sealed.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = sealed.clone();
            t[i] ^= bit;
            // A flip in the key id (or its length) names a key this envelope does not hold.
            let header = 1..2 + 8;
            assert!(
                match env.open(V, N, VER, &t) {
                    Err(CryptoError::Decrypt) => true,
                    Err(CryptoError::UnknownKey(_)) => header.contains(&i),
                    _ => false,
                },
                "flip at {i}"
            );
        }
    }
}

#[test]
fn truncation_and_extension_fail() {
    let env = envelope();
    let sealed = env.seal(V, N, VER, b"some secret value").unwrap();
    for len in 0..sealed.len() {
        assert!(
            matches!(
                env.open(V, N, VER, &sealed[..len]),
                Err(CryptoError::Decrypt)
            ),
            "len {len}"
        );
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(env.open(V, N, VER, &longer).is_err());
}

#[test]
fn garbage_fails_without_panic() {
    let env = envelope();
    let rng = SystemRandom::new();
    assert!(env.open(V, N, VER, &[]).is_err());
    assert!(env.open_backup(&[]).is_err());
    for len in 0..300usize {
        let mut buf = vec![0u8; len];
        rng.fill(&mut buf).unwrap();
        assert!(env.open(V, N, VER, &buf).is_err());
        assert!(env.open_backup(&buf).is_err());
        // Plausible headers followed by garbage.
        if len > 2 {
            buf[0] = FORMAT_V1;
            buf[1] = 8;
            assert!(env.open(V, N, VER, &buf).is_err());
        }
        let mut blob = BACKUP_MAGIC.to_vec();
        blob.extend_from_slice(&buf);
        assert!(env.open_backup(&blob).is_err());
    }
}

#[test]
fn seals_differ() {
    let env = envelope();
    let a = env.seal(V, N, VER, b"same").unwrap();
    let b = env.seal(V, N, VER, b"same").unwrap();
    assert_ne!(a, b);
    let a = env.seal_backup(b"same").unwrap();
    let b = env.seal_backup(b"same").unwrap();
    assert_ne!(a, b);
}

#[test]
fn unknown_kek_fails() {
    let a = envelope_with([1u8; KEY_LEN]);
    let b = envelope_with([2u8; KEY_LEN]);
    let sealed = a.seal(V, N, VER, b"value").unwrap();
    let err = b.open(V, N, VER, &sealed).unwrap_err();
    let a_id = a.current_kek_id().to_string();
    assert!(
        matches!(&err, CryptoError::UnknownKey(id) if *id == a_id),
        "{err:?}"
    );
    // The message names the key id, and nothing of either key.
    let text = err.to_string();
    assert!(
        text.contains(&a_id) && text.contains("not configured"),
        "{text}"
    );
    assert!(!text.contains("0101") && !text.contains("0202"), "{text}");
    // So does a backup blob under another key.
    let blob = a.seal_backup(b"payload").unwrap();
    assert!(matches!(b.open_backup(&blob), Err(CryptoError::UnknownKey(id)) if id == a_id));
}

/// An envelope sealing under `current` and opening under `current` and `previous`.
fn ring(current: u8, previous: &[u8]) -> Envelope {
    Envelope::new(Arc::new(KeyRing::new(
        Kek::from_bytes([current; KEY_LEN]),
        previous.iter().map(|b| Kek::from_bytes([*b; KEY_LEN])),
    )))
}

#[test]
fn previous_keys_open_values_backups_and_cursors() {
    let old = envelope_with([1u8; KEY_LEN]);
    let value = old.seal(V, N, VER, b"sealed under the old key").unwrap();
    let blob = old.seal_backup(b"backup under the old key").unwrap();
    let cursor = old.seal_cursor("secrets", "name-17").unwrap();

    let rotated = ring(2, &[1]);
    assert_eq!(rotated.previous_kek_ids(), vec![old.current_kek_id()]);
    assert!(rotated.knows(old.current_kek_id()));
    assert_eq!(
        rotated.open(V, N, VER, &value).unwrap().as_slice(),
        b"sealed under the old key"
    );
    assert_eq!(
        rotated.open_backup(&blob).unwrap().as_slice(),
        b"backup under the old key"
    );
    assert_eq!(
        rotated.open_cursor("secrets", &cursor).as_deref(),
        Some("name-17")
    );
    // Still bound: another listing's cursor, another name's value.
    assert_eq!(rotated.open_cursor("deleted", &cursor), None);
    assert!(matches!(
        rotated.open(V, "other", VER, &value),
        Err(CryptoError::Decrypt)
    ));
    // A previous key among several, in any position.
    let many = ring(3, &[9, 1, 8]);
    assert_eq!(
        many.open(V, N, VER, &value).unwrap().as_slice(),
        b"sealed under the old key"
    );
}

#[test]
fn previous_keys_never_seal() {
    let rotated = ring(2, &[1]);
    let current_id = envelope_with([2u8; KEY_LEN]).current_kek_id().to_string();
    let old_only = envelope_with([1u8; KEY_LEN]);
    assert_eq!(rotated.current_kek_id(), current_id);

    let value = rotated.seal(V, N, VER, b"new").unwrap();
    assert_eq!(sealed_kek_id(&value), Some(current_id.as_str()));
    assert!(matches!(
        old_only.open(V, N, VER, &value),
        Err(CryptoError::UnknownKey(_))
    ));

    let blob = rotated.seal_backup(b"new backup").unwrap();
    assert!(matches!(
        old_only.open_backup(&blob),
        Err(CryptoError::UnknownKey(_))
    ));
    assert!(envelope_with([2u8; KEY_LEN]).open_backup(&blob).is_ok());

    let cursor = rotated.seal_cursor("secrets", "n").unwrap();
    assert_eq!(old_only.open_cursor("secrets", &cursor), None);
    assert_eq!(
        envelope_with([2u8; KEY_LEN])
            .open_cursor("secrets", &cursor)
            .as_deref(),
        Some("n")
    );
}

#[test]
fn reseal_moves_a_value_to_the_current_key() {
    let old = envelope_with([1u8; KEY_LEN]);
    let value = old.seal(V, N, VER, b"moving").unwrap();
    let rotated = ring(2, &[1]);
    let moved = rotated.reseal(V, N, VER, &value).unwrap();
    assert_eq!(sealed_kek_id(&moved), Some(rotated.current_kek_id()));
    // The new key alone opens it; the old key alone no longer does.
    let new_only = envelope_with([2u8; KEY_LEN]);
    assert_eq!(
        new_only.open(V, N, VER, &moved).unwrap().as_slice(),
        b"moving"
    );
    assert!(old.open(V, N, VER, &moved).is_err());
    // Bound as before: the re-sealed value opens for its own (vault, name, version) only.
    assert!(
        new_only
            .open(V, N, "00000000000000000000000000000000", &moved)
            .is_err()
    );
    // Re-sealing needs the value's key.
    let stranger = envelope_with([5u8; KEY_LEN]).seal(V, N, VER, b"x").unwrap();
    assert!(matches!(
        rotated.reseal(V, N, VER, &stranger),
        Err(CryptoError::UnknownKey(_))
    ));
}

#[test]
fn key_ring_drops_repeated_keys() {
    let r = KeyRing::new(
        Kek::from_bytes([2u8; KEY_LEN]),
        [[2u8; KEY_LEN], [1u8; KEY_LEN], [1u8; KEY_LEN]].map(Kek::from_bytes),
    );
    assert_eq!(r.previous_ids(), vec![Kek::from_bytes([1u8; KEY_LEN]).id()]);
    let shown = format!("{r:?}");
    assert!(!shown.contains("0101") && !shown.contains("[1,"), "{shown}");
}

#[test]
fn previous_keys_from_a_base64_list() {
    use base64::engine::general_purpose::STANDARD;
    let list = format!(
        " {} ,,{}",
        STANDARD.encode([1u8; 32]),
        STANDARD.encode([2u8; 32])
    );
    let keys = KeyRing::parse_list(&list).unwrap();
    let ids: Vec<String> = keys.iter().map(Kek::id).collect();
    assert_eq!(
        ids,
        vec![
            Kek::from_bytes([1u8; 32]).id(),
            Kek::from_bytes([2u8; 32]).id()
        ]
    );
    assert!(KeyRing::parse_list("").unwrap().is_empty());
    let bad = format!("{},c2VjcmV0", STANDARD.encode([1u8; 32]));
    let err = KeyRing::parse_list(&bad).unwrap_err().to_string();
    assert!(
        err.contains("entry 2") && !err.contains("c2VjcmV0"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_new_key_file_never_overwrites() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.key");
    let made = FileKeyProvider::create_new(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&path).unwrap();
    let err = FileKeyProvider::create_new(&path).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        FileKeyProvider::load_existing(&path).unwrap().kek_id(),
        made.kek_id()
    );
    let missing = FileKeyProvider::load_existing(&dir.path().join("none.key")).unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    assert!(!dir.path().join("none.key").exists());
}

/// A new key file appears whole or not at all (written to a temporary file, then linked): nothing but the
/// key file is left in the directory, a complete key opens, and a second start-up creation uses it.
#[cfg(unix)]
#[test]
fn a_new_key_file_appears_whole_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    let made = FileKeyProvider::create_new(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("k.key")]);
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 64);
    assert!(matches!(
        FileKeyProvider::create_new(&path),
        Err(CryptoError::KeyFileExists(_))
    ));
    let again = FileKeyProvider::load_or_create(&path).unwrap();
    assert_eq!(again.kek_id(), made.kek_id());
    let fresh = FileKeyProvider::load_or_create(&dir.path().join("fresh.key")).unwrap();
    assert_ne!(fresh.kek_id(), made.kek_id());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// A key in a variable that is not usable is named by its position, never as a "key file".
#[test]
fn variable_key_errors_do_not_say_key_file() {
    let err = KeyRing::parse_list(",nope").unwrap_err().to_string();
    assert!(err.starts_with("entry 2 is not"), "{err}");
    let err = StaticKeyProvider::from_text("nope")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("key file"), "{err}");
}

#[test]
fn backup_round_trip_and_rejections() {
    let env = envelope();
    let payload = br#"{"versions":[1,2,3]}"#;
    let blob = env.seal_backup(payload).unwrap();
    assert!(blob.starts_with(BACKUP_MAGIC));
    assert_eq!(env.open_backup(&blob).unwrap().as_slice(), payload);
    // Another server with the same KEK restores it.
    assert_eq!(envelope().open_backup(&blob).unwrap().as_slice(), payload);
    // A different KEK does not.
    assert!(matches!(
        envelope_with([9u8; KEY_LEN]).open_backup(&blob),
        Err(CryptoError::UnknownKey(_))
    ));
    // Every bit flip is rejected.
    for i in 0..blob.len() {
        let mut t = blob.clone();
        t[i] ^= 0x01;
        let r = env.open_backup(&t);
        assert!(
            matches!(
                r,
                Err(CryptoError::Decrypt | CryptoError::BadBlob | CryptoError::UnknownKey(_))
            ),
            "flip at {i}"
        );
    }
    for len in 0..blob.len() {
        assert!(env.open_backup(&blob[..len]).is_err(), "len {len}");
    }
    // A sealed value is not a backup blob, and vice versa.
    let sealed = env.seal(V, N, VER, payload).unwrap();
    assert!(matches!(
        env.open_backup(&sealed),
        Err(CryptoError::BadBlob)
    ));
    assert!(env.open(V, N, VER, &blob).is_err());
}

#[test]
fn backup_key_differs_from_kek() {
    // A blob must not open as if it were sealed directly under the KEK.
    let kek = Kek::from_bytes([7u8; KEY_LEN]);
    let derived = backup_key(&kek).unwrap();
    let direct = aead_key(kek.bytes()).unwrap();
    let nonce = [0u8; NONCE_LEN];
    let mut a = b"probe".to_vec();
    let mut b = b"probe".to_vec();
    derived
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut a)
        .unwrap();
    direct
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut b)
        .unwrap();
    assert_ne!(a, b);
}

#[test]
fn debug_is_redacted() {
    let kek = Kek::from_bytes([0xAB; KEY_LEN]);
    assert_eq!(format!("{kek:?}"), "Kek(<redacted>)");
    let p = StaticKeyProvider::from_bytes([0xAB; KEY_LEN]);
    let shown = format!("{p:?} {:?}", envelope());
    assert!(!shown.contains("abab") && !shown.contains("171"), "{shown}");
}

#[test]
fn kek_id_is_sha256_prefix() {
    let kek = Kek::from_bytes([0u8; KEY_LEN]);
    // SHA-256 of 32 zero bytes = 66687aadf862bd77...
    assert_eq!(kek.id(), "66687aad");
}

#[test]
fn static_provider_base64_or_hex() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let bytes: [u8; KEY_LEN] = std::array::from_fn(|i| (i * 37 + 250) as u8);
    let a = StaticKeyProvider::from_text(&STANDARD.encode(bytes)).unwrap();
    let b = StaticKeyProvider::from_text(&format!(" {}\n", URL_SAFE_NO_PAD.encode(bytes))).unwrap();
    assert_eq!(a.kek_id(), b.kek_id());
    assert_eq!(a.current().1.bytes(), &bytes);
    // As a key file holds it (64 hex characters, either case).
    let h = StaticKeyProvider::from_text(&format!("{}\n", hex::encode_upper(bytes))).unwrap();
    assert_eq!(h.kek_id(), a.kek_id());
    assert!(StaticKeyProvider::from_text(&hex::encode(&bytes[..31])).is_err());
    assert!(matches!(
        StaticKeyProvider::from_text(&STANDARD.encode([1u8; 31])),
        Err(CryptoError::KeyVariable(_))
    ));
    assert!(StaticKeyProvider::from_text("not base64!").is_err());
    assert!(StaticKeyProvider::from_text("").is_err());
}

#[cfg(unix)]
#[test]
fn key_file_created_private_and_reloaded() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    let created = FileKeyProvider::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert!(text.ends_with('\n'));
    let reloaded = FileKeyProvider::load_or_create(&path).unwrap();
    assert_eq!(created.kek_id(), reloaded.kek_id());
    assert_eq!(created.current().1.bytes(), reloaded.current().1.bytes());
    // What one seals, the reloaded provider opens.
    let a = Envelope::new(Arc::new(created));
    let b = Envelope::new(Arc::new(reloaded));
    let sealed = a.seal(V, N, VER, b"persisted").unwrap();
    assert_eq!(b.open(V, N, VER, &sealed).unwrap().as_slice(), b"persisted");
    // A second fresh file gets a different key.
    let other = FileKeyProvider::load_or_create(&dir.path().join("kek2")).unwrap();
    assert_ne!(other.kek_id(), b.current_kek_id());
}

#[cfg(unix)]
#[test]
fn key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    FileKeyProvider::load_or_create(&path).unwrap();
    for mode in [0o640, 0o604, 0o660, 0o606] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        match FileKeyProvider::load_or_create(&path) {
            Err(CryptoError::KeyFile(msg)) => assert!(msg.contains("chmod 600"), "{msg}"),
            other => panic!("mode {mode:o}: {other:?}"),
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(FileKeyProvider::load_or_create(&path).is_ok());
}

#[cfg(unix)]
#[test]
fn malformed_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    let secret_like = "a".repeat(63);
    let raw_key: Vec<u8> = (0..32u8).map(|b| b.wrapping_mul(37) | 0x80).collect();
    let zeros = "0".repeat(2000);
    let cases: [&[u8]; 7] = [
        b"",
        b"\n",
        b"zz",
        secret_like.as_bytes(),
        b"00\n11",
        zeros.as_bytes(),
        // 32 raw key bytes (not UTF-8): malformed like the rest, not an I/O error.
        &raw_key,
    ];
    for content in cases {
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        match FileKeyProvider::load_or_create(&path) {
            Err(CryptoError::KeyFile(msg)) => {
                assert!(msg.contains("malformed"), "{msg}");
                assert!(!msg.contains(&secret_like), "error must not echo the file");
            }
            other => panic!("{other:?}"),
        }
    }
    // A base64 key written by an operator is accepted.
    use base64::engine::general_purpose::STANDARD;
    std::fs::write(&path, format!("{}\n", STANDARD.encode([5u8; KEY_LEN]))).unwrap();
    let p = FileKeyProvider::load_or_create(&path).unwrap();
    assert_eq!(p.current().1.bytes(), &[5u8; KEY_LEN]);
    // A directory is not a key file.
    assert!(matches!(
        FileKeyProvider::load_or_create(dir.path()),
        Err(CryptoError::KeyFile(_))
    ));
}

/// Format 1 written out by hand (independently of `seal` and `open`): the data key wrapped under the KEK with
/// the wrap binding, the value under the data key with the data binding, each binding every field
/// length-prefixed. Values stored by earlier builds must keep opening, and `seal` must keep writing this.
fn reference_aad(label: &[u8], kek_id: &str, name_key: &str) -> Vec<u8> {
    let mut aad = Vec::new();
    for field in [
        label,
        &[FORMAT_V1][..],
        kek_id.as_bytes(),
        V.as_bytes(),
        name_key.as_bytes(),
        VER.as_bytes(),
    ] {
        aad.extend_from_slice(&(field.len() as u32).to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}

#[test]
fn format_v1_is_stable() {
    let kek_bytes = [7u8; KEY_LEN];
    let env = envelope_with(kek_bytes);
    let kek_id = env.current_kek_id().to_string();
    let key = |bytes: &[u8]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).unwrap());
    let (data_key, wrap_nonce, data_nonce) = ([3u8; KEY_LEN], [1u8; NONCE_LEN], [2u8; NONCE_LEN]);

    // Sealed by hand → opened by `open`, whatever the casing of the name asked for.
    let mut wrapped = data_key.to_vec();
    key(&kek_bytes)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(wrap_nonce),
            Aad::from(reference_aad(b"keyvault-rs wrap", &kek_id, "my-secret")),
            &mut wrapped,
        )
        .unwrap();
    let mut body = b"the value".to_vec();
    key(&data_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(data_nonce),
            Aad::from(reference_aad(b"keyvault-rs data", &kek_id, "my-secret")),
            &mut body,
        )
        .unwrap();
    let mut sealed = vec![FORMAT_V1, kek_id.len() as u8];
    sealed.extend_from_slice(kek_id.as_bytes());
    sealed.extend_from_slice(&wrap_nonce);
    sealed.extend_from_slice(&wrapped);
    sealed.extend_from_slice(&data_nonce);
    sealed.extend_from_slice(&body);
    for name in ["my-secret", "My-Secret"] {
        assert_eq!(
            env.open(V, name, VER, &sealed).unwrap().as_slice(),
            b"the value"
        );
    }

    // Sealed by `seal` → opened by hand.
    let sealed = env.seal(V, "My-Secret", VER, b"another value").unwrap();
    let rest = &sealed[2 + kek_id.len()..];
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (wrapped, rest) = rest.split_at(KEY_LEN + TAG_LEN);
    let (nonce2, ciphertext) = rest.split_at(NONCE_LEN);
    let mut wrapped = wrapped.to_vec();
    let data_key = key(&kek_bytes)
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).unwrap(),
            Aad::from(reference_aad(b"keyvault-rs wrap", &kek_id, "my-secret")),
            &mut wrapped,
        )
        .unwrap()
        .to_vec();
    let mut ciphertext = ciphertext.to_vec();
    let value = key(&data_key)
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce2).unwrap(),
            Aad::from(reference_aad(b"keyvault-rs data", &kek_id, "my-secret")),
            &mut ciphertext,
        )
        .unwrap();
    assert_eq!(value, b"another value");
}

#[test]
fn access_doc_tags_verify_under_current_and_previous_keys_only() {
    let doc = br#"{"principals":[],"assignments":[],"roles":[]}"#;
    let old = ring(1, &[]);
    let tag = old.tag_access_doc(doc).unwrap();
    assert_eq!(tag.kek_id, old.current_kek_id());
    old.verify_access_doc(&tag, doc).unwrap();
    // After a rotation: the old key as a previous one still verifies; new tags are under the new key.
    let rotated = ring(2, &[1]);
    rotated.verify_access_doc(&tag, doc).unwrap();
    let new_tag = rotated.tag_access_doc(doc).unwrap();
    assert_eq!(new_tag.kek_id, rotated.current_kek_id());
    assert_ne!(new_tag.tag, tag.tag);
    // Without the old key: its id is unknown.
    let without = ring(2, &[]);
    assert!(matches!(
        without.verify_access_doc(&tag, doc),
        Err(CryptoError::UnknownKey(id)) if id == old.current_kek_id()
    ));
    // Another document, a byte changed, another tag, a tag under another key named as this one's: refused.
    let mut changed = doc.to_vec();
    changed[3] ^= 1;
    assert!(matches!(
        old.verify_access_doc(&tag, &changed),
        Err(CryptoError::Decrypt)
    ));
    let forged = AccessTag {
        kek_id: tag.kek_id.clone(),
        tag: new_tag.tag.clone(),
    };
    assert!(matches!(
        rotated.verify_access_doc(&forged, doc),
        Err(CryptoError::Decrypt)
    ));
    for bad in ["", "not base64!", "AAAA"] {
        let t = AccessTag {
            kek_id: tag.kek_id.clone(),
            tag: bad.into(),
        };
        assert!(old.verify_access_doc(&t, doc).is_err(), "{bad}");
    }
    // The tag's key is its own: not the KEK, not the backup or cursor key (an HMAC under those differs).
    let raw = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1u8; KEY_LEN]),
        doc,
    );
    assert_ne!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()),
        tag.tag
    );
    // A retired current key tags nothing more.
    old.retire_current();
    assert!(matches!(
        old.tag_access_doc(doc),
        Err(CryptoError::Retired(_))
    ));
}
