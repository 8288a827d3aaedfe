//! A plain CONNECT relay (no TLS interception), run as a child process of
//! the bench binary (`FLAG <origin addr>`): the cost of two extra loopback
//! hops through a process on the other core, which no proxy can beat.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const FLAG: &str = "--connect-relay-to";

/// Serve forever on 127.0.0.1:0 (printed as `listening <addr>`) with a
/// single-threaded runtime; every tunnel goes to `origin`.
pub fn serve(origin: SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        loop {
            let (mut down, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = down.set_nodelay(true);
                let (mut buf, mut len) = ([0u8; 512], 0);
                while !buf[..len].ends_with(b"\r\n\r\n") && len < buf.len() {
                    match down.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let Ok(mut up) = TcpStream::connect(origin).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let reply = b"HTTP/1.1 200 Connection established\r\n\r\n";
                if down.write_all(reply).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
}
