//! Filesystem operations (`/filesystem/{system}/ops/...`): small files,
//! listings and the reads of a job's output. FirecREST runs each as a
//! command with a 5 s limit on the cluster; trees and files too large for
//! that go through [`super::transfer`].

use anyhow::{Context, Result};
use reqwest::Method;
use std::path::PathBuf;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::models::*;
use super::{path_of, Call, Client, Payload, Resend};

/// A filesystem operation FirecREST runs as a command, named as in its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `mkdir [-p]`.
    Mkdir,
    /// `chmod`.
    Chmod,
    /// `rm -r` (small trees; large ones: [`super::TransferOp::Rm`]).
    Rm,
    /// `stat`.
    Stat,
    /// `ls -a`.
    Ls,
    /// A small file, in the request.
    Upload,
    /// A small file, in the reply.
    Download,
    /// `tail -c +N`.
    Tail,
    /// A block of a file (`dd`).
    View,
    /// SHA-256.
    Checksum,
}

impl Op {
    /// The last segment of the operation's path.
    pub fn name(self) -> &'static str {
        match self {
            Op::Mkdir => "mkdir",
            Op::Chmod => "chmod",
            Op::Rm => "rm",
            Op::Stat => "stat",
            Op::Ls => "ls",
            Op::Upload => "upload",
            Op::Download => "download",
            Op::Tail => "tail",
            Op::View => "view",
            Op::Checksum => "checksum",
        }
    }
}

fn ops_segments(system: &str, op: Op) -> Vec<&str> {
    vec!["filesystem", system, "ops", op.name()]
}

/// `/filesystem/{system}/ops/{op}`: the path the client sends `op` to, for
/// messages and the dry-run plan.
pub fn ops_path(system: &str, op: Op) -> String {
    path_of(&ops_segments(system, op))
}

/// Body of a small upload: bytes in memory or a file read for each attempt.
#[derive(Debug, Clone)]
pub enum UploadSource {
    /// Bytes already in memory (the environment file, a packed part).
    Bytes(Vec<u8>),
    /// A local file, streamed from disk.
    File(PathBuf),
}

