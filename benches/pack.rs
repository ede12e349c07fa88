//! Packing benchmark: firecrest-ci's `pack` against `tar -czf` on the same
//! generated workspace, each in a child process so its peak RSS can be read
//! with wait4(2).
//!
//! Run: `cargo bench --bench pack`. Environment:
//! - `FCI_BENCH_MB`: workspace size in MiB (default 300)
//! - `FCI_BENCH_LEVELS`: gzip levels to try, comma-separated (default `1,3,6,9`)
//! - `FCI_BENCH_DIR`: where to generate the workspace (default a temp dir)

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firecrest_ci::workspace::{pack, PackOptions};

const MIB: u64 = 1024 * 1024;
const CHILD_FLAG: &str = "--child-pack";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == CHILD_FLAG) {
        child(&args[pos + 1..]);
        return;
    }
    let mib: u64 = env_or("FCI_BENCH_MB", "300")
        .parse()
        .expect("FCI_BENCH_MB: a number");
    let levels: Vec<u32> = env_or("FCI_BENCH_LEVELS", "1,3,6,9")
        .split(',')
        .map(|l| l.trim().parse().expect("FCI_BENCH_LEVELS: numbers"))
        .collect();
    let tmp = match std::env::var_os("FCI_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let root = tmp.path().join("ws");

    let started = Instant::now();
    let (files, bytes) = generate(&root, mib * MIB);
    println!(
        "generated {files} files, {:.1} MiB in {:.1}s ({})",
        bytes as f64 / MIB as f64,
        started.elapsed().as_secs_f64(),
        root.display()
    );

    let exe = std::env::current_exe().expect("own path");
    let mut rows = Vec::new();
    for level in levels {
        let out = tmp.path().join(format!("fci-{level}.tar.gz"));
        let mut cmd = Command::new(&exe);
        cmd.arg(CHILD_FLAG)
            .arg(&root)
            .arg(&out)
            .arg(level.to_string());
        rows.push((format!("firecrest-ci -{level}"), measure(cmd, &out)));
    }
    let out = tmp.path().join("tar.tar.gz");
    let mut cmd = Command::new("tar");
    cmd.arg("-czf").arg(&out).arg("-C").arg(&root).arg(".");
    rows.push(("tar -czf (gzip -6)".to_owned(), measure(cmd, &out)));

    println!();
    println!(
        "{:<20} {:>8} {:>8} {:>10} {:>14} {:>7} {:>10}",
        "tool", "wall s", "cpu s", "MiB/s", "archive bytes", "ratio", "peak RSS"
    );
    for (name, m) in &rows {
        println!(
            "{:<20} {:>8.2} {:>8.2} {:>10.1} {:>14} {:>7.3} {:>7.1} MiB",
            name,
            m.wall.as_secs_f64(),
            m.cpu.as_secs_f64(),
            bytes as f64 / MIB as f64 / m.wall.as_secs_f64(),
            m.archive,
            m.archive as f64 / bytes as f64,
            m.max_rss_kib as f64 / 1024.0
        );
    }
    println!(
        "\ninput: {files} files, {bytes} bytes; {} cores; load average {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The child side: pack only, so the parent sees this process's peak RSS.
fn child(args: &[String]) {
    let [root, out, level, ..] = args else {
        panic!("usage: {CHILD_FLAG} ROOT OUT LEVEL");
    };
    let mut opts = PackOptions::new(root);
    opts.level = level.parse().expect("level");
    let report = pack(&opts, Path::new(out)).expect("pack");
    println!(
        "{} files, {} dirs, {} bytes in, {} bytes out in {:.2}s",
        report.files,
        report.dirs,
        report.bytes_in,
        report.bytes_out,
        report.elapsed.as_secs_f64()
    );
}

struct Measured {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
    archive: u64,
}

/// Runs `cmd`, waits with wait4(2) and returns wall time, CPU time (user +
/// system, children included) and peak RSS.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std cannot see
fn measure(mut cmd: Command, out: &PathBuf) -> Measured {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
    let mut said = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut said).expect("child output");
    }
    let mut status = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing only into the two locals.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert!(pid > 0, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    if !said.trim().is_empty() {
        println!("{}: {}", out.display(), said.trim());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Measured {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
        archive: fs::metadata(out).expect("archive").len(),
    }
}

/// xorshift64*: fast, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Source-like text: indented lines of words from a fixed vocabulary.
fn text(rng: &mut Rng, vocab: &[String], len: usize, buf: &mut Vec<u8>) {
    let end = buf.len() + len;
    while buf.len() < end {
        let indent = rng.below(4) as usize * 4;
        buf.extend(std::iter::repeat_n(b' ', indent));
        for _ in 0..4 + rng.below(9) {
            // Skewed towards the first words, as real text is.
            let i = (rng.below(vocab.len() as u64) * rng.below(vocab.len() as u64)) as usize
                / vocab.len();
            buf.extend_from_slice(vocab[i].as_bytes());
            buf.push(if rng.below(8) == 0 { b'(' } else { b' ' });
        }
        buf.extend_from_slice(if rng.below(3) == 0 { b";\n" } else { b"\n" });
    }
    buf.truncate(end);
}

/// ~40% many small text files (1-16 KiB, 100 per directory), ~60% a few
/// large files mixing text with incompressible 64 KiB runs (a third of them).
fn generate(root: &Path, target: u64) -> (u64, u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let vocab: Vec<String> = (0..2000)
        .map(|_| {
            (0..2 + rng.below(9))
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect()
        })
        .collect();
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(1 << 20);
    let small_target = target * 2 / 5;
    while bytes < small_target {
        let dir = root.join(format!("src/mod{:04}", files / 100));
        if files % 100 == 0 {
            fs::create_dir_all(&dir).expect("mkdir");
        }
        buf.clear();
        let len = 1024 + rng.below(15 * 1024) as usize;
        text(&mut rng, &vocab, len, &mut buf);
        fs::write(dir.join(format!("file{:03}.rs", files % 100)), &buf).expect("write");
        files += 1;
        bytes += buf.len() as u64;
    }
    let large = 4;
    let per_file = (target.saturating_sub(bytes) / large).max(64 * 1024);
    fs::create_dir_all(root.join("data")).expect("mkdir");
    for k in 0..large {
        let mut w =
            BufWriter::new(File::create(root.join(format!("data/blob{k}.dat"))).expect("create"));
        let mut written = 0;
        while written < per_file {
            buf.clear();
            if rng.below(3) == 0 {
                buf.extend((0..8 * 1024).flat_map(|_| rng.next().to_le_bytes()));
            } else {
                text(&mut rng, &vocab, 64 * 1024, &mut buf);
            }
            w.write_all(&buf).expect("write");
            written += buf.len() as u64;
        }
        w.flush().expect("flush");
        files += 1;
        bytes += written;
    }
    (files, bytes)
}
