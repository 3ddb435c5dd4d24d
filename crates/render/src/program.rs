//! The external programs a render runs (`helm template`, `kustomize build`): each in a private,
//! memory-backed scratch directory removed afterwards, with its input on a pipe, bounded in time,
//! data size and output, and first in line for the kernel's OOM killer.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Bytes of a program's error output kept for a message.
const MAX_STDERR: usize = 16 * 1024;

/// What one run may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Wall-clock time before it is killed.
    pub timeout: Duration,
    /// Its `RLIMIT_DATA`, in bytes.
    pub memory: u64,
}

/// What a run gave.
pub(crate) struct Ran {
    /// Standard output (at most the limit asked for).
    pub out: Zeroizing<Vec<u8>>,
    /// Whether the output was longer (the rest was drained).
    pub too_long: bool,
    /// Standard error (its first 16 KiB).
    pub err: Zeroizing<Vec<u8>>,
    /// The exit status; `None` when it was stopped (timed out).
    pub status: Option<ExitStatus>,
}

/// Runs `cmd` with `input` on its standard input and its output read into wiping buffers (with
/// `reserve`, the whole `max_output` allocated up front, so growing leaves no copies behind).
/// Spawning errors are returned as they are (`NotFound`: no such program).
pub(crate) fn run(
    cmd: &mut Command,
    input: &[u8],
    bounds: Bounds,
    max_output: usize,
    reserve: bool,
) -> std::io::Result<Ran> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let _ = rlimit::prlimit(
        child.id() as i32,
        rlimit::Resource::DATA,
        Some((bounds.memory, bounds.memory)),
        None,
    );
    // Under a container's memory limit, the kernel's OOM killer takes the program before the
    // process that runs it (raising the score needs no privilege).
    let _ = std::fs::write(format!("/proc/{}/oom_score_adj", child.id()), "1000");
    Ok(std::thread::scope(|scope| {
        let stdin = child.stdin.take();
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(input);
            }
        });
        let stdout = child.stdout.take();
        // A program closes its output when it exits: the reader's end wakes the wait below at
        // once, where polling would add up to a poll interval to every render.
        let (done, ended) = std::sync::mpsc::channel();
        let reader = scope.spawn(move || {
            let read = read_bounded(stdout, max_output, reserve);
            let _ = done.send(());
            read
        });
        let stderr = child.stderr.take();
        let errors = scope.spawn(move || read_bounded(stderr, MAX_STDERR, false));
        let deadline = Instant::now() + bounds.timeout;
        let _ = ended.recv_timeout(bounds.timeout);
        let mut pause = Duration::from_micros(50);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let (out, too_long) = reader.join().unwrap_or_default();
        let (err, _) = errors.join().unwrap_or_default();
        Ran {
            out,
            too_long,
            err,
            status,
        }
    }))
}

/// Reads at most `limit` bytes into a wiping buffer (with `reserve`, allocated whole up front, so
/// growing leaves no copies behind); the flag says whether there was more (the rest is drained).
fn read_bounded(
    from: Option<impl Read>,
    limit: usize,
    reserve: bool,
) -> (Zeroizing<Vec<u8>>, bool) {
    let mut out = Zeroizing::new(Vec::with_capacity(if reserve { limit } else { 0 }));
    let Some(mut from) = from else {
        return (out, false);
    };
    let mut buf = Zeroizing::new([0u8; 64 * 1024]);
    let mut over = false;
    loop {
        match from.read(&mut buf[..]) {
            Ok(0) | Err(_) => break,
            Ok(n) if out.len() + n > limit => {
                over = true;
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&buf[..room]);
            }
            Ok(n) if !over => out.extend_from_slice(&buf[..n]),
            Ok(_) => {}
        }
    }
    (out, over)
}

/// Writes `files` (path under `root`, bytes) below `root`, with one mkdir per directory rather than
/// per file; an error names the file.
pub(crate) fn write_tree<'a>(
    root: &Path,
    files: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), (String, std::io::Error)> {
    let mut made = std::collections::BTreeSet::new();
    for (path, bytes) in files {
        let to = root.join(path);
        if let Some(dir) = to.parent()
            && !made.contains(dir)
        {
            std::fs::create_dir_all(dir).map_err(|e| (path.to_string(), e))?;
            made.insert(dir.to_path_buf());
        }
        std::fs::write(&to, bytes).map_err(|e| (path.to_string(), e))?;
    }
    Ok(())
}

/// A private directory (mode 0700) for one run, memory-backed under `/dev/shm` when there is one,
/// removed when dropped. It holds only what holds no secret (charts, overlays, ciphertext).
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    /// A new one, named for `what` (`chart`, `kustomize`).
    pub(crate) fn new(what: &str) -> std::io::Result<Scratch> {
        let shm = Path::new("/dev/shm");
        match Scratch::within(shm, what) {
            Ok(s) => Ok(s),
            Err(_) => Scratch::within(&std::env::temp_dir(), what),
        }
    }

    fn within(base: &Path, what: &str) -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = base.join(format!(
            "lockstep-{what}-{}-{}",
            std::process::id(),
            hex::encode(suffix)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
