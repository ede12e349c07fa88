//! `/filesystem/{system}/ops/*` on a real directory tree, with the reply
//! shapes, status codes and error texts of the recordings: 1-based
//! `tail --bytes=+N`, lossy UTF-8 content, the output-buffer limit.
//!
//! Over the buffer, the real server (`recorded/ops_large_output.json`)
//! answers 413 only for small overshoots: the remote command's output fits
//! in the pipe and SSH channel buffers, the command exits, and the server
//! sees too much. A reply far over the buffer blocks the remote command on
//! a full pipe until the SSH command timeout (5 s) fires: `tail`, `head` and
//! `download` then answer 408, `view` answers 500 "Channel not open for
//! sending". The double draws the line at [`SMALL_OVERSHOOT`] (64 KiB, a
//! Linux pipe buffer) and waits `Settings::command_timeout` before those.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::http::{Request, Response};
use super::{error_body_user, validation_error, Route};

/// What the ops need to know about the system.
pub struct FsCtx {
    pub roots: Vec<PathBuf>,
    pub system: String,
    pub limit: u64,
    pub command_timeout: Duration,
    pub user: String,
    pub uid: u32,
}

fn err(status: u16, msg: &str) -> Response {
    Response::json(status, &error_body_user(msg))
}

/// The server's wrapper around a failed remote command; the status follows
/// the stderr text like FirecREST's error handling does.
fn remote(exit: i32, stderr: &str) -> Response {
    let status = if stderr.contains("No such file or directory") {
        404
    } else if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        403
    } else {
        400
    };
    err(
        status,
        &format!("Remote process failed with exit status:{exit} and error message:{stderr}"),
    )
}

/// Replies at most this far over the buffer still come back as 413.
pub const SMALL_OVERSHOOT: u64 = 64 * 1024;

fn too_big() -> Response {
    err(413, "Command output exceeded buffer limit.")
}

impl FsCtx {
    /// The answer to a command whose output is `len` bytes, over the
    /// buffer: 413 at once when a little over, else the timeout's answer
    /// after the command timeout (408, or 500 for `view`).
    fn over_buffer(&self, len: u64, view: bool) -> Response {
        if len <= self.limit + SMALL_OVERSHOOT {
            return too_big();
        }
        std::thread::sleep(self.command_timeout);
        if view {
            Response::json(
                500,
                &super::error_body("('Channel not open for sending',)", None),
            )
        } else {
            err(408, "Command execution timeout limit exceeded.")
        }
    }
}

fn ok(status: u16, output: Value) -> Response {
    Response::json(status, &json!({ "output": output }))
}

fn no_content() -> Response {
    Response::json(204, &Value::Null)
}

/// Lexical normalisation: the fake never touches anything outside its roots.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

impl FsCtx {
    pub fn resolve(&self, raw: &str) -> Result<PathBuf, Response> {
        if !raw.starts_with('/') {
            return Err(err(
                400,
                &format!("The provided path ({raw}) is not an absolute path."),
            ));
        }
        let p = normalize(Path::new(raw));
        if self.roots.iter().any(|r| p.starts_with(r)) {
            Ok(p)
        } else {
            Err(err(
                400,
                &format!(
                    "The provided path ({raw}) does not match any of the defined filesystem paths for the requested system ({}).",
                    self.system
                ),
            ))
        }
    }

    fn query_path(&self, req: &Request) -> Result<(String, PathBuf), Response> {
        let raw = req
            .query("path")
            .or_else(|| req.query("sourcePath"))
            .ok_or_else(|| {
                err(
                    400,
                    "Unable to decode request and retreive the required path or source_path parameter.",
                )
            })?;
        Ok((raw.to_string(), self.resolve(raw)?))
    }

