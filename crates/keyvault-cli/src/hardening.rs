//! What the commands that hold keys (`serve`, `rekey`, `kek`), and `snapshot` (the vault's pages: sealed
//! values, names, tags), do to keep them in the process: no core dumps
//! (a crash would write the key-encryption key, client secrets and recent values to disk), no debugger of the
//! same user attaching, no `/proc/PID/environ` (`KEYVAULT_KEK`, a database password) or `/proc/PID/mem` for
//! other processes of the same user. And a warning when the configuration file shows a database password to
//! other users.

use keyvault_server::Config;
use std::path::Path;

/// The variable that keeps core dumps and ptrace allowed (for debugging a crash): `1`, `true`, `yes` or `on`.
pub const ALLOW_CORE_DUMPS_VAR: &str = "KEYVAULT_ALLOW_CORE_DUMPS";

/// Whether the variable's value asks for core dumps.
fn allows_core_dumps(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        ["1", "true", "yes", "on"]
            .iter()
            .any(|yes| v.trim().eq_ignore_ascii_case(yes))
    })
}

/// Turns core dumps off (soft and hard `RLIMIT_CORE` 0) and makes the process non-dumpable
/// (`PR_SET_DUMPABLE` 0: no core even where the limit is ignored, such as a `core_pattern` pipe; ptrace and
/// `/proc/PID/{environ,mem,maps,fd}` only for root), unless [`ALLOW_CORE_DUMPS_VAR`] says otherwise (logged as
/// a warning). Call it before any key is read. A failure is logged, not fatal: the keys are still used.
pub fn protect_process() {
    let opt_out = std::env::var(ALLOW_CORE_DUMPS_VAR).ok();
    if allows_core_dumps(opt_out.as_deref()) {
        tracing::warn!(
            "{ALLOW_CORE_DUMPS_VAR} is set: core dumps and ptrace stay allowed, and a crash may write the \
             key-encryption key, client secrets and secret values to a core file; unset it outside debugging"
        );
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{
            DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit,
        };
        let none = Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        if let Err(e) = setrlimit(Resource::Core, none) {
            tracing::warn!(error = %e, "could not turn core dumps off (RLIMIT_CORE)");
        }
        if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
            tracing::warn!(error = %e, "could not make the process non-dumpable (PR_SET_DUMPABLE)");
        }
    }
}

/// Warns when the configuration file `path` (parsed as `config`) holds a password in its `store` URL and is
/// readable by group or others: the file is the place for that password only when it is private.
pub fn warn_if_config_exposes_password(path: &Path, config: &Config) {
    let Some(store) = &config.store else {
        return;
    };
    if !keyvault_server::config::has_password(&store.0) {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o044 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "the configuration file holds the store's password and is readable by group or others; \
                     chmod 600 it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::allows_core_dumps;

    #[test]
    fn only_a_yes_allows_core_dumps() {
        for yes in ["1", "true", "YES", " on "] {
            assert!(allows_core_dumps(Some(yes)), "{yes}");
        }
        for no in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("no"),
            Some("2"),
        ] {
            assert!(!allows_core_dumps(no), "{no:?}");
        }
    }
}
