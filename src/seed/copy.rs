//! COPY text-format rows, and streaming them into Postgres.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;

/// Rows in COPY's text format: tab-separated, `\N` for null, backslash escapes.
#[derive(Default)]
pub struct CopyBuffer(Vec<u8>);

impl CopyBuffer {
    pub fn row(&mut self, fields: &[&str]) {
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                self.0.push(b'\t');
            }
            self.escaped(field);
        }
        self.0.push(b'\n');
    }

    pub fn row_nullable(&mut self, fields: &[Option<&str>]) {
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                self.0.push(b'\t');
            }
            match field {
                Some(value) => self.escaped(value),
                None => self.0.extend_from_slice(b"\\N"),
            }
        }
        self.0.push(b'\n');
    }

    fn escaped(&mut self, value: &str) {
        for byte in value.bytes() {
            match byte {
                b'\\' => self.0.extend_from_slice(b"\\\\"),
                b'\t' => self.0.extend_from_slice(b"\\t"),
                b'\n' => self.0.extend_from_slice(b"\\n"),
                b'\r' => self.0.extend_from_slice(b"\\r"),
                other => self.0.push(other),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// A timestamp as COPY reads it, at microsecond precision.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Runs one `COPY … FROM STDIN` with the given chunks. Returns the rows copied.
pub async fn copy_in(
    pool: &PgPool,
    statement: &'static str,
    chunks: Vec<Vec<u8>>,
) -> Result<u64, sqlx::Error> {
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    for chunk in chunks {
        tx.send(chunk).await.ok();
    }
    drop(tx);
    copy_stream(pool, statement, rx).await
}

/// Runs one `COPY … FROM STDIN`, sending chunks as they arrive until the channel closes.
/// Returns the rows copied.
pub async fn copy_stream(
    pool: &PgPool,
    statement: &'static str,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(statement).await?;
    while let Some(chunk) = chunks.recv().await {
        if !chunk.is_empty() {
            copy.send(chunk).await?;
        }
    }
    copy.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_escapes_and_nulls() {
        let mut buffer = CopyBuffer::default();
        buffer.row_nullable(&[Some("a\tb"), None, Some("back\\slash\nline")]);
        assert_eq!(buffer.take(), b"a\\tb\t\\N\tback\\\\slash\\nline\n");
    }
}
