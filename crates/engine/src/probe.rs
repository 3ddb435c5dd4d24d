//! The render probe: a render run first in a child process with a memory and a time limit, so a
//! hostile template can take at most that child — never the process that runs it for many tenants.
//!
//! Render bounds its output, its fuel and what lockstep's helpers build ([`render::budget`]), but
//! some of minijinja's own operations (`~` on a lazily repeated list, for one) build strings the
//! engine cannot see. Render is deterministic: the same snapshot and request do the same work
//! every time. So the controller first renders in a child that may use at most
//! [`Probe::memory`] bytes of data for at most [`Probe::time`]; only a render that ended there,
//! successfully or with problems, is rendered again in the process itself. The child is given the
//! project's files (as in Git: secrets still encrypted) on a pipe, never a key; it prints nothing.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lockstep_core::Snapshot;
use yaml_serde::Mapping;

use crate::render::{self, Request, budget::Limits};

/// The hidden argument that makes the binary a probe child.
pub const ARG: &str = "__render-probe";

/// Exit code of a child whose render ended with problems (reported by the render in-process).
const PROBLEMS: i32 = 2;

/// Data (heap and anonymous mappings) a probe child may use by default.
pub const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;

/// How long a probe child may take by default.
pub const DEFAULT_TIME: Duration = Duration::from_secs(60);

/// How to probe renders: the binary to run (with [`ARG`]) and its limits.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The executable (the running binary).
    pub exe: PathBuf,
    /// `RLIMIT_DATA` of the child, in bytes (the project's files count too).
    pub memory: u64,
    /// Wall-clock time before the child is killed.
    pub time: Duration,
}

/// Why a probe refused a render.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The child could not be started or fed.
    #[error("cannot start the isolated render: {0}")]
    Start(String),
    /// The child ran out of memory.
    #[error(
        "the render needs more than {} MiB of memory (it ran isolated and was stopped); look for a runaway loop or a huge repeat (`[x] * n`, `~`) in the templates", .0 / (1024 * 1024)
    )]
    Memory(u64),
    /// The child took too long.
    #[error(
        "the render takes longer than {}s (it ran isolated and was stopped); look for a runaway loop in the templates", .0.as_secs()
    )]
    Time(Duration),
    /// The child ended another way.
    #[error("the isolated render ended unexpectedly ({0})")]
    Crashed(String),
}

impl Probe {
    /// A probe with the default limits, running the current executable.
    pub fn current() -> Result<Probe, ProbeError> {
        let exe = std::env::current_exe().map_err(|e| ProbeError::Start(e.to_string()))?;
        Ok(Probe {
            exe,
            memory: DEFAULT_MEMORY,
            time: DEFAULT_TIME,
        })
    }

    /// Renders `request` of `snapshot` in a child; `Ok` when the render ended there within the
    /// limits (whatever its result).
    pub fn check(&self, snapshot: &Snapshot, request: &Request) -> Result<(), ProbeError> {
        let mut child = Command::new(&self.exe)
            .arg(ARG)
            .arg(self.memory.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_clear()
            // One malloc arena: the data limit is for the render, not for reserved arenas.
            .env("MALLOC_ARENA_MAX", "1")
            .spawn()
            .map_err(|e| ProbeError::Start(format!("{}: {e}", self.exe.display())))?;
        let started = Instant::now();
        let stdin = child.stdin.take();
        // Fed from a thread of its own: a child that stops reading cannot stall the deadline.
        let (fed, status) = std::thread::scope(|scope| {
            let feeder = scope.spawn(move || match stdin {
                Some(mut stdin) => write_input(&mut stdin, snapshot, request),
                None => Err(io::Error::other("no stdin")),
            });
            let status = self.wait(&mut child, started);
            (
                feeder
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("feeder panicked"))),
                status,
            )
        });
        let status = status?;
        match (fed, status.code()) {
            (Ok(()), Some(0 | PROBLEMS)) => Ok(()),
            (Err(e), Some(0 | PROBLEMS)) => Err(ProbeError::Start(e.to_string())),
            _ => Err(verdict(status, self.memory)),
        }
    }

    /// Waits for the child until [`Probe::time`] has passed since `started`, then kills it.
    fn wait(
        &self,
        child: &mut std::process::Child,
        started: Instant,
    ) -> Result<ExitStatus, ProbeError> {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if started.elapsed() >= self.time => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ProbeError::Time(self.time));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(ProbeError::Crashed(e.to_string())),
            }
        }
    }
}

/// What a child's unexpected end means: an abort is an allocation that failed at the limit.
fn verdict(status: ExitStatus, memory: u64) -> ProbeError {
    use std::os::unix::process::ExitStatusExt as _;
    match status.signal() {
        // SIGABRT: Rust aborts when an allocation fails; SIGSEGV: a stack that could not grow.
        Some(6 | 11) => ProbeError::Memory(memory),
        Some(sig) => ProbeError::Crashed(format!("signal {sig}")),
        None => ProbeError::Crashed(status.to_string()),
    }
}