    /// One `ls -l`-like entry as FirecREST returns it.
    pub fn entry(
        &self,
        name: &str,
        meta: &fs::Metadata,
        target: Option<String>,
        numeric: bool,
    ) -> Value {
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            "l"
        } else if ft.is_dir() {
            "d"
        } else {
            "-"
        };
        let (user, group) = if numeric {
            (self.uid.to_string(), self.uid.to_string())
        } else {
            (self.user.clone(), self.user.clone())
        };
        json!({"name": name, "type": kind, "linkTarget": target, "user": user, "group": group,
               "permissions": perms(meta.mode()), "lastModified": iso_time(meta.mtime()),
               "size": meta.size().to_string()})
    }

    pub fn handle(&self, route: Route, req: &Request) -> Response {
        let result = match route {
            Route::OpsLs => self.ls(req),
            Route::OpsStat => self.stat(req),
            Route::OpsFile => self.file(req),
            Route::OpsChecksum => self.checksum(req),
            Route::OpsHead => self.head_tail(req, true),
            Route::OpsTail => self.head_tail(req, false),
            Route::OpsView => self.view(req),
            Route::OpsDownload => self.download(req),
            Route::OpsMkdir => self.mkdir(req),
            Route::OpsChmod => self.chmod(req),
            Route::OpsRm => self.rm(req),
            Route::OpsUpload => self.upload(req),
            Route::OpsExtract => self.tar(req, true),
            Route::OpsCompress => self.tar(req, false),
            _ => Err(Response::json(404, &json!({"detail": "Not Found"}))),
        };
        result.unwrap_or_else(|e| e)
    }

    fn ls(&self, req: &Request) -> Result<Response, Response> {
        let (raw, p) = self.query_path(req)?;
        let flag = |n: &str| req.query(n) == Some("true");
        let meta = fs::symlink_metadata(&p).map_err(|_| {
            remote(
                2,
                &format!("ls: cannot access '{raw}': No such file or directory"),
            )
        })?;
        let numeric = flag("numericUid");
        if !meta.is_dir() {
            let target = fs::read_link(&p).ok().map(|t| t.display().to_string());
            return Ok(ok(200, json!([self.entry(&raw, &meta, target, numeric)])));
        }
        let mut out = Vec::new();
        self.list_dir(
            &p,
            "",
            flag("showHidden"),
            flag("recursive"),
            numeric,
            &mut out,
        );
        Ok(ok(200, Value::Array(out)))
    }

    fn list_dir(
        &self,
        dir: &Path,
        prefix: &str,
        hidden: bool,
        recursive: bool,
        numeric: bool,
        out: &mut Vec<Value>,
    ) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let n = n.to_string_lossy().into_owned();
            if n.starts_with('.') && !hidden {
                continue;
            }
            let child = dir.join(&n);
            let Ok(meta) = fs::symlink_metadata(&child) else {
                continue;
            };
            let name = format!("{prefix}{n}");
            let target = fs::read_link(&child).ok().map(|t| t.display().to_string());
            out.push(self.entry(&name, &meta, target, numeric));
            if recursive && meta.is_dir() {
                self.list_dir(&child, &format!("{name}/"), hidden, recursive, numeric, out);
            }
        }
    }

    fn stat(&self, req: &Request) -> Result<Response, Response> {
        let (raw, p) = self.query_path(req)?;
        let meta = if req.query("dereference") == Some("true") {
            fs::metadata(&p)
        } else {
            fs::symlink_metadata(&p)
        }
        .map_err(|_| {
            remote(
                1,
                &format!("stat: cannot statx '{raw}': No such file or directory"),
            )
        })?;
        Ok(ok(
            200,
            json!({"mode": meta.mode(), "ino": meta.ino(), "dev": meta.dev(), "nlink": meta.nlink(),
                   "uid": self.uid, "gid": self.uid, "size": meta.size(), "atime": meta.atime(),
                   "ctime": meta.ctime(), "mtime": meta.mtime()}),
        ))
    }

    fn file(&self, req: &Request) -> Result<Response, Response> {
        let (raw, p) = self.query_path(req)?;
        let meta = fs::metadata(&p).map_err(|_| {
            remote(
                1,
                &format!("{raw}: cannot open `{raw}' (No such file or directory)"),
            )
        })?;
        let kind = if meta.is_dir() {
            "directory".to_string()
        } else {
            let bytes = fs::read(&p).unwrap_or_default();
            if bytes.is_empty() {
                "empty".into()
            } else if bytes.is_ascii() {
                "ASCII text".into()
            } else if std::str::from_utf8(&bytes).is_ok() {
                "Unicode text, UTF-8 text".into()
            } else {
                "data".into()
            }
        };
        Ok(ok(200, Value::String(kind)))
    }

    fn checksum(&self, req: &Request) -> Result<Response, Response> {
        let (raw, p) = self.query_path(req)?;
        let bytes = read_file(&p)
            .map_err(|_| remote(1, &format!("sha256sum: {raw}: No such file or directory")))?;
        Ok(ok(
            200,
            json!({"algorithm": "SHA256", "checksum": hex::encode(Sha256::digest(&bytes))}),
        ))
    }

    fn head_tail(&self, req: &Request, head: bool) -> Result<Response, Response> {
        let bytes_q = req.query("bytes");
        let lines_q = req.query("lines");
        // Checked before the path, as in validation_errors.json (a path
        // outside every file system still gets this answer).
        if bytes_q.is_some() && lines_q.is_some() {
            return Err(err(400, "Only one of `bytes` or `lines` can be specified."));
        }
        let (raw, p) = self.query_path(req)?;
        let skip = req.query(if head { "skipEnding" } else { "skipHeading" }) == Some("true");
        let tool = if head { "head" } else { "tail" };
        let data = read_file(&p).map_err(|_| {
            remote(
                1,
                &format!("{tool}: cannot open '{raw}' for reading: No such file or directory"),
            )
        })?;
        let parse = |v: &str| {
            v.parse::<i64>()
                .map(|n| n.unsigned_abs() as usize)
                .map_err(|_| err(400, &format!("{tool}: invalid number of bytes: '{v}'")))
        };
        let (content, kind, n) = match (bytes_q, lines_q) {
            (Some(b), _) => {
                let n = parse(b)?;
                let slice = match (head, skip) {
                    (true, false) => &data[..n.min(data.len())],
                    (true, true) => &data[..data.len().saturating_sub(n)],
                    (false, false) => &data[data.len().saturating_sub(n)..],
                    (false, true) => &data[n.saturating_sub(1).min(data.len())..],
                };
                (slice.to_vec(), "bytes", n)
            }
            (None, l) => {
                let n = parse(l.unwrap_or("10"))?;
                (line_slice(&data, n, head, skip), "lines", n)
            }
        };
        if content.len() as u64 > self.limit {
            return Err(self.over_buffer(content.len() as u64, false));
        }
        let n = n as i64;
        let (start, end) = match (head, skip) {
            (true, false) => (0, n),
            (true, true) => (0, -n),
            (false, false) => (-n, -1),
            (false, true) => (n, -1),
        };
        let reply = ok(
            200,
            json!({"content": String::from_utf8_lossy(&content), "contentType": kind,
                   "startPosition": start, "endPosition": end}),
        );
        // A tail reaches the end of the file as it was read.
        Ok(if head {
            reply
        } else {
            with_read_end(reply, data.len() as u64)
        })
    }

    fn view(&self, req: &Request) -> Result<Response, Response> {
        let (raw, p) = self.query_path(req)?;
        let size: u64 = match req.query("size") {
            Some(s) => s
                .parse()
                .map_err(|_| err(400, "`size` must be an integer"))?,
            None => self.limit,
        };
        if size > self.limit {
            return Err(err(
                400,
                &format!("`size` value must be less than {} bytes", self.limit),
            ));
        }
        let size = size.max(1);
        let offset: u64 = req
            .query("offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        // dd bs=size skip=offset/size count=2, then slice characters.
        let from = (offset / size) * size;
        let data = read_range(&p, from, 2 * size).map_err(|_| {
            remote(
                1,
                &format!("dd: failed to open '{raw}': No such file or directory"),
            )
        })?;
        if data.len() as u64 > self.limit {
            return Err(self.over_buffer(data.len() as u64, true));
        }
        let text = String::from_utf8_lossy(&data);
        let i = (offset % size) as usize;
        let window: String = text.chars().skip(i).take(size as usize).collect();
        let end = from + lossy_bytes(&data, i + window.chars().count()) as u64;
        Ok(with_read_end(ok(200, Value::String(window)), end))
    }

    fn download(&self, req: &Request) -> Result<Response, Response> {
        let (raw, p) = self.query_path(req)?;
        let data = read_file(&p)
            .map_err(|_| remote(1, &format!("base64: {raw}: No such file or directory")))?;
        // The limit applies to `base64` output: 4/3 of the size plus newlines.
        let b64 = data.len().div_ceil(3) * 4;
        let encoded = (b64 + b64.div_ceil(76)) as u64;
        if encoded > self.limit {
            return Err(self.over_buffer(encoded, false));
        }
        Ok(Response::new(200, "application/octet-stream", data))
    }

    fn json_body(&self, req: &Request, route: &str) -> Result<Value, Response> {
        serde_json::from_slice::<Value>(&req.body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                validation_error(
                    route,
                    "model_attributes_type",
                    json!([{"location": "body", "name": null,
                            "message": "Input should be a valid dictionary or object to extract fields from"}]),
                )
            })
    }

    fn body_path(&self, body: &Value, keys: &[&str]) -> Result<(String, PathBuf), Response> {
        let raw = keys
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_str))
            .ok_or_else(|| {
                err(
                    400,
                    "Unable to decode request and retreive the required path or source_path parameter.",
                )
            })?;
        Ok((raw.to_string(), self.resolve(raw)?))
    }

    fn mkdir(&self, req: &Request) -> Result<Response, Response> {
        let body = self.json_body(req, "post /filesystem/{system_name}/ops/mkdir")?;
        let (raw, p) = self.body_path(&body, &["path", "sourcePath", "source_path"])?;
        let parent = match body.get("parent") {
            None | Some(Value::Null) => false,
            Some(v) => lax_bool(v).ok_or_else(|| {
                validation_error(
                    "post /filesystem/{system_name}/ops/mkdir",
                    "bool_parsing",
                    json!([{"location": "body", "name": "parent",
                            "message": "Input should be a valid boolean, unable to interpret input"}]),
                )
            })?,
        };
        let made = if parent {
            fs::create_dir_all(&p)
        } else {
            fs::create_dir(&p)
        };
        if let Err(e) = made {
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists || p.exists() {
                "File exists"
            } else {
                "No such file or directory"
            };
            return Err(remote(
                1,
                &format!("mkdir: cannot create directory '{raw}': {why}"),
            ));
        }
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
        let meta = fs::symlink_metadata(&p).map_err(|_| err(500, "mkdir vanished"))?;
        Ok(ok(201, self.entry(&raw, &meta, None, false)))
    }

    fn chmod(&self, req: &Request) -> Result<Response, Response> {
        let body = self.json_body(req, "put /filesystem/{system_name}/ops/chmod")?;
        let (raw, p) = self.body_path(&body, &["path", "sourcePath", "source_path"])?;
        let mode_s = body.get("mode").and_then(Value::as_str).unwrap_or("");
        let mode = u32::from_str_radix(mode_s, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| remote(1, &format!("chmod: invalid mode: '{mode_s}'")))?;
        fs::symlink_metadata(&p).map_err(|_| {
            remote(
                1,
                &format!("chmod: cannot access '{raw}': No such file or directory"),
            )
        })?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| remote(1, &format!("chmod: changing permissions of '{raw}': {e}")))?;
        let meta = fs::symlink_metadata(&p).map_err(|_| err(500, "chmod vanished"))?;
        Ok(ok(200, self.entry(&raw, &meta, None, false)))
    }

    fn rm(&self, req: &Request) -> Result<Response, Response> {
        let (raw, p) = self.query_path(req)?;
        let meta = fs::symlink_metadata(&p).map_err(|_| {
            remote(
                1,
                &format!("rm: cannot remove '{raw}': No such file or directory"),
            )
        })?;
        let res = if meta.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        res.map_err(|e| remote(1, &format!("rm: cannot remove '{raw}': {e}")))?;
        Ok(no_content())
    }

    fn upload(&self, req: &Request) -> Result<Response, Response> {
        let (raw, dir) = self.query_path(req)?;
        let missing_file = || {
            validation_error(
                "post /filesystem/{system_name}/ops/upload",
                "missing",
                json!([{"location": "body", "name": "file", "message": "Field required"}]),
            )
        };
        let boundary = req
            .header("content-type")
            .and_then(|ct| {
                ct.split(';')
                    .find_map(|p| p.trim().strip_prefix("boundary="))
            })
            .map(|b| b.trim_matches('"').to_string())
            .ok_or_else(missing_file)?;
        let (filename, content) = multipart_file(&req.body, &boundary).ok_or_else(missing_file)?;
        if content.len() as u64 > self.limit {
            return Err(err(413, "File to upload is too large."));
        }
        let target = dir.join(&filename);
        let shown = format!("{}/{}", raw.trim_end_matches('/'), filename);
        if !dir.is_dir() {
            return Err(remote(
                1,
                &format!("dd: failed to open '{shown}': No such file or directory"),
            ));
        }
        fs::write(&target, content)
            .map_err(|e| remote(1, &format!("dd: failed to open '{shown}': {e}")))?;
        let _ = fs::set_permissions(&target, fs::Permissions::from_mode(0o644));
        Ok(no_content())
    }

    fn tar(&self, req: &Request, extract: bool) -> Result<Response, Response> {
        let route = if extract { "extract" } else { "compress" };
        let body = self.json_body(
            req,
            &format!("post /filesystem/{{system_name}}/ops/{route}"),
        )?;
        let (raw, src) = self.body_path(&body, &["path", "sourcePath", "source_path"])?;
        let (_, dst) = self.body_path(&body, &["targetPath", "target_path"])?;
        let z = match body.get("compression").and_then(Value::as_str) {
            Some("none") => None,
            Some("bzip2") => Some("-j"),
            Some("xz") => Some("-J"),
            _ => Some("-z"),
        };
        let mut cmd = Command::new("tar");
        if extract {
            if !src.exists() {
                return Err(remote(
                    2,
                    &format!("tar (child): {raw}: Cannot open: No such file or directory\ntar (child): Error is not recoverable: exiting now\ntar: Child returned status 2\ntar: Error is not recoverable: exiting now"),
                ));
            }
            let _ = fs::create_dir_all(&dst);
            cmd.arg("-x")
                .args(z)
                .arg("-f")
                .arg(&src)
                .arg("-C")
                .arg(&dst);
        } else {
            let parent = src.parent().unwrap_or(Path::new("/"));
            let name = src
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            cmd.arg("-c")
                .args(z)
                .arg("-f")
                .arg(&dst)
                .arg("-C")
                .arg(parent)
                .arg(name);
        }
        let out = cmd.output().map_err(|e| err(500, &format!("tar: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
            return Err(remote(out.status.code().unwrap_or(2), &stderr));
        }
        Ok(no_content())
    }
}

fn read_file(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = fs::File::open(p)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// Up to `len` bytes of `p` from byte `from` (`dd` of one range).
fn read_range(p: &Path, from: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(p)?;
    f.seek(SeekFrom::Start(from))?;
    let mut v = Vec::new();
    f.take(len).read_to_end(&mut v)?;
    Ok(v)
}

/// First or last `n` lines (or all but them, with `skip`), like head/tail -n.
fn line_slice(data: &[u8], n: usize, head: bool, skip: bool) -> Vec<u8> {
    let mut starts = vec![0];
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' && i + 1 < data.len() {
            starts.push(i + 1);
        }
    }
    let count = if data.is_empty() { 0 } else { starts.len() };
    let at = |k: usize| if k >= count { data.len() } else { starts[k] };
    match (head, skip) {
        (true, false) => data[..at(n)].to_vec(),
        (true, true) => data[..at(count.saturating_sub(n))].to_vec(),
        (false, false) => data[at(count.saturating_sub(n))..].to_vec(),
        (false, true) => data[at(n.saturating_sub(1))..].to_vec(),
    }
}

