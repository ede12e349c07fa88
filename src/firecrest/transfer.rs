//! S3-staged transfers (`/filesystem/{system}/transfer/...`, each one a
//! Slurm job on the cluster) and the presigned S3 requests they need (no
//! FirecREST token: the URL carries the signature, so it is never shown).

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, ETAG, RANGE};
use reqwest::{Method, StatusCode};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use url::Url;

use super::models::*;
use super::retry::{Attempt, Failure, Retry};
use super::{
    path_of, retry_after_header, short_text, url_without_query, ApiError, Call, Client, Resend,
};

/// A transfer FirecREST runs as a Slurm job, named as in its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOp {
    /// An S3 object to a file on the cluster.
    Upload,
    /// A file on the cluster to an S3 object.
    Download,
    /// `rm -r` of a tree too large for the 5 s limit.
    Rm,
}

impl TransferOp {
    /// The last segment of the transfer's path.
    pub fn name(self) -> &'static str {
        match self {
            TransferOp::Upload => "upload",
            TransferOp::Download => "download",
            TransferOp::Rm => "rm",
        }
    }
}

fn transfer_segments(system: &str, op: TransferOp) -> Vec<&str> {
    vec!["filesystem", system, "transfer", op.name()]
}

/// `/filesystem/{system}/transfer/{op}`: the path the client starts `op`
/// at, for messages and the dry-run plan.
pub fn transfer_path(system: &str, op: TransferOp) -> String {
    path_of(&transfer_segments(system, op))
}

impl Client {
    /// Starts an S3-staged upload to the file `path` of `size` bytes: presigned
    /// part URLs and the transfer job that copies the object into place.
    /// Not resent on an ambiguous failure: each call queues a job.
    pub async fn transfer_upload(&self, path: &str, size: u64) -> Result<TransferResponse> {
        let call = self
            .transfer(Method::POST, TransferOp::Upload)
            .json(serde_json::json!({
                "path": path,
                "transferDirectives": {"transferMethod": "s3", "fileSize": size},
            }))
            .resend(Resend::OnlyIfUnsent);
        self.json(call).await
    }

    /// Starts an S3-staged download of `path`; the URL works once the
    /// transfer job is COMPLETED.
    pub async fn transfer_download(&self, path: &str) -> Result<TransferResponse> {
        let call = self
            .transfer(Method::POST, TransferOp::Download)
            .json(serde_json::json!({
                "path": path,
                "transferDirectives": {"transferMethod": "s3"},
            }))
            .resend(Resend::OnlyIfUnsent);
        self.json(call).await
    }

    /// `rm -r` as a job, for trees too large for the 5 s limit.
    pub async fn transfer_rm(&self, path: &str) -> Result<TransferJob> {
        let call = self
            .transfer(Method::DELETE, TransferOp::Rm)
            .query("path", path);
        Ok(self.json::<TransferJobResponse>(call).await?.transfer_job)
    }

    // ---- presigned S3 (no FirecREST token) -------------------------------

    /// PUTs one part of a multipart upload; returns its `ETag`.
    pub async fn s3_put_part(&self, url: &str, part: Vec<u8>) -> Result<String> {
        let reply = self
            .s3(Method::PUT, url, None, |req| req.body(part.clone()))
            .await?;
        let etag = reply
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        etag.with_context(|| {
            format!(
                "PUT {}: S3 sent no ETag for the part",
                url_without_query(url)
            )
        })
    }

    /// Completes a multipart upload from `(part number, ETag)` pairs.
    pub async fn s3_complete_upload(&self, url: &str, parts: &[(u32, String)]) -> Result<()> {
        let body = complete_multipart_xml(parts);
        let reply = self
            .s3(Method::POST, url, None, |req| {
                req.header(CONTENT_TYPE, "application/xml")
                    .body(body.clone())
            })
            .await?;
        // S3 can answer 200 and still report an error in the body.
        let text = reply
            .text()
            .await
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .with_context(|| {
                format!("POST {}: reading the reply failed", url_without_query(url))
            })?;
        if text.contains("<Error>") {
            return Err(s3_error(&Method::POST, url, 200, text.as_bytes(), None).into());
        }
        Ok(())
    }

    /// GETs an object from byte `start` on into `writer`; a broken transfer
    /// resumes where it stopped. Returns the bytes written.
    pub async fn s3_get_object<W: AsyncWrite + Unpin + Send>(
        &self,
        url: &str,
        start: u64,
        writer: &mut W,
    ) -> Result<u64> {
        let mut download = S3Download {
            client: self,
            url,
            shown: url_without_query(url),
            start,
            written: 0,
            writer,
        };
        Retry::new(self.inner.retry, format!("GET {}", download.shown))
            .note("resuming an S3 download")
            .run(&mut download)
            .await
    }

    /// A presigned S3 request, retried on transient failures; returns the
    /// successful response with its body unread.
    async fn s3(
        &self,
        method: Method,
        url: &str,
        range: Option<String>,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync,
    ) -> Result<reqwest::Response> {
        let shown = url_without_query(url);
        let parsed =
            Url::parse(url).with_context(|| format!("invalid presigned URL for {shown}"))?;
        let mut request = S3Request {
            client: self,
            method: &method,
            url,
            parsed,
            shown: &shown,
            range,
            build,
        };
        Retry::new(self.inner.retry, format!("{method} {shown}"))
            .run(&mut request)
            .await
    }

