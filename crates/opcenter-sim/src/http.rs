//! A minimal HTTP/1.1 client over a tokio `TcpStream`: enough for `POST /v1/reports`
//! and `GET /v1/incidents/{id}` (`shared/PROTOCOL.md` section 8) with keep-alive,
//! `Content-Length` and chunked bodies.
//!
//! Owns: request writing and response parsing. Must never: follow redirects, speak TLS,
//! or talk to anything but the address it is given.

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body accepted (the server's answers are small).
const MAX_BODY: usize = 16 << 20;

/// One keep-alive connection, reopened when the server closes it.
pub struct HttpClient {
    server: String,
    conn: Option<BufReader<TcpStream>>,
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpClient {
    /// A client for `host:port`; connects lazily.
    pub fn new(server: &str) -> Self {
        HttpClient {
            server: server.to_owned(),
            conn: None,
        }
    }

    /// Sends one request (with `Authorization: Bearer` when `bearer` is given), retrying
    /// once on a fresh connection if a kept-alive one was closed under us.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, bearer, json_body).await {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.conn = None;
                self.try_request(method, path, bearer, json_body).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        if self.conn.is_none() {
            let tcp = TcpStream::connect(&self.server)
                .await
                .with_context(|| format!("connect {}", self.server))?;
            tcp.set_nodelay(true)?;
            self.conn = Some(BufReader::new(tcp));
        }
        // Just ensured above.
        let conn = self.conn.as_mut().expect("connection present");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.server);
        if let Some(t) = bearer {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        let res = read_response(conn, &out).await;
        match res {
            Ok((resp, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

async fn read_response(conn: &mut BufReader<TcpStream>, request: &[u8]) -> anyhow::Result<(Response, bool)> {
    conn.get_mut().write_all(request).await?;
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        bail!("connection closed before the status line");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>().context("content-length")?),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => keep = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let size_hex = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16).context("chunk size")?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    if conn.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len() + size > MAX_BODY {
                bail!("response too large");
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            conn.read_exact(&mut crlf).await?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            bail!("response too large");
        }
        body.resize(n, 0);
        conn.read_exact(&mut body).await?;
    } else if status != 204 && status != 304 {
        conn.read_to_end(&mut body).await?;
        keep = false;
    }
    Ok((Response { status, body }, keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = BufReader::new(s);
            for reply in [
                &b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"[..],
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..],
            ] {
                // Read one request head (and its body, if any) before answering.
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    s.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut b = vec![0; len];
                s.read_exact(&mut b).await.unwrap();
                s.get_mut().write_all(reply).await.unwrap();
            }
        });
        let mut c = HttpClient::new(&addr);
        let r = c
            .request("POST", "/v1/reports", Some("t"), Some(b"{\"key\":1}"))
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let r = c.request("GET", "/v1/incidents/x", None, None).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
    }
}
