//! Reading a secret typed at a terminal: a prompt on standard error and no echo, with the terminal's settings
//! put back on every path (a read error, Ctrl-C).

use crate::errors::{CliError, CliResult};
use rustix::termios::{LocalModes, OptionalActions, Termios, tcgetattr, tcsetattr};
use std::io::{BufRead, IsTerminal, Write};
use zeroize::Zeroizing;

/// Whether standard input is a terminal (where a typed value should not be echoed).
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Puts the terminal's settings back when dropped.
struct Restore(Termios);

impl Drop for Restore {
    fn drop(&mut self) {
        // Nothing better to do if the terminal is gone.
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}

/// Print `prompt` on standard error and read one line from the terminal on standard input with echo off (the
/// line break is not part of the value); a newline is printed after it. Ctrl-C ends the command (exit 130)
/// with the terminal restored.
pub async fn read_hidden_line(prompt: &str) -> CliResult<Zeroizing<String>> {
    let fail = |e: std::io::Error| CliError::bad_input(format!("cannot read the terminal: {e}"));
    // Listening for SIGINT (Ctrl-C) from here on, before anything changes: from now on it does not end the
    // process behind our back.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::other(format!("cannot listen for Ctrl-C: {e}")))?;
    let saved = tcgetattr(std::io::stdin()).map_err(|e| fail(e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    // Echo off before the prompt: whatever is typed once it shows is not echoed.
    tcsetattr(std::io::stdin(), OptionalActions::Now, &quiet).map_err(|e| fail(e.into()))?;
    let restore = Restore(saved);
    stderr_text!("{prompt}");
    let _ = std::io::stderr().flush();
    // Ctrl-C delivers SIGINT while the read blocks: the read runs on its own thread (left behind, blocked, if
    // the command ends first), and the signal is awaited here so the terminal is restored before exiting.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = Zeroizing::new(Vec::new());
        let read = std::io::stdin().lock().read_until(b'\n', &mut line);
        let _ = tx.send(read.map(|_| line));
    });
    let result = tokio::select! {
        read = rx => read.unwrap_or_else(|_| Err(std::io::Error::other("the reader stopped"))),
        _ = interrupt.recv() => {
            drop(restore);
            stderr_line!();
            return Err(CliError::new(crate::errors::code::INTERRUPTED, "interrupted"));
        }
    };
    drop(restore);
    stderr_line!();
    let mut line = result.map_err(fail)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let text = crate::secret::utf8_value(std::mem::take(&mut *line), "the terminal")?;
    Ok(Zeroizing::new(text))
}
