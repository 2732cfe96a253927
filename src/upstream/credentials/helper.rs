//! Running a docker credential helper: `docker-credential-<name> get`
//! from `PATH`, no shell, the environment inherited, the server URL on
//! stdin, `{"ServerURL","Username","Secret"}` on stdout (a `Username` of
//! `<token>` means `Secret` is an identity token).
//!
//! Bounded: [`HELPER_TIMEOUT`] in all, after which the helper is killed;
//! at most [`MAX_HELPER_OUTPUT`] of stdout. What the helper prints on
//! success is never shown; on failure the first line of its message (as
//! docker shows it) goes into the error, cut short.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Credentials;

/// A helper runs at most this long (docker waits on helpers without a
/// bound; a proxy cannot: a hung helper would hold every pull of its
/// upstream). Cloud helpers answer from a metadata server in well under
/// a second.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest stdout read from a helper: its answer is one small JSON object.
pub const MAX_HELPER_OUTPUT: usize = 64 * 1024;
/// Largest stderr kept for the error message; the rest is read and
/// dropped, so a chatty helper never blocks on a full pipe.
const MAX_HELPER_STDERR: usize = 4 * 1024;
/// How often a running helper is checked for having exited.
const POLL: Duration = Duration::from_millis(5);
/// The error message a helper's answer is cut to.
const MAX_MESSAGE_CHARS: usize = 200;
/// What `Username` says when `Secret` is an identity token.
const IDENTITY_TOKEN_USERNAME: &str = "<token>";

/// Why a helper gave no credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelperError {
    #[error("credential helper {program} is not on PATH")]
    Missing { program: String },
    #[error("credential helper {program} could not be started: {reason}")]
    Spawn { program: String, reason: String },
    #[error("credential helper {program} did not answer within {after:?} and was killed")]
    Timeout { program: String, after: Duration },
    #[error("credential helper {program} failed ({status}): {message}")]
    Failed {
        program: String,
        status: String,
        message: String,
    },
    #[error("credential helper {program} printed more than {MAX_HELPER_OUTPUT} bytes")]
    TooLarge { program: String },
    #[error("credential helper {program} answered something that is not its JSON: {reason}")]
    Malformed { program: String, reason: String },
}

/// `docker-credential-<name>`.
pub fn program(name: &str) -> String {
    format!("docker-credential-{name}")
}