impl Client {
    /// `mkdir [-p]`. Only `parents = true` is retried (a repeat would fail
    /// with "File exists" otherwise).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        let call = self
            .ops(Method::POST, Op::Mkdir)
            .json(serde_json::json!({"path": path, "parent": parents}))
            .resend(if parents {
                Resend::Idempotent
            } else {
                Resend::OnlyIfUnsent
            });
        self.send(call).await.map(drop)
    }

    /// `chmod`; `mode` in octal, e.g. `"700"`.
    pub async fn chmod(&self, path: &str, mode: &str) -> Result<()> {
        // 2.5.6 reads `path` (mkdir was recorded with both spellings); the
        // published spec names `sourcePath`. Unknown fields are ignored, so
        // both are sent with the same value.
        let call = self
            .ops(Method::PUT, Op::Chmod)
            .json(serde_json::json!({"path": path, "sourcePath": path, "mode": mode}));
        self.send(call).await.map(drop)
    }

    /// `rm -r`. Large trees can hit the 5 s limit (408): see [`Self::transfer_rm`].
    pub async fn rm(&self, path: &str) -> Result<()> {
        let call = self.ops(Method::DELETE, Op::Rm).query("path", path);
        self.send(call).await.map(drop)
    }

    /// `stat`; size and mode as integers.
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        let call = self.ops(Method::GET, Op::Stat).query("path", path);
        Ok(self.json::<Output<FileStat>>(call).await?.output)
    }

    /// `ls -a` of a directory (or one file): hidden entries too, so an
    /// empty listing means an empty directory.
    pub async fn ls(&self, path: &str) -> Result<Vec<FileEntry>> {
        let call = self
            .ops(Method::GET, Op::Ls)
            .query("path", path)
            .query("showHidden", "true");
        Ok(self.json::<Output<Vec<FileEntry>>>(call).await?.output)
    }

    /// Places `source` at `<dir>/<file_name>` (up to `max_ops_file_size`,
    /// else 413). Retried: the same bytes to the same path.
    pub async fn upload(&self, dir: &str, file_name: &str, source: &UploadSource) -> Result<()> {
        let mut call = self.ops(Method::POST, Op::Upload).query("path", dir);
        call.payload = Payload::Upload { file_name, source };
        self.send(call).await.map(drop)
    }

    /// The whole file (about 0.75 x `max_ops_file_size` at most, else 413).
    pub async fn download(&self, path: &str) -> Result<Vec<u8>> {
        let call = self.ops(Method::GET, Op::Download).query("path", path);
        Ok(self.send(call).await?.body)
    }

    /// [`Self::download`] into `writer`, once the whole file arrived (so a
    /// retried download never writes half a file twice). Returns the size.
    pub async fn download_to<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        writer: &mut W,
    ) -> Result<u64> {
        let body = self.download(path).await?;
        writer
            .write_all(&body)
            .await
            .with_context(|| format!("failed to write the download of {path}"))?;
        writer.flush().await.context("failed to flush a download")?;
        Ok(body.len() as u64)
    }

    /// The file from the 0-based byte `offset` on (`tail -c +offset+1`).
    pub async fn tail(&self, path: &str, offset: u64) -> Result<FileTail> {
        let call = self
            .ops(Method::GET, Op::Tail)
            .query("path", path)
            .query("bytes", (offset + 1).to_string())
            .query("skipHeading", "true");
        Ok(self.json::<Output<FileTail>>(call).await?.output)
    }

    /// [`Self::stat`] for the output reads: fails fast (see `Call::output_read`).
    pub async fn output_stat(&self, path: &str) -> Result<FileStat> {
        let call = self
            .ops(Method::GET, Op::Stat)
            .query("path", path)
            .output_read();
        Ok(self.json::<Output<FileStat>>(call).await?.output)
    }

    /// [`Self::tail`] for the output reads: fails fast (see `Call::output_read`).
    /// Unbounded: the reply is everything from `offset` to the end.
    pub async fn output_tail(&self, path: &str, offset: u64) -> Result<FileTail> {
        let call = self
            .ops(Method::GET, Op::Tail)
            .query("path", path)
            .query("bytes", (offset + 1).to_string())
            .query("skipHeading", "true")
            .output_read();
        Ok(self.json::<Output<FileTail>>(call).await?.output)
    }

    /// `view`: the server reads `2 * size` bytes from the `size`-aligned block
    /// holding `offset` (`dd bs=size skip=offset/size count=2`), decodes them
    /// lossily and returns `size` characters from character `offset % size`.
    /// Only an `offset` that is a multiple of `size` starts at that byte.
    /// Bounded (`2 * size` must stay under the server's buffer); fails fast.
    pub async fn output_view(&self, path: &str, offset: u64, size: u64) -> Result<String> {
        let call = self
            .ops(Method::GET, Op::View)
            .query("path", path)
            .query("offset", offset.to_string())
            .query("size", size.to_string())
            .output_read();
        Ok(self.json::<Output<String>>(call).await?.output)
    }

    /// SHA-256 of a remote file.
    pub async fn checksum(&self, path: &str) -> Result<Checksum> {
        let call = self.ops(Method::GET, Op::Checksum).query("path", path);
        Ok(self.json::<Output<Checksum>>(call).await?.output)
    }

    fn ops(&self, method: Method, op: Op) -> Call<'_> {
        Call::new(method, ops_segments(self.system(), op))
    }
}

pub(super) async fn multipart_form(
    file_name: &str,
    source: &UploadSource,
) -> Result<reqwest::multipart::Form> {
    let part = match source {
        UploadSource::Bytes(bytes) => reqwest::multipart::Part::bytes(bytes.clone()),
        UploadSource::File(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("failed to open {} for upload", path.display()))?;
            let len = file
                .metadata()
                .await
                .with_context(|| format!("failed to read the size of {}", path.display()))?
                .len();
            let stream = tokio_util::io::ReaderStream::new(file);
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
        }
    };
    let part = part
        .file_name(file_name.to_owned())
        .mime_str("application/octet-stream")
        .context("failed to build the upload form")?;
    Ok(reqwest::multipart::Form::new().part("file", part))
}
