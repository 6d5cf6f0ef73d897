//! The S3 backend: the state is one object, the lock another (`<key>.lock`), both written
//! with S3 conditional requests, so no second service (DynamoDB) has to be set up.
//!
//! - Lock: created with `If-None-Match: *` (only one creator wins), renewed as a lease with
//!   `If-Match: <its ETag>` by a background task, released with a conditional delete. A lock
//!   whose lease ran out is reported as stale but only `kstack state unlock <env> <id>` removes it.
//! - State: every write is conditional on the ETag kstack read (`If-Match`), or on there being
//!   none (`If-None-Match: *`), so a writer that lost a race never overwrites the winner.
//! - The bucket must have versioning on, so every state write can be recovered.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, ServerSideEncryption};

use super::lock::{Lock, LockError, LockInfo};
use super::time::rfc3339_in;
use super::StateError;
use crate::model::S3State;

/// How long a lock holds without renewal, and how often a live holder renews it.
const LEASE: Duration = Duration::from_secs(60);
const RENEW_EVERY: Duration = Duration::from_secs(20);

pub struct S3Backend {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    kms_key_id: Option<String>,
    environment: String,
    /// The state object's ETag as last read or written: `Some(None)` when it did not exist.
    version: Mutex<Option<Option<String>>>,
    /// The runtime the blocking methods run their requests on.
    handle: tokio::runtime::Handle,
}

/// Runs `future` to completion from synchronous code, inside or outside the runtime.
fn block<F: Future>(handle: &tokio::runtime::Handle, future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| handle.block_on(future)),
        Err(_) => handle.block_on(future),
    }
}

/// Whether S3 refused a conditional request because its condition did not hold.
fn is_precondition<E: ProvideErrorMetadata>(error: &aws_sdk_s3::error::SdkError<E>) -> bool {
    let status = error.raw_response().map(|r| r.status().as_u16());
    matches!(status, Some(412 | 409)) || matches!(error.code(), Some("PreconditionFailed" | "ConditionalRequestConflict"))
}

fn is_missing<E: ProvideErrorMetadata>(error: &aws_sdk_s3::error::SdkError<E>) -> bool {
    error.raw_response().map(|r| r.status().as_u16()) == Some(404) || matches!(error.code(), Some("NoSuchKey" | "NotFound"))
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(error: &aws_sdk_s3::error::SdkError<E>) -> String {
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => aws_smithy_types::error::display::DisplayErrorContext(error).to_string(),
    }
}