/// Writes the probe's input: the request, then every file, length-prefixed.
fn write_input(w: &mut impl Write, snapshot: &Snapshot, request: &Request) -> io::Result<()> {
    let mut w = io::BufWriter::new(w);
    let header = serde_json::json!({
        "env": request.env,
        "values": request.values_files,
        "sets": request.sets.iter().map(|m| yaml_serde::to_string(m).unwrap_or_default()).collect::<Vec<_>>(),
        "limits": [request.limits.output_bytes, request.limits.fuel, request.limits.template_fuel],
    });
    frame(&mut w, header.to_string().as_bytes())?;
    for (path, bytes) in snapshot.under("") {
        frame(&mut w, path.as_bytes())?;
        frame(&mut w, bytes)?;
    }
    w.flush()
}

fn frame(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)
}

/// Reads one frame; `None` at the end of the input.
fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 8];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u64::from_le_bytes(len))
        .map_err(|_| io::Error::other("frame too large"))?;
    let mut bytes = Vec::new();
    r.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() != len {
        return Err(io::Error::other("truncated frame"));
    }
    Ok(Some(bytes))
}

/// The request and snapshot a probe child was given.
fn read_input(r: &mut impl Read) -> io::Result<(Snapshot, Request)> {
    let header = read_frame(r)?.ok_or_else(|| io::Error::other("no request"))?;
    let header: serde_json::Value = serde_json::from_slice(&header)?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let values_files = header["values"]
        .as_array()
        .map(|a| a.iter().map(|p| (text(&p[0]), text(&p[1]))).collect())
        .unwrap_or_default();
    let sets = header["sets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    yaml_serde::from_str::<Mapping>(s.as_str().unwrap_or_default()).ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let limit = |i: usize| header["limits"][i].as_u64();
    let defaults = Limits::default();
    let limits = Limits {
        output_bytes: limit(0)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(defaults.output_bytes),
        fuel: limit(1).unwrap_or(defaults.fuel),
        template_fuel: limit(2).unwrap_or(defaults.template_fuel),
    };
    let request = Request {
        env: text(&header["env"]),
        values_files,
        sets,
        limits,
        // Charts are rendered by Helm in a bounded process of its own; the probe checks their
        // values templates.
        charts: render::chart::Charts::ValuesOnly,
        archives: render::lock::Archives::default(),
        kustomize: render::kustomize::Kustomizer::Skip,
    };
    let mut snapshot = Snapshot::new();
    while let Some(path) = read_frame(r)? {
        let bytes = read_frame(r)?.ok_or_else(|| io::Error::other("a file without content"))?;
        snapshot.insert(String::from_utf8_lossy(&path).into_owned(), bytes);
    }
    Ok((snapshot, request))
}

/// The child's side: limits its own data to `memory` bytes, reads its input from stdin, renders,
/// and exits 0 (rendered), 2 (problems) or 1 (unreadable input). Prints nothing.
pub fn serve(memory: u64) -> i32 {
    if rlimit::setrlimit(rlimit::Resource::DATA, memory, memory).is_err() {
        return 1;
    }
    let Ok((snapshot, request)) = read_input(&mut io::stdin().lock()) else {
        return 1;
    };
    match render::render(&snapshot, &request) {
        Ok(_) => 0,
        Err(_) => PROBLEMS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_round_trips() {
        let mut snapshot = Snapshot::new();
        snapshot.insert("lockstep.yaml", "project: p\n");
        snapshot.insert("templates/a.yaml", vec![0u8, 1, 2]);
        let mut set = Mapping::new();
        set.insert("replicas".into(), 3.into());
        let request = Request {
            env: "dev".into(),
            values_files: vec![("v.yaml".into(), "a: 1\n".into())],
            sets: vec![set],
            limits: Limits {
                output_bytes: 7,
                ..Limits::default()
            },
            charts: render::chart::Charts::ValuesOnly,
            archives: render::lock::Archives::default(),
            kustomize: render::kustomize::Kustomizer::Skip,
        };
        let mut wire = Vec::new();
        write_input(&mut wire, &snapshot, &request).expect("written");
        let (s, r) = read_input(&mut wire.as_slice()).expect("read");
        assert_eq!(s.get("templates/a.yaml"), Some(&[0u8, 1, 2][..]));
        assert_eq!(s.get("lockstep.yaml"), Some(&b"project: p\n"[..]));
        assert_eq!(r.env, "dev");
        assert_eq!(r.values_files, request.values_files);
        assert_eq!(r.sets, request.sets);
        assert_eq!(r.limits, request.limits);
    }
}