fn lax_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_i64() == Some(0) => Some(false),
        Value::Number(n) if n.as_i64() == Some(1) => Some(true),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
            "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The `file` part of a multipart/form-data body: (filename, bytes).
fn multipart_file(body: &[u8], boundary: &str) -> Option<(String, Vec<u8>)> {
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pos = find(body, delim.as_bytes(), 0)? + delim.len();
    loop {
        if body[pos..].starts_with(b"--") {
            return None;
        }
        let head_start = pos + 2;
        let head_end = find(body, b"\r\n\r\n", head_start)?;
        let head = String::from_utf8_lossy(&body[head_start..head_end]).into_owned();
        let content_start = head_end + 4;
        let next = find(body, format!("\r\n{delim}").as_bytes(), content_start)?;
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .unwrap_or("");
        let param = |name: &str| {
            disposition.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix(&format!("{name}="))
                    .map(|v| v.trim_matches('"').to_string())
            })
        };
        if param("name").as_deref() == Some("file") {
            let filename = param("filename").unwrap_or_else(|| "upload".into());
            let filename = Path::new(&filename)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "upload".into());
            return Some((filename, body[content_start..next].to_vec()));
        }
        pos = next + 2 + delim.len();
    }
}

fn perms(mode: u32) -> String {
    let mut s = String::new();
    for shift in [6, 3, 0] {
        let m = (mode >> shift) & 7;
        s.push(if m & 4 != 0 { 'r' } else { '-' });
        s.push(if m & 2 != 0 { 'w' } else { '-' });
        s.push(if m & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC from epoch seconds.
pub fn iso_time(epoch: i64) -> String {
    let days = epoch.div_euclid(86400);
    let secs = epoch.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The header by which `tail` and `view` tell the request log where in the
/// file their answer ended; taken off before the answer is sent.
const READ_END: &str = "x-fake-read-end";

fn with_read_end(mut reply: Response, end: u64) -> Response {
    reply.headers.push((READ_END.into(), end.to_string()));
    reply
}

/// Takes the read end off an answer (see [`READ_END`]).
pub fn take_read_end(reply: &mut Response) -> Option<u64> {
    let at = reply.headers.iter().position(|(k, _)| k == READ_END)?;
    reply.headers.remove(at).1.parse().ok()
}

/// How many bytes of `data` its first `chars` characters of lossy decoding
/// stand for (each run of invalid bytes is one U+FFFD, as in
/// `String::from_utf8_lossy`).
fn lossy_bytes(data: &[u8], chars: usize) -> usize {
    let (mut bytes, mut left) = (0, chars);
    for chunk in data.utf8_chunks() {
        for c in chunk.valid().chars() {
            if left == 0 {
                return bytes;
            }
            bytes += c.len_utf8();
            left -= 1;
        }
        if !chunk.invalid().is_empty() {
            if left == 0 {
                return bytes;
            }
            bytes += chunk.invalid().len();
            left -= 1;
        }
    }
    bytes
}
