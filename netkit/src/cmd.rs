//! Running the system tools the testbed is built on, with errors that say what failed and why.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

/// A failure to run a system tool, or the tool reporting failure.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (usually: not installed).
    #[error("cannot run `{program}` (is it installed? run scripts/setup)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// A command line for one of the system tools, run with stdin closed to `/dev/null`
/// (`ovs-vsctl` aborts on a closed stdin) and its output captured.
#[derive(Debug)]
pub struct Tool {
    cmd: Command,
    line: String,
}

impl Tool {
    /// Starts a command line for `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        Self {
            cmd: Command::new(program),
            line: program.to_string_lossy().into_owned(),
        }
    }

    /// Runs `program` inside network namespace `ns` (through `ip netns exec`).
    pub fn in_netns(ns: &str, program: impl AsRef<OsStr>) -> Self {
        Self::new("ip").args(["netns", "exec", ns]).arg(program)
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.line.push(' ');
        self.line.push_str(&arg.to_string_lossy());
        self.cmd.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// The command line as it would be typed.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Runs the command and returns its output, failing if it exits non-zero.
    pub fn output(mut self) -> Result<Output, CmdError> {
        tracing::debug!(command = %self.line, "run");
        let out = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| CmdError::Spawn {
                program: self.cmd.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(CmdError::Failed {
                command: self.line,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Runs the command, failing if it exits non-zero.
    pub fn run(self) -> Result<(), CmdError> {
        self.output().map(drop)
    }

    /// Runs the command and returns its standard output as text.
    pub fn stdout(self) -> Result<String, CmdError> {
        self.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

/// Whether `program` is found on `PATH` (or is an existing path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_command_reports_line_and_stderr() {
        let err = Tool::new("sh")
            .args(["-c", "echo nope >&2; exit 3"])
            .run()
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Tool::new("/nonexistent/tool").run().expect_err("must fail");
        assert!(matches!(err, CmdError::Spawn { .. }), "{err}");
        assert!(!on_path("/nonexistent/tool"));
        assert!(on_path("sh"));
    }
}
