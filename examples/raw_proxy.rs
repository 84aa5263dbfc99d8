//! The least a tokio HTTP/1.1 proxy can do, as a ceiling for `scripts/bench/ceiling.sh`: how
//! fast a proxy in Rust on tokio forwards on this machine when it uses neither hyper nor any
//! of jwtgate's work. It is not a proxy to run: it forwards each request's bytes unchanged
//! (no header hygiene, no `Host` rewrite), knows only `Content-Length` bodies that fit in its
//! buffer, and gives up on a connection at the first thing it does not know.
//!
//! `cargo run --release --example raw_proxy -- LISTEN UPSTREAM`: one current-thread runtime;
//! each client connection carries one upstream connection, as jwtgate's HTTP/1.1 connections
//! do, and relays one request, then its response, at a time.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A message (head and body) larger than this ends the connection.
const MAX_MESSAGE: usize = 64 * 1024;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap_or("127.0.0.1:18087".into()).parse()?;
    let upstream: SocketAddr = args.next().unwrap_or("127.0.0.1:18081".into()).parse()?;
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        client.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = relay(client, upstream).await;
        });
    }
}

/// Relays requests from `client` to a connection of its own to `upstream`, and the responses
/// back, until either side closes or sends something this proxy does not handle.
async fn relay(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let mut request = BytesMut::with_capacity(8 * 1024);
    let mut response = BytesMut::with_capacity(8 * 1024);
    loop {
        let len = read_message(&mut client, &mut request, Side::Request).await?;
        up.write_all(&request[..len]).await?;
        request.advance(len);
        let len = read_message(&mut up, &mut response, Side::Response).await?;
        client.write_all(&response[..len]).await?;
        response.advance(len);
    }
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// Reads from `stream` into `buf` until it holds one whole message; returns its length. The
/// head is parsed until it is complete, not again while the body arrives.
async fn read_message(stream: &mut TcpStream, buf: &mut BytesMut, side: Side) -> io::Result<usize> {
    let mut len = None;
    loop {
        if len.is_none() {
            len = message_len(buf, side)?;
        }
        if let Some(len) = len
            && buf.len() >= len
        {
            return Ok(len);
        }
        if buf.len() >= MAX_MESSAGE {
            return Err(io::Error::other("message too large"));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The length of the message at the start of `buf` (its head and its `Content-Length` body),
/// or `None` while the head is incomplete.
fn message_len(buf: &[u8], side: Side) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let parsed = match side {
        Side::Request => httparse::Request::new(&mut headers).parse(buf),
        Side::Response => httparse::Response::new(&mut headers).parse(buf),
    };
    let head = match parsed.map_err(io::Error::other)? {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return Ok(None),
    };
    let mut body = 0;
    for header in headers.iter().take_while(|h| !h.name.is_empty()) {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::other("chunked bodies are not handled"));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| io::Error::other("bad Content-Length"))?;
        }
    }
    Ok(Some(head + body))
}
