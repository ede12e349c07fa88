//! File operations on a file system this process sees directly: the
//! `local` backend's, and the `slurm` backend's (a login node shares the
//! cluster's file system), so both backends' "remote" paths are local paths.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{OutputChunk, StagedWorkspace};

/// Most bytes one `read_output` call returns, so a huge log is streamed in
/// pieces instead of loaded whole.
const MAX_READ: u64 = 4 * 1024 * 1024;

/// The one archive part a local upload produces.
const WORKSPACE_PART: &str = "workspace.tar.gz";

/// File operations on paths this process can open directly. Used by the
/// `local` and `slurm` backends, whose "remote" paths are local paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl LocalFiles {
    /// Creates `path` and its parents; the leaf gets mode 0700.
    pub async fn create_private_dir(&self, path: &str) -> Result<()> {
        tokio::fs::create_dir_all(path)
            .await
            .with_context(|| format!("failed to create directory {path}"))?;
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .await
            .with_context(|| format!("failed to make directory {path} private"))
    }

    /// The permission bits of `path`; `None` when it does not exist.
    pub async fn mode(&self, path: &str) -> Result<Option<u32>> {
        match tokio::fs::metadata(path).await {
            Ok(meta) => Ok(Some(meta.permissions().mode() & 0o7777)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!("failed to stat {path}"))),
        }
    }

    /// Writes `dir/name` with mode 0600, replacing an older file.
    pub async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()> {
        check_file_name(name)?;
        let path = Path::new(dir).join(name);
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("failed to create file {}", path.display()))?;
            // An existing file keeps its mode on open; make sure it is private.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("failed to make file {} private", path.display()))?;
            file.write_all(&contents)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("failed to write file {}", path.display()))
        })
        .await
        .with_context(|| format!("failed to write file {shown}"))?
    }

    /// Copies the archive into `dir` as the single part `workspace.tar.gz`.
    pub async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace> {
        let target = Path::new(dir).join(WORKSPACE_PART);
        tokio::fs::copy(archive, &target).await.with_context(|| {
            format!(
                "failed to copy workspace archive {} to {}",
                archive.display(),
                target.display()
            )
        })?;
        tokio::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
            .await
            .with_context(|| format!("failed to make {} private", target.display()))?;
        Ok(StagedWorkspace {
            parts: vec![WORKSPACE_PART.to_string()],
            transfer_job: None,
        })
    }

    /// Reads raw bytes from `offset` on (at most [`MAX_READ`]). A file that
    /// does not exist yet (the job has not started) reads as empty.
    pub async fn read_output(&self, path: &str, offset: u64) -> Result<OutputChunk> {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(OutputChunk::default())
            }
            Err(err) => return Err(err).with_context(|| format!("failed to open output {path}")),
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .with_context(|| format!("failed to seek output {path} to byte {offset}"))?;
        let mut data = Vec::new();
        file.take(MAX_READ)
            .read_to_end(&mut data)
            .await
            .with_context(|| format!("failed to read output {path} from byte {offset}"))?;
        let advance = data.len() as u64;
        Ok(OutputChunk {
            data,
            advance,
            more: advance == MAX_READ,
        })
    }

    /// Copies `remote` to `local`, creating `local`'s parent directories.
    pub async fn download(&self, remote: &str, local: &Path) -> Result<bool> {
        match tokio::fs::metadata(remote).await {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => bail!("failed to download {remote}: not a regular file"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err).with_context(|| format!("failed to look at {remote}")),
        }
        if let Some(parent) = local.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("failed to create directory {}", parent.display()))?;
        }
        match tokio::fs::copy(remote, local).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => {
                Err(err).with_context(|| format!("failed to copy {remote} to {}", local.display()))
            }
        }
    }

    /// Removes a directory tree; refuses relative paths and `/`.
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        let p = Path::new(path);
        if !p.is_absolute() || p.parent().is_none() {
            bail!("refusing to remove directory {path:?}: not an absolute path below /");
        }
        match tokio::fs::remove_dir_all(p).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("failed to remove directory {path}")),
        }
    }
}

/// A file name must stay inside its directory.
fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("invalid file name {name:?}: must be a plain name without '/'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_must_stay_in_their_directory() {
        for bad in ["", ".", "..", "a/b", "/etc/passwd"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("env.sh").unwrap();
    }

    #[tokio::test]
    async fn local_files_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/run");
        let dir_s = dir.to_str().unwrap();
        let files = LocalFiles;
        files.create_private_dir(dir_s).await.unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        files
            .put_file(dir_s, "env", b"old-and-longer".to_vec())
            .await
            .unwrap();
        files.put_file(dir_s, "env", b"new".to_vec()).await.unwrap();
        let env = dir.join("env");
        assert_eq!(std::fs::read(&env).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let archive = tmp.path().join("ws.tar.gz");
        std::fs::write(&archive, b"archive-bytes").unwrap();
        let staged = files.upload_workspace(&archive, dir_s).await.unwrap();
        assert_eq!(staged.parts, vec!["workspace.tar.gz".to_string()]);
        assert_eq!(staged.transfer_job, None);
        assert_eq!(
            std::fs::read(dir.join("workspace.tar.gz")).unwrap(),
            b"archive-bytes"
        );

        let local = tmp.path().join("back/x/copy");
        assert!(files.download(env.to_str().unwrap(), &local).await.unwrap());
        assert_eq!(std::fs::read(&local).unwrap(), b"new");
        let missing = dir.join("missing");
        assert!(!files
            .download(missing.to_str().unwrap(), &local)
            .await
            .unwrap());

        let chunk = files
            .read_output(missing.to_str().unwrap(), 0)
            .await
            .unwrap();
        assert_eq!(chunk, OutputChunk::default());

        files.remove_dir(dir_s).await.unwrap();
        assert!(!dir.exists());
        files.remove_dir(dir_s).await.unwrap();
        assert!(files.remove_dir("relative/path").await.is_err());
        assert!(files.remove_dir("/").await.is_err());
    }
}
