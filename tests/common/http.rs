//! A blocking GET with a bearer key, on plain TCP (the tests have no blocking HTTP client).

#![allow(dead_code)]

/// The whole response (status line, headers, body), or empty when the connection failed.
pub fn get(url: &str, key: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
