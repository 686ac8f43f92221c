//! Installing a configuration file: write it atomically, let `nginx -t` judge it, and put the
//! previous file back when nginx refuses it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::nginx::{NginxCommand, NginxError};

/// Installing failed; the previous file is in place again (unless `Restore` says otherwise).
#[derive(Debug, Error)]
pub enum InstallError {
    /// The configuration is empty.
    #[error("the configuration is empty")]
    Empty,
    /// The file could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// nginx refused the configuration (or could not be run); the previous file is back.
    #[error("nginx refused the configuration: {0}")]
    Refused(NginxError),
    /// nginx refused it and the previous file could not be restored either.
    #[error("nginx refused the configuration ({refusal}), and restoring the previous file failed: {message}")]
    Restore {
        /// Why nginx refused.
        refusal: NginxError,
        /// Why restoring failed.
        message: String,
    },
}

/// Manages the one file nginx includes.
#[derive(Debug, Clone)]
pub struct Installer {
    /// The managed file.
    pub config_path: PathBuf,
    /// nginx, for `-t`.
    pub nginx: NginxCommand,
}

impl Installer {
    /// Installs `text` if `nginx -t` accepts the result; otherwise restores what was there.
    pub async fn install(&self, text: &[u8]) -> Result<(), InstallError> {
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(InstallError::Empty);
        }
        let previous = fs::read(&self.config_path).ok();
        write_atomically(&self.config_path, text)?;
        let Err(refusal) = self.nginx.test().await else {
            return Ok(());
        };
        let restored = match &previous {
            Some(previous) => {
                write_atomically(&self.config_path, previous).map_err(|e| e.to_string())
            }
            None => fs::remove_file(&self.config_path).map_err(|e| e.to_string()),
        };
        match restored {
            Ok(()) => Err(InstallError::Refused(refusal)),
            Err(message) => Err(InstallError::Restore { refusal, message }),
        }
    }
}

/// Writes a file through a temporary sibling and a rename, so nginx never reads half a file.
/// The temporary name does not end in `.conf`, so an `include conf.d/*.conf` never sees it.
pub fn write_atomically(path: &Path, content: &[u8]) -> Result<(), InstallError> {
    let error = |e: std::io::Error| InstallError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let temporary = path.with_file_name(format!(".{file_name}.agent-tmp"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(error)?;
    }
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(error)
}

/// Creates the socket directory (mode 0755: nginx workers connect to the sockets in it).
pub fn ensure_socket_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// Removes unix sockets left in `dir` by an nginx that did not exit cleanly (a new nginx
/// could not bind them). Only for use before nginx starts. Returns how many were removed.
pub fn remove_stale_sockets(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let is_socket = entry.file_type().map(|t| t.is_socket()).unwrap_or(false);
        if is_socket && entry.path().extension().is_some_and(|e| e == "sock") {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_replace_files_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf.d/default.conf");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["default.conf"]);
    }

    #[test]
    fn socket_dir_is_created_and_stale_sockets_go() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("run/jsonrpc-proxy");
        ensure_socket_dir(&sockets).unwrap();
        ensure_socket_dir(&sockets).unwrap();
        let mode = fs::metadata(&sockets).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o755, 0o755);
        let _listener =
            std::os::unix::net::UnixListener::bind(sockets.join("backend-0.sock")).unwrap();
        fs::write(sockets.join("notes.sock"), b"a regular file").unwrap();
        assert_eq!(remove_stale_sockets(&sockets).unwrap(), 1);
        assert!(!sockets.join("backend-0.sock").exists());
        assert!(sockets.join("notes.sock").exists());
    }
}