    fn transfer(&self, method: Method, op: TransferOp) -> Call<'_> {
        Call::new(method, transfer_segments(self.system(), op))
    }
}

/// One presigned S3 request; the successful response has its body unread.
struct S3Request<'a, F> {
    client: &'a Client,
    method: &'a Method,
    url: &'a str,
    parsed: Url,
    shown: &'a str,
    range: Option<String>,
    build: F,
}

impl<F> Attempt for S3Request<'_, F>
where
    F: Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync,
{
    type Output = reqwest::Response;

    async fn attempt(&mut self) -> Result<reqwest::Response, Failure> {
        let (method, shown) = (self.method, self.shown);
        let mut req = self
            .client
            .inner
            .http
            .request(method.clone(), self.parsed.clone());
        if let Some(range) = &self.range {
            req = req.header(RANGE, range);
        }
        // The body of a GET is streamed by the caller: no total timeout (the
        // client's read timeout catches a stall).
        if *method != Method::GET {
            req = req.timeout(self.client.inner.request_timeout);
        }
        match (self.build)(req).send().await {
            Ok(resp) if resp.status().is_success() => Ok(resp),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = retry_after_header(resp.headers());
                let body = resp.bytes().await.unwrap_or_default();
                let err = s3_error(method, self.url, status, &body, retry_after);
                Err(Failure::Judge(err.into()))
            }
            Err(e) => Err(Failure::Judge(
                anyhow::Error::new(e.without_url())
                    .context(format!("{method} {shown}: request failed")),
            )),
        }
    }
}

/// A presigned S3 GET into a writer; a broken stream resumes where it stopped.
struct S3Download<'a, W> {
    client: &'a Client,
    url: &'a str,
    shown: String,
    start: u64,
    written: u64,
    writer: &'a mut W,
}

impl<W: AsyncWrite + Unpin + Send> Attempt for S3Download<'_, W> {
    type Output = u64;

    async fn attempt(&mut self) -> Result<u64, Failure> {
        let shown = &self.shown;
        let from = self.start + self.written;
        let range = (from > 0).then(|| format!("bytes={from}-"));
        // `s3` already retried the request itself.
        let reply = self
            .client
            .s3(Method::GET, self.url, range, |req| req)
            .await
            .map_err(Failure::Fatal)?;
        if from > 0 && reply.status() != StatusCode::PARTIAL_CONTENT {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "GET {shown}: S3 ignored the Range request"
            )));
        }
        let mut stream = reply.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    // Only a broken stream resumes here.
                    let broken = err.is_body() || err.is_timeout();
                    let err = anyhow::Error::new(err.without_url())
                        .context(format!("GET {shown}: reading the object failed"));
                    return Err(if broken {
                        Failure::Judge(err)
                    } else {
                        Failure::Fatal(err)
                    });
                }
            };
            self.writer
                .write_all(&chunk)
                .await
                .context("failed to write a downloaded object")
                .map_err(Failure::Fatal)?;
            self.written += chunk.len() as u64;
        }
        self.writer
            .flush()
            .await
            .context("failed to flush a downloaded object")
            .map_err(Failure::Fatal)?;
        Ok(self.written)
    }
}

/// An `ApiError` from an S3 XML error reply (`<Code>`, `<Message>`).
fn s3_error(
    method: &Method,
    url: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ApiError {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    ApiError {
        status,
        method: method.to_string(),
        path: url_without_query(url),
        message: tag("Message").unwrap_or_else(|| short_text(body)),
        error_type: tag("Code"),
        retry_after,
        request_id: None,
    }
}

/// The `CompleteMultipartUpload` document, parts in ascending order.
fn complete_multipart_xml(parts: &[(u32, String)]) -> String {
    let mut sorted: Vec<&(u32, String)> = parts.iter().collect();
    sorted.sort_by_key(|(number, _)| *number);
    let mut xml = String::from(
        r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
    );
    for (number, etag) in sorted {
        let etag = etag
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        xml.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_xml_sorts_parts_like_the_recording() {
        let parts = [
            (2, "\"e57bff36df22310f1c48ec0998eb3d7a\"".to_string()),
            (1, "\"72dfb84b33bc48fe1fbac9ff188a97dc\"".to_string()),
        ];
        // Byte for byte what the recorded client sent.
        assert_eq!(
            complete_multipart_xml(&parts),
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Part><PartNumber>1</PartNumber><ETag>\"72dfb84b33bc48fe1fbac9ff188a97dc\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"e57bff36df22310f1c48ec0998eb3d7a\"</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn s3_errors_read_code_and_message() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>EntityTooSmall</Code><Message>Your proposed upload is smaller</Message></Error>";
        let e = s3_error(
            &Method::POST,
            "http://s3/b/k?X-Amz-Signature=s",
            400,
            body,
            None,
        );
        assert_eq!(e.error_type.as_deref(), Some("EntityTooSmall"));
        assert_eq!(e.message, "Your proposed upload is smaller");
        assert_eq!(e.path, "http://s3/b/k");
    }
}
