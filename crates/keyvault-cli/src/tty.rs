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
/// line break is not part of the value); a newline is printed after it. Ctrl-C (or Ctrl-\\, SIGTERM, SIGHUP)
/// ends the command (exit 130) with the terminal restored.
pub async fn read_hidden_line(prompt: &str) -> CliResult<Zeroizing<String>> {
    read_hidden(prompt, Until::LineEnd).await
}

/// [`read_hidden_line`], but everything typed until end of input (Ctrl-D at the start of a line), as is:
/// `--file -` at a terminal (a value of several lines, such as a pasted PEM file).
pub async fn read_hidden_text(prompt: &str) -> CliResult<Zeroizing<String>> {
    read_hidden(prompt, Until::End).await
}

#[derive(Clone, Copy)]
enum Until {
    LineEnd,
    End,
}

async fn read_hidden(prompt: &str, until: Until) -> CliResult<Zeroizing<String>> {
    let fail = |e: std::io::Error| CliError::bad_input(format!("cannot read the terminal: {e}"));
    // Listening for SIGINT (Ctrl-C) from here on, before anything changes: from now on it does not end the
    // process behind our back.
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|e| CliError::other(format!("cannot listen for signals: {e}")))
    };
    // Ctrl-C, Ctrl-\\, a SIGTERM or the terminal going away: each would leave it with echo off.
    let (mut interrupt, mut quit, mut terminate, mut hangup) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::quit())?,
        listen(SignalKind::terminate())?,
        listen(SignalKind::hangup())?,
    );
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
        let mut input = std::io::stdin().lock();
        let read = match until {
            Until::LineEnd => input.read_until(b'\n', &mut line),
            Until::End => std::io::Read::read_to_end(&mut input, &mut line),
        };
        let _ = tx.send(read.map(|_| line));
    });
    let result = tokio::select! {
        read = rx => Some(read.unwrap_or_else(|_| Err(std::io::Error::other("the reader stopped")))),
        _ = interrupt.recv() => None,
        _ = quit.recv() => None,
        _ = terminate.recv() => None,
        _ = hangup.recv() => None,
    };
    let Some(result) = result else {
        drop(restore);
        stderr_line!();
        return Err(CliError::new(
            crate::errors::code::INTERRUPTED,
            "interrupted",
        ));
    };
    drop(restore);
    stderr_line!();
    let mut line = result.map_err(fail)?;
    if let Until::End = until {
        let text = crate::secret::utf8_value(std::mem::take(&mut *line), "the terminal")?;
        return Ok(Zeroizing::new(text));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let text = crate::secret::utf8_value(std::mem::take(&mut *line), "the terminal")?;
    Ok(Zeroizing::new(text))
}