/// Where `program` is on `PATH`, if it is there and executable.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The helper's answer. No `Debug`: it holds the secret.
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<name> get` for `server_url` and reads its
/// answer. Blocking (a thread of the blocking pool runs it).
pub fn get(name: &str, server_url: &str) -> Result<Credentials, HelperError> {
    let program = program(name);
    let path = find_on_path(&program).ok_or_else(|| HelperError::Missing {
        program: program.clone(),
    })?;
    let stdout = run(&program, &path, server_url, HELPER_TIMEOUT)?;
    let answer: Answer = serde_json::from_slice(&stdout).map_err(|e| HelperError::Malformed {
        program: program.clone(),
        // serde_json names the position, not the content.
        reason: e.to_string(),
    })?;
    if answer.secret.is_empty() {
        return Err(HelperError::Malformed {
            program,
            reason: "no Secret".into(),
        });
    }
    if answer.username == IDENTITY_TOKEN_USERNAME {
        Ok(Credentials::identity_token(String::new(), answer.secret))
    } else {
        Ok(Credentials::new(answer.username, answer.secret))
    }
}

/// Spawns `path get`, writes `input`, and returns its stdout if it exits
/// 0 within `limit` ([`HELPER_TIMEOUT`]).
fn run(program: &str, path: &Path, input: &str, limit: Duration) -> Result<Vec<u8>, HelperError> {
    let started = Instant::now();
    let mut child = Command::new(path)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HelperError::Missing {
                program: program.to_owned(),
            },
            _ => HelperError::Spawn {
                program: program.to_owned(),
                reason: e.to_string(),
            },
        })?;
    // The server URL is far smaller than a pipe buffer: this never
    // blocks. A helper that exits without reading it closes the pipe,
    // which is its business.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let (out_tx, out_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let read = stdout
                .take(MAX_HELPER_OUTPUT as u64 + 1)
                .read_to_end(&mut bytes);
            let _ = out_tx.send(read.map(|_| bytes));
        });
    }
    let (err_tx, err_rx) = mpsc::channel();
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                let room = MAX_HELPER_STDERR.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            let _ = err_tx.send(kept);
        });
    }
    let timeout = || HelperError::Timeout {
        program: program.to_owned(),
        after: limit,
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timeout());
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HelperError::Spawn {
                    program: program.to_owned(),
                    reason: e.to_string(),
                });
            }
        }
    };
    // The helper has exited; its output is read once the pipes close (a
    // background process it left holding them gets the rest of the time).
    let remaining = limit.saturating_sub(started.elapsed());
    let stdout = match out_rx.recv_timeout(remaining) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            return Err(HelperError::Spawn {
                program: program.to_owned(),
                reason: format!("reading its output: {e}"),
            })
        }
        Err(_) => return Err(timeout()),
    };
    if stdout.len() > MAX_HELPER_OUTPUT {
        return Err(HelperError::TooLarge {
            program: program.to_owned(),
        });
    }
    if !status.success() {
        let stderr = err_rx
            .recv_timeout(limit.saturating_sub(started.elapsed()))
            .unwrap_or_default();
        // Helpers print their error on stdout (docker-credential-helpers)
        // or stderr; either way only its first line, cut short.
        let message = first_line(&stdout)
            .or_else(|| first_line(&stderr))
            .unwrap_or_else(|| "no message".to_owned());
        return Err(HelperError::Failed {
            program: program.to_owned(),
            status: status.to_string(),
            message,
        });
    }
    Ok(stdout)
}

/// The first non-empty line of `bytes`, printable characters only, at
/// most [`MAX_MESSAGE_CHARS`].
fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(
        line.chars()
            .filter(|c| !c.is_control())
            .take(MAX_MESSAGE_CHARS)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.path().join("docker-credential-test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn run_script(body: &str, limit: Duration) -> Result<Vec<u8>, HelperError> {
        let dir = tempfile::tempdir().unwrap();
        let path = script(&dir, body);
        run("docker-credential-test", &path, "r.example:5000", limit)
    }

    #[test]
    fn the_server_url_goes_in_and_stdout_comes_out() {
        let out = run_script(
            r#"read -r url; [ "$1" = get ] && printf '{"Username":"u","Secret":"%s"}' "$url""#,
            HELPER_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out, br#"{"Username":"u","Secret":"r.example:5000"}"#);
    }

    #[test]
    fn failures_are_named_and_bounded() {
        let e = run_script(
            "echo 'credentials not found in native keychain'; exit 1",
            HELPER_TIMEOUT,
        )
        .unwrap_err();
        assert!(
            matches!(&e, HelperError::Failed { program, message, .. }
                if program == "docker-credential-test" && message == "credentials not found in native keychain"),
            "{e:?}"
        );
        assert!(e.to_string().contains("docker-credential-test"), "{e}");

        let started = Instant::now();
        let e = run_script("exec sleep 30", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, HelperError::Timeout { .. }), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not killed in time"
        );

        let e = run_script("head -c 200000 /dev/zero", HELPER_TIMEOUT).unwrap_err();
        assert!(matches!(e, HelperError::TooLarge { .. }), "{e:?}");

        let e = run(
            "docker-credential-test",
            Path::new("/nonexistent/docker-credential-test"),
            "x",
            HELPER_TIMEOUT,
        )
        .unwrap_err();
        assert!(matches!(e, HelperError::Missing { .. }), "{e:?}");
        assert!(find_on_path("docker-credential-surely-not-installed-here").is_none());
    }

    #[test]
    fn first_lines_are_short_and_printable() {
        assert_eq!(
            first_line(b"\n  credentials not found in native keychain\nmore").as_deref(),
            Some("credentials not found in native keychain")
        );
        assert_eq!(first_line(b"a\x1b[31mb").as_deref(), Some("a[31mb"));
        assert_eq!(
            first_line(&[b'x'; 1000]).map(|l| l.len()),
            Some(MAX_MESSAGE_CHARS)
        );
        assert_eq!(first_line(b" \n\n"), None);
    }
}