impl S3Backend {
    /// Connects to the bucket and checks that versioning is on.
    pub async fn connect(location: &S3State, environment: &str) -> Result<S3Backend, StateError> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(location.region.clone()))
            .load()
            .await;
        // A custom endpoint (an S3-compatible store, or an emulator) seldom serves
        // bucket-named host names; AWS itself gets the default, virtual-hosted style.
        let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL").is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let client = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(custom_endpoint).build());
        let backend = S3Backend {
            client,
            bucket: location.bucket.clone(),
            key: location.key.clone(),
            kms_key_id: location.kms_key_id.clone(),
            environment: environment.to_owned(),
            version: Mutex::new(None),
            handle: tokio::runtime::Handle::current(),
        };
        let versioning = backend
            .client
            .get_bucket_versioning()
            .bucket(&backend.bucket)
            .send()
            .await
            .map_err(|e| StateError::Read { location: backend.location(), message: describe(&e) })?;
        if versioning.status() != Some(&BucketVersioningStatus::Enabled) {
            return Err(StateError::Unversioned { bucket: backend.bucket.clone() });
        }
        Ok(backend)
    }

    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn lock_key(&self) -> String {
        format!("{}.lock", self.key)
    }

    /// The state object's bytes, remembering its version for the next write.
    pub fn read(&self) -> Result<Option<Vec<u8>>, StateError> {
        block(&self.handle, async {
            let got = self.client.get_object().bucket(&self.bucket).key(&self.key).send().await;
            let (bytes, etag) = match got {
                Ok(output) => {
                    let etag = output.e_tag().map(str::to_owned);
                    let body = output.body.collect().await.map_err(|e| StateError::Read { location: self.location(), message: e.to_string() })?;
                    (Some(body.into_bytes().to_vec()), etag)
                }
                Err(error) if is_missing(&error) => (None, None),
                Err(error) => return Err(StateError::Read { location: self.location(), message: describe(&error) }),
            };
            if let Ok(mut version) = self.version.lock() {
                *version = Some(etag);
            }
            Ok(bytes)
        })
    }

    /// Writes the state object if it is still the version last read (or written).
    pub fn write(&self, bytes: &[u8]) -> Result<(), StateError> {
        let known = self.version.lock().ok().and_then(|v| v.clone());
        // Never read: only a first write is safe.
        let expected = known.unwrap_or(None);
        block(&self.handle, async {
            let mut put = self.client.put_object().bucket(&self.bucket).key(&self.key).body(ByteStream::from(bytes.to_vec()));
            put = match &expected {
                Some(etag) => put.if_match(etag),
                None => put.if_none_match("*"),
            };
            if let Some(kms) = &self.kms_key_id {
                put = put.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id(kms);
            }
            match put.send().await {
                Ok(output) => {
                    if let Ok(mut version) = self.version.lock() {
                        *version = Some(output.e_tag().map(str::to_owned));
                    }
                    Ok(())
                }
                Err(error) if is_precondition(&error) => Err(StateError::Conflict { location: self.location() }),
                Err(error) => Err(StateError::Write { location: self.location(), message: describe(&error) }),
            }
        })
    }

    /// Deletes the state object after a migration elsewhere (versioning keeps it), if it is
    /// still the version read.
    pub fn retire(&self) -> Result<(), StateError> {
        let expected = self.version.lock().ok().and_then(|v| v.clone()).flatten();
        block(&self.handle, async {
            let mut delete = self.client.delete_object().bucket(&self.bucket).key(&self.key);
            if let Some(etag) = &expected {
                delete = delete.if_match(etag);
            }
            match delete.send().await {
                Ok(_) => Ok(()),
                Err(error) if is_precondition(&error) => Err(StateError::Conflict { location: self.location() }),
                Err(error) => Err(StateError::Write { location: self.location(), message: describe(&error) }),
            }
        })
    }

    fn lock_error(&self, error: String) -> LockError {
        LockError::Io { location: format!("s3://{}/{}", self.bucket, self.lock_key()), message: error }
    }

    /// The lock object's holder and ETag, if there is one.
    async fn holder(&self) -> Result<Option<(LockInfo, String)>, LockError> {
        match self.client.get_object().bucket(&self.bucket).key(self.lock_key()).send().await {
            Ok(output) => {
                let etag = output.e_tag().unwrap_or_default().to_owned();
                let body = output.body.collect().await.map_err(|e| self.lock_error(e.to_string()))?.into_bytes();
                Ok(Some((serde_json::from_slice(&body).unwrap_or_else(|_| LockInfo::unknown()), etag)))
            }
            Err(error) if is_missing(&error) => Ok(None),
            Err(error) => Err(self.lock_error(describe(&error))),
        }
    }

    pub fn lock(&self, command: &str) -> Result<Lock, LockError> {
        let mut info = LockInfo::ours(command);
        info.expires = Some(rfc3339_in(LEASE.as_secs()));
        let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
        let created = block(&self.handle, self.client.put_object().bucket(&self.bucket).key(self.lock_key()).body(ByteStream::from(body)).if_none_match("*").send());
        let etag = match created {
            Ok(output) => output.e_tag().unwrap_or_default().to_owned(),
            Err(error) if is_precondition(&error) => {
                let (held, _) = block(&self.handle, self.holder())?.unwrap_or_else(|| (LockInfo::unknown(), String::new()));
                let stale = held.is_stale();
                return Err(LockError::Held { environment: self.environment.clone(), info: Box::new(held), stale });
            }
            Err(error) => return Err(self.lock_error(describe(&error))),
        };
        let etag = Arc::new(Mutex::new(etag));
        let renewal = self.handle.spawn(renew(self.client.clone(), self.bucket.clone(), self.lock_key(), info, Arc::clone(&etag)));
        let (client, bucket, key, handle) = (self.client.clone(), self.bucket.clone(), self.lock_key(), self.handle.clone());
        let release = move || {
            renewal.abort();
            let current = etag.lock().map(|e| e.clone()).unwrap_or_default();
            // Only our lock: if someone broke and retook it, theirs stays.
            let _ = block(&handle, client.delete_object().bucket(bucket).key(key).if_match(current).send());
        };
        Ok(Lock { release: Some(Box::new(release)) })
    }

    /// Removes the lock if it is the one named `id`; the id is required, since the holder may
    /// be alive on another machine. Returns who held it.
    pub fn unlock(&self, id: Option<&str>) -> Result<Option<LockInfo>, LockError> {
        block(&self.handle, async {
            let Some((info, etag)) = self.holder().await? else { return Ok(None) };
            let Some(given) = id else {
                return Err(LockError::IdNeeded { environment: self.environment.clone(), info: Box::new(info) });
            };
            if given != info.id {
                return Err(LockError::WrongId { environment: self.environment.clone(), held: info.id, given: given.to_owned() });
            }
            match self.client.delete_object().bucket(&self.bucket).key(self.lock_key()).if_match(etag).send().await {
                Ok(_) => Ok(Some(info)),
                // Renewed or retaken meanwhile: its holder is alive.
                Err(error) if is_precondition(&error) => {
                    Err(LockError::Io { location: self.lock_key(), message: String::from("the lock changed while it was being removed: its holder is alive") })
                }
                Err(error) => Err(self.lock_error(describe(&error))),
            }
        })
    }
}

/// Extends the lease until the lock is released (the task is aborted) or taken from us.
async fn renew(client: aws_sdk_s3::Client, bucket: String, key: String, mut info: LockInfo, etag: Arc<Mutex<String>>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        info.expires = Some(rfc3339_in(LEASE.as_secs()));
        let current = etag.lock().map(|e| e.clone()).unwrap_or_default();
        let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
        match client.put_object().bucket(&bucket).key(&key).body(ByteStream::from(body)).if_match(current).send().await {
            Ok(output) => {
                if let (Ok(mut etag), Some(new)) = (etag.lock(), output.e_tag()) {
                    *etag = new.to_owned();
                }
            }
            Err(error) => {
                tracing::warn!("could not renew the lock s3://{bucket}/{key}: {}", describe(&error));
                if is_precondition(&error) {
                    return;
                }
            }
        }
    }
}
