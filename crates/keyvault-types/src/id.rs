//! Secret identifiers: `{scheme}://{host[:port]}/secrets/{name}[/{version}]` (also `/deletedsecrets/{name}`).

use std::fmt;

/// A parsed secret identifier.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretId {
    /// The identifier as given.
    pub source_id: String,
    /// `scheme://host[:port]`, without a trailing slash.
    pub vault_url: String,
    /// The collection: `secrets` or `deletedsecrets`.
    pub collection: String,
    pub name: String,
    pub version: Option<String>,
}

/// Why a string is not a secret identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretIdError {
    pub id: String,
    pub reason: &'static str,
}

impl fmt::Display for SecretIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a valid secret identifier: {}",
            self.id, self.reason
        )
    }
}

impl std::error::Error for SecretIdError {}

impl SecretId {
    /// Parse an identifier such as `https://myvault.vault.azure.net/secrets/name/0123…`. Surrounding
    /// whitespace is ignored (and not kept in `source_id`). User information (`user:password@`) is refused,
    /// and the error does not quote it.
    pub fn parse(id: &str) -> Result<SecretId, SecretIdError> {
        let id = id.trim();
        let err = |reason| SecretIdError {
            id: id.to_string(),
            reason,
        };
        // A URL is printable ASCII throughout (RFC 3986: anything else is percent-encoded): an id with a space, a
        // control character or other text in it is no id, and is not passed on (to a terminal, a script).
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                "an identifier is a URL: printable ASCII without spaces or control characters",
            ));
        }
        // As the Python SDK reads an id (`urlparse`): scheme and host in any case (kept in lower case), and empty
        // path segments ignored (`https://v//secrets/n/{version}/` is the same id).
        let (scheme, rest) = id.split_once("://").ok_or_else(|| err("missing scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(err("the scheme must be https"));
        }
        // The authority ends at the first '/', '?' or '#' (a query or fragment right after the host is not part
        // of the host: `https://v?x=/secrets/n` has no path, as Python's `urlparse` reads it).
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (host, path) = rest.split_at(end);
        if host.contains('@') {
            let after = host.rsplit_once('@').map_or("", |(_, h)| h);
            return Err(SecretIdError {
                id: format!("{scheme}://REDACTED@{after}{path}"),
                reason: "user information (user:password@) is not allowed in an identifier",
            });
        }
        let path = path.strip_prefix('/').ok_or_else(|| err("missing path"))?;
        if host.is_empty() {
            return Err(err("missing host"));
        }
        let host = host.to_ascii_lowercase();
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (collection, name, version) = match segments.as_slice() {
            [c, n] => (*c, *n, None),
            [c, n, v] => (*c, *n, Some(*v)),
            _ => return Err(err("expected /secrets/{name}[/{version}]")),
        };
        // In any case, as Key Vault reads its routes (kept in lower case).
        let collection = collection.to_ascii_lowercase();
        if collection != "secrets" && collection != "deletedsecrets" {
            return Err(err("the collection must be 'secrets' or 'deletedsecrets'"));
        }
        if !crate::rules::is_valid_name(name) {
            return Err(err(
                "the name must be 1-127 characters of 0-9, a-z, A-Z and '-'",
            ));
        }
        if let Some(v) = version
            && (collection == "deletedsecrets"
                || v.is_empty()
                || !v.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(err("bad version segment"));
        }
        Ok(SecretId {
            source_id: id.to_string(),
            vault_url: format!("{scheme}://{host}"),
            collection,
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ids_as_the_python_sdk_does() {
        let id = SecretId::parse("HTTPS://KV.Vault.Azure.NET:443//secrets/Name/abc123/").unwrap();
        assert_eq!(id.vault_url, "https://kv.vault.azure.net:443");
        assert_eq!(id.name, "Name");
        assert_eq!(id.version.as_deref(), Some("abc123"));
        let id = SecretId::parse("https://kv.vault.azure.net/secrets/n//").unwrap();
        assert_eq!((id.name.as_str(), id.version), ("n", None));
        for bad in [
            "https://kv/secrets",
            "https://kv/secrets/n/v/extra",
            "ftp://kv/secrets/n",
            "https:///secrets/n",
            // Not printable ASCII: escape sequences in the host or a query, a space, text beyond ASCII.
            "https://evil\u{1b}]0;TITLE\u{7}x/secrets/n/0123abcd",
            "https://kv/secrets/n/0123abcd?\u{1b}[31mRED",
            "https://kv/secrets/n?a b",
            "https://kv\u{202e}/secrets/n",
        ] {
            assert!(SecretId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_versioned_and_unversioned() {
        let id = SecretId::parse(
            "https://kv.vault.azure.net/secrets/n/968bc1b35f5449dfaf7109294020deb5",
        )
        .unwrap();
        assert_eq!(id.vault_url, "https://kv.vault.azure.net");
        assert_eq!(id.name, "n");
        assert_eq!(
            id.version.as_deref(),
            Some("968bc1b35f5449dfaf7109294020deb5")
        );
        let id = SecretId::parse("https://127.0.0.1:8443/secrets/abc").unwrap();
        assert_eq!(id.vault_url, "https://127.0.0.1:8443");
        assert_eq!(id.version, None);
        let id = SecretId::parse("https://kv.vault.azure.net/deletedsecrets/abc").unwrap();
        assert_eq!(id.collection, "deletedsecrets");
        // The collection in any case, as Key Vault reads its paths (a67-5).
        let id = SecretId::parse("https://kv.vault.azure.net/Secrets/abc/v1").unwrap();
        assert_eq!(
            (id.collection.as_str(), id.name.as_str()),
            ("secrets", "abc")
        );
        let id = SecretId::parse("https://kv.vault.azure.net/DeletedSecrets/abc").unwrap();
        assert_eq!(id.collection, "deletedsecrets");
    }

    /// Whitespace around an id is ignored; a query or fragment before any path is not read as part of the host
    /// (the id has no path); user information is refused without being quoted.
    #[test]
    fn whitespace_queries_and_user_information() {
        let id = SecretId::parse("  https://kv.vault.azure.net/secrets/n/abc \n").unwrap();
        assert_eq!(id.vault_url, "https://kv.vault.azure.net");
        assert_eq!(id.version.as_deref(), Some("abc"));
        assert_eq!(id.source_id, "https://kv.vault.azure.net/secrets/n/abc");
        for bad in [
            "https://kv.vault.azure.net?x=/secrets/n",
            "https://kv.vault.azure.net#/secrets/n",
            "https://kv.vault.azure.net?x=/secrets/n/abc",
        ] {
            let e = SecretId::parse(bad).unwrap_err();
            assert_eq!(e.reason, "missing path", "{bad}");
        }
        let e = SecretId::parse("https://user:CANARY-pw@kv.vault.azure.net/secrets/n").unwrap_err();
        assert!(e.reason.contains("user information"), "{e}");
        assert!(!e.to_string().contains("CANARY"), "{e}");
        assert!(
            e.to_string()
                .contains("https://REDACTED@kv.vault.azure.net/secrets/n"),
            "{e}"
        );
        assert!(SecretId::parse("https://@kv.vault.azure.net/secrets/n").is_err());
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "kv.vault.azure.net/secrets/n",
            "https://kv.vault.azure.net/keys/n",
            "https://kv.vault.azure.net/secrets",
            "https://kv.vault.azure.net/secrets/n/v/extra",
            "https://kv.vault.azure.net/secrets/bad_name",
            "ftp://kv/secrets/n",
            "https:///secrets/n",
        ] {
            assert!(SecretId::parse(bad).is_err(), "{bad}");
        }
    }
}
