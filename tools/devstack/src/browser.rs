//! A real browser for the tests: headless Chromium (Debian's `chromium`) loading a page and
//! giving back its document once its scripts are done, and a loopback server of fixed files
//! for the pages it loads.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::Program;
use crate::Error;

const CHROMIUM: Program = Program {
    name: "chromium",
    env_var: "CHROMIUM_BIN",
    file_name: "chromium",
    fallbacks: &["/usr/bin/chromium"],
};

/// Longest a page load may take, scripts included.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// The document of `url` after its scripts ran for up to `budget` of the page's own (virtual)
/// time, as headless Chromium serialises it (`--dump-dom`).
pub fn page_dom(url: &str, budget: Duration) -> Result<String, Error> {
    let path = CHROMIUM.locate()?;
    let profile = tempfile::tempdir().map_err(|e| Error::io("a Chromium profile", e))?;
    let out = profile.path().join("dom.html");
    let file = std::fs::File::create(&out).map_err(|e| Error::io("the DOM file", e))?;
    let mut child = Command::new(&path)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: CHROMIUM.name.into(),
            path: path.clone(),
            source,
        })?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < LOAD_LIMIT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::io(
                    "headless Chromium",
                    std::io::Error::other(format!("{url} was not loaded within {LOAD_LIMIT:?}")),
                ));
            }
        }
    }
    std::fs::read_to_string(&out).map_err(|e| Error::io("the DOM file", e))
}

/// Serves fixed files on `127.0.0.1` (`GET` only; anything else is 404) until dropped.
pub struct PageServer {
    /// Its port.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    /// Serves `files` (path, content type, body) on `port`.
    pub fn start(port: u16, files: Vec<(String, String, Vec<u8>)>) -> Result<Self, Error> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| Error::io(format!("listening on 127.0.0.1:{port}"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &files);
                    }
                }
            })
        };
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(mut stream: TcpStream, files: &[(String, String, Vec<u8>)]) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut lines = BufReader::new(reader).lines();
    let request = lines.next().and_then(Result::ok).unwrap_or_default();
    for line in lines.by_ref() {
        if line.map_or(true, |l| l.is_empty()) {
            break;
        }
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next(), words.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    let found = files.iter().find(|(p, _, _)| p == path);
    let (status, kind, body): (&str, &str, &[u8]) = match (method, found) {
        (Some("GET"), Some((_, kind, body))) => ("200 OK", kind, body),
        _ => ("404 Not Found", "text/plain", b"not found"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// ethers' browser build (UMD, defines `window.ethers`), as `scripts/install-deps.sh`
/// installs it.
pub fn ethers_browser_build() -> Result<Vec<u8>, Error> {
    let path: PathBuf =
        crate::repo_root().join(".tools/node/node_modules/ethers/dist/ethers.umd.min.js");
    std::fs::read(&path).map_err(|e| {
        Error::io(
            format!("{} (run scripts/install-deps.sh)", path.display()),
            e,
        )
    })
}
