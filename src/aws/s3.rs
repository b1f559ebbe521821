//! The archive bucket: one `PutObject` per batch, and the reads of `tmc-relay replay`.

use aws_sdk_s3::primitives::ByteStream;
use tokio::time::Instant;

use super::errors::port_error;
use super::{within, Meter};
use crate::relay::archive::{Archive, ArchiveFuture, ArchiveLocation};
use crate::relay::ports::PortError;
use crate::replay::ArchiveReader;

/// Writes batch objects into the archive's bucket.
pub struct S3Archive {
    client: aws_sdk_s3::Client,
    bucket: String,
    meter: Meter,
}

impl S3Archive {
    pub fn new(client: aws_sdk_s3::Client, location: &ArchiveLocation) -> Self {
        Self {
            client,
            bucket: location.bucket.clone(),
            meter: Meter::default(),
        }
    }

    /// PutObject requests made.
    pub fn requests(&self) -> u64 {
        self.meter.requests()
    }
}

impl Archive for S3Archive {
    fn put(&self, key: String, body: Vec<u8>, deadline: Instant) -> ArchiveFuture<'_> {
        Box::pin(async move {
            self.meter.request();
            let call = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/x-ndjson")
                .body(ByteStream::from(body))
                .send();
            within(deadline, "PutObject", call)
                .await?
                .map(|_| ())
                .map_err(|e| port_error("PutObject", &e))
        })
    }
}

/// Reads the archive for `tmc-relay replay`.
pub struct S3Reader {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Reader {
    pub fn new(client: aws_sdk_s3::Client, location: &ArchiveLocation) -> Self {
        Self {
            client,
            bucket: location.bucket.clone(),
        }
    }
}

/// One S3 read may take this long.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl ArchiveReader for S3Reader {
    async fn list(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let call = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send();
            let page = within(Instant::now() + READ_TIMEOUT, "ListObjectsV2", call)
                .await?
                .map_err(|e| port_error("ListObjectsV2", &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(keys),
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, PortError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        let call = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        let got = within(deadline, "GetObject", call)
            .await?
            .map_err(|e| port_error("GetObject", &e))?;
        let bytes = within(deadline, "GetObject", got.body.collect())
            .await?
            .map_err(|e| PortError::ambiguous("GetObject", e.to_string()))?;
        Ok(bytes.into_bytes().to_vec())
    }
}
