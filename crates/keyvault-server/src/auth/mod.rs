//! The built-in identity provider and token verification.
//!
//! - [`keys`]: the server's token-signing key (ES256, a PKCS#8 file in the data dir) and its JWK.
//! - [`token`]: issuing JWT access tokens ([`TokenIssuer`]) and verifying them ([`TokenVerifier`]).
//! - [`external`]: trusted external OIDC issuers (ES256/RS256 tokens verified with their JWKS).
//! - [`assertion`]: client assertions at the token endpoint: certificates' signed JWTs and federated tokens
//!   (workload identity) ([`ClientAssertions`]).
//! - `jws`: the JWS header every verification path reads (a `crit` member is refused).
//! - [`clients`]: known OAuth2 clients and their argon2-hashed secrets ([`ClientRegistry`]).
//! - [`policy`]: access control: permissions, roles, assignments and the decision point
//!   ([`Policy::authorize`]).
//! - [`routes`]: the Entra-compatible endpoints: `POST /{tenant}/oauth2/v2.0/token`, OIDC discovery and JWKS.
//!
//! No token, client secret or private key ever appears in an error message, a log line or a `Debug` impl.

pub mod assertion;
pub mod clients;
pub mod external;
pub(crate) mod jws;
pub mod keys;
pub mod policy;
pub mod routes;
pub mod token;
pub(crate) mod util;

pub use assertion::{ClientAssertions, ClientCertificate, FederatedCredential};
pub use clients::{
    ClientRegistry, configured_assignment_id, generate_client_id, generate_secret, hash_secret,
};
pub use keys::{SigningKey, TOKEN_ALG};
pub use policy::{Assignment, Denied, Operation, Permission, Policy, Role, Scope};
pub use routes::{AuthState, router};
pub use token::{Claims, DEFAULT_TOKEN_LIFETIME_SECS, Principal, TokenIssuer, TokenVerifier};
pub use util::unix_now;

/// Errors of the auth layer. Messages name what went wrong, never the token, a secret or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No bearer token was presented.
    #[error("no access token was presented")]
    MissingToken,
    /// The token was presented but is not acceptable; the reason is a fixed, non-secret phrase.
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),
    /// The signing key could not be loaded, created or used (the message names the file, never its content).
    #[error("signing key: {0}")]
    Key(String),
    /// Hashing a client secret failed.
    #[error("could not hash the client secret")]
    Hash,
    /// A stored client-secret hash is not a valid argon2 PHC string.
    #[error("invalid client secret hash for client '{0}'")]
    InvalidHash(String),
}
