//! What a new Lambda instance costs before it relays anything: the cold start of the release
//! `bootstrap` (from exec to its first Runtime API request) and the size of the binaries and
//! of the deployment package.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::report::Table;
use crate::stand::{Bins, Stand};
use crate::{median, progress, Args, Plan};

/// Times `plan.cold_starts` cold starts of the bootstrap and adds the row.
pub(crate) fn cold(stand: &Stand, bins: &Bins, plan: &Plan, t: &mut Table) -> Result<(), String> {
    progress("cold start");
    let cold = cold_starts(
        &bins.bootstrap,
        &stand.lambda_env(&stand.cold_names()),
        plan.cold_starts,
    )?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let med = ms(median(cold.clone()));
    t.row(
        &format!(
            "Cold start to first Runtime API request (x86_64, median of {}; min {:.1}, max {:.1} ms)",
            cold.len(),
            ms(cold.iter().min().copied().unwrap_or_default()),
            ms(cold.iter().max().copied().unwrap_or_default())
        ),
        format!("{med:.1} ms"),
        "≤ 40 ms",
        Some(med <= 40.0),
    );
    Ok(())
}

/// Adds the rows for the bootstrap binaries' sizes (x86_64 and arm64) and the deployment package.
pub(crate) fn sizes(bins: &Bins, args: &Args, t: &mut Table) {
    for (label, path) in [
        ("x86_64, cargo build --release", bins.bootstrap.clone()),
        (
            "arm64, cargo lambda build --release --arm64",
            args.arm64_bin.clone(),
        ),
    ] {
        match binary_size(&path) {
            Ok((bytes, stripped)) => t.row(
                &format!("bootstrap binary, {label}"),
                format!(
                    "{:.2} MiB ({bytes} B{})",
                    bytes as f64 / (1024.0 * 1024.0),
                    if stripped {
                        ", stripped"
                    } else {
                        ", NOT stripped"
                    }
                ),
                "≤ 10 MiB",
                Some(bytes <= 10 * 1024 * 1024),
            ),
            Err(e) => t.row(
                &format!("bootstrap binary, {label}"),
                format!("not measured: {e} (make build makes it)"),
                "≤ 10 MiB",
                None,
            ),
        }
    }
    if let Ok(m) = std::fs::metadata(&args.lambda_zip) {
        let stale = std::fs::metadata(&args.arm64_bin)
            .and_then(|b| Ok((m.modified()?, b.modified()?)))
            .is_ok_and(|(zip, bin)| zip > bin + Duration::from_secs(60));
        t.row(
            "Lambda deployment package (bootstrap.zip, arm64)",
            format!(
                "{:.2} MiB{}",
                m.len() as f64 / (1024.0 * 1024.0),
                if stale {
                    " (newer than the arm64 binary above: rebuild it)"
                } else {
                    ""
                }
            ),
            "",
            None,
        );
    }
}

/// Starts `bin` as Lambda would, `runs` times (after one unmeasured warm-up), and times each
/// start until its first `GET /2018-06-01/runtime/invocation/next`.
fn cold_starts(
    bin: &Path,
    env: &HashMap<String, String>,
    runs: usize,
) -> Result<Vec<Duration>, String> {
    let mut out = Vec::new();
    for i in 0..=runs {
        let took = cold_start(bin, env)?;
        if i > 0 {
            out.push(took);
        }
    }
    Ok(out)
}

fn cold_start(bin: &Path, env: &HashMap<String, String>) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let api = std::thread::spawn(move || runtime_api(listener, tx));
    let started = std::time::Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let got = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    if got.is_err() {
        // Unblock the accept.
        let _ = TcpStream::connect(addr);
    }
    let _ = api.join();
    match got {
        Ok(Ok(at)) => Ok(at.saturating_duration_since(started)),
        Ok(Err(e)) => Err(format!("runtime API: {e}; bootstrap said: {stderr}")),
        Err(_) => Err(format!(
            "the bootstrap made no Runtime API request within 10 s; it said: {stderr}"
        )),
    }
}

/// Accepts one connection and reports when its `/next` request line has arrived.
fn runtime_api(listener: TcpListener, tx: mpsc::Sender<Result<std::time::Instant, String>>) {
    let r = (|| {
        let (mut conn, _): (TcpStream, SocketAddr) =
            listener.accept().map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a request line".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let at = std::time::Instant::now();
        let line = String::from_utf8_lossy(&buf);
        let line = line.lines().next().unwrap_or_default().to_owned();
        if !line.starts_with("GET /2018-06-01/runtime/invocation/next") {
            return Err(format!("unexpected first request: {line}"));
        }
        Ok(at)
    })();
    let _ = tx.send(r);
}

/// Size of an ELF file and whether it has no symbol table.
fn binary_size(path: &Path) -> Result<(u64, bool), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stripped = elf_section_names(&data)
        .ok_or_else(|| format!("{} is not a 64-bit ELF file", path.display()))?
        .iter()
        .all(|n| n != ".symtab");
    Ok((data.len() as u64, stripped))
}

fn elf_section_names(d: &[u8]) -> Option<Vec<String>> {
    if d.get(..5)? != b"\x7fELF\x02" || d.get(5)? != &1 {
        return None; // 64-bit little-endian only
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?) as usize);
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3A)?, u16_at(0x3C)?, u16_at(0x3E)?);
    let strtab = u64_at(shoff + shstrndx * shentsize + 0x18)?;
    (0..shnum)
        .map(|i| {
            let name = strtab + u32_at(shoff + i * shentsize)?;
            let end = name + d.get(name..)?.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&d[name..end]).into_owned())
        })
        .collect()
}
