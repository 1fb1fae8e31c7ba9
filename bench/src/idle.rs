//! Many idle keep-alive connections: what each costs berth in memory, and
//! what they do to the requests of active clients meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Opens `n` connections to `addr`, each answered once (a keep-alive
/// `GET /healthz`) and then left idle. Stops at the first failure (e.g.
/// the process's descriptor limit) and returns what it has.
pub fn open_idle(addr: &str, n: usize) -> (Vec<TcpStream>, Option<String>) {
    let mut conns = Vec::with_capacity(n);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    for i in 0..n {
        let opened = (|| -> std::io::Result<TcpStream> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            // The answer is small; read until its (empty or short) body.
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    return Err(std::io::Error::other("closed before answering"));
                }
                got.extend_from_slice(&buf[..k]);
            }
            if !got.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::Error::other(format!(
                    "answered {}",
                    String::from_utf8_lossy(&got[..got.len().min(40)])
                )));
            }
            Ok(s)
        })();
        match opened {
            Ok(s) => conns.push(s),
            Err(e) => return (conns, Some(format!("connection {i}: {e}"))),
        }
    }
    (conns, None)
}
