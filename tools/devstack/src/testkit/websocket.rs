//! A raw WebSocket client for the tests of the gate's relay: handshake, masked client frames
//! (fragments included), unmasked server frames read whole.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// A masked client frame.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server frame: opcode and payload.
pub fn read_frame(stream: &mut TcpStream) -> (u8, String) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("frame head");
    let length = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).expect("length");
            usize::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).expect("length");
            usize::try_from(u64::from_be_bytes(ext)).expect("length")
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).expect("payload");
    (
        head[0] & 0x0f,
        String::from_utf8_lossy(&payload).into_owned(),
    )
}

/// Opens a WebSocket at `path` of `127.0.0.1:port`; the status line and the stream.
pub fn websocket(port: u16, path: &str) -> (String, TcpStream) {
    websocket_with(port, path, "")
}

/// [`websocket`] with more header lines (each ending in CRLF).
pub fn websocket_with(port: u16, path: &str, more_headers: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: proxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 {more_headers}\r\n"
            )
            .as_bytes(),
        )
        .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).is_err() {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    (head, stream)
}

/// Sends `message` as one text frame and reads the next message, as JSON.
pub fn text(stream: &mut TcpStream, message: &str) -> Value {
    stream
        .write_all(&client_frame(1, true, message.as_bytes()))
        .expect("frame");
    let (opcode, payload) = read_frame(stream);
    assert_eq!(opcode, 1, "{payload}");
    serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{e}: {payload}"))
}
