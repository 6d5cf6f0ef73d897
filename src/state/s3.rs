//! The S3 backend: the state is one object, the lock another (`<key>.lock`), both written
//! with S3 conditional requests, so no second service (DynamoDB) has to be set up.
//!
//! - Lock: created with `If-None-Match: *` (only one creator wins), renewed as a lease with
//!   `If-Match: <its ETag>` by a background task, released with a conditional delete. A lock
//!   whose lease ran out is reported as stale but only `kstack state unlock <env> <id>` removes it.
//!   Whether it ran out is judged on the store's clock alone: the object's `Last-Modified`
//!   (its last renewal) against the `Date` of S3's reply. A run whose renewal is refused
//!   (another run holds the lock now), or that cannot renew before its lease ends, is stopped
//!   (`crate::stop`): it starts no new change.
//! - State: every write is conditional on the ETag kstack read (`If-Match`), or on there being
//!   none (`If-None-Match: *`), so a writer that lost a race never overwrites the winner.
//! - The bucket must have versioning on, so every state write can be recovered.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, ServerSideEncryption};

use super::lock::{Lock, LockError, LockInfo};
use super::time::rfc3339_in;
use super::StateError;
use crate::aws::ServiceClock;
use crate::model::{AwsAccess, S3State};
use crate::stop::{Reason, Stop};

/// The backend. Its requests run on a small runtime of its own, so they complete whatever
/// the caller's runtime is doing (apply writes state while other tasks wait for it).
pub(super) struct S3Backend {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    /// The key's default before keys named the project, if this key is a default.
    legacy_key: Option<String>,
    kms_key_id: Option<String>,
    environment: String,
    /// How long a lock holds without renewal; renewed every third of it.
    lease: Duration,
    /// S3's time, from its replies: what leases are judged by.
    clock: Arc<ServiceClock>,
    /// The state object's ETag as last read or written: `Some(None)` when it did not exist.
    version: Mutex<Option<Option<String>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which async contexts forbid; nothing of it is pending.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` and waits for it, from synchronous or asynchronous code.
fn run_on<T: Send + 'static>(runtime: &tokio::runtime::Runtime, future: impl Future<Output = T> + Send + 'static) -> T {
    let task = runtime.spawn(future);
    let wait = || runtime.block_on(task);
    let joined = match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        // On a current-thread runtime, or none: wait on another thread.
        Ok(_) => std::thread::scope(|scope| scope.spawn(wait).join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
        Err(_) => wait(),
    };
    joined.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
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

impl Inner {
    fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        match &self.runtime {
            Some(runtime) => run_on(runtime, future),
            None => unreachable!("the runtime lives as long as the backend"),
        }
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn lock_key(&self) -> String {
        format!("{}.lock", self.key)
    }

    fn lock_error(&self, message: String) -> LockError {
        LockError::Io { location: format!("s3://{}/{}", self.bucket, self.lock_key()), message }
    }
}

/// The lock object as read: who holds it, its ETag, and when it was last written (by the
/// store's clock).
struct Held {
    info: LockInfo,
    etag: String,
    written: Option<SystemTime>,
}

/// The lock object, if there is one.
async fn holder(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Option<Held>, String> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(output) => {
            let etag = output.e_tag().unwrap_or_default().to_owned();
            let written = output.last_modified().and_then(|t| SystemTime::try_from(*t).ok());
            let body = output.body.collect().await.map_err(|e| e.to_string())?.into_bytes();
            let info = serde_json::from_slice(&body).unwrap_or_else(|_| LockInfo::unknown());
            Ok(Some(Held { info, etag, written }))
        }
        Err(error) if is_missing(&error) => Ok(None),
        Err(error) => Err(describe(&error)),
    }
}

impl S3Backend {
    /// Connects to the bucket and checks that versioning is on; `access` reaches its account
    /// unless the bucket's settings say how (`aws:` in `state:`).
    pub(super) fn connect(location: &S3State, environment: &str, access: &AwsAccess) -> Result<S3Backend, StateError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kstack-s3")
            .enable_all()
            .build()
            .map_err(|e| StateError::Read { location: format!("s3://{}/{}", location.bucket, location.key), message: e.to_string() })?;
        let region = location.region.clone();
        let clock = Arc::new(ServiceClock::default());
        let reads_date = clock.interceptor();
        let access = location.access.as_deref().unwrap_or(access).clone();
        let session_name = format!("kstack-{environment}-state");
        let client = run_on(&runtime, async move {
            let config = crate::aws::access::sdk_config(&access, &region, &session_name).await;
            // A custom endpoint (an S3-compatible store, or an emulator) seldom serves
            // bucket-named host names; AWS itself gets the default, virtual-hosted style.
            let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL").is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
            let config = aws_sdk_s3::config::Builder::from(&config).force_path_style(custom_endpoint).interceptor(reads_date);
            aws_sdk_s3::Client::from_conf(config.build())
        });
        let inner = Inner {
            client,
            bucket: location.bucket.clone(),
            key: location.key.clone(),
            legacy_key: location.legacy_key.clone(),
            kms_key_id: location.kms_key_id.clone(),
            environment: environment.to_owned(),
            lease: Duration::from_secs(location.lease_seconds),
            clock,
            version: Mutex::new(None),
            runtime: Some(runtime),
        };
        let (client, bucket) = (inner.client.clone(), inner.bucket.clone());
        let enabled = inner.run(async move {
            match client.get_bucket_versioning().bucket(bucket).send().await {
                Ok(versioning) => Ok(versioning.status() == Some(&BucketVersioningStatus::Enabled)),
                // Some S3-compatible servers (the test emulator among them) answer with another
                // root element, which the SDK rejects; the status inside is what matters.
                Err(error) if error.raw_response().is_some_and(|r| r.status().is_success()) => Ok(error
                    .raw_response()
                    .and_then(|r| r.body().bytes())
                    .is_some_and(|body| String::from_utf8_lossy(body).contains("<Status>Enabled</Status>"))),
                Err(error) => Err(describe(&error)),
            }
        });
        match enabled {
            Ok(true) => Ok(S3Backend { inner: Arc::new(inner) }),
            Ok(false) => Err(StateError::Unversioned { bucket: inner.bucket.clone() }),
            Err(message) => Err(StateError::Read { location: inner.location(), message }),
        }
    }

    pub(super) fn location(&self) -> String {
        self.inner.location()
    }

    /// Where a state is found at the key the default was before keys named the project (and
    /// it names no other project), the location: this environment's state, most likely, not
    /// to be taken for none.
    pub(super) fn state_at_legacy_key(&self, project: Option<&str>) -> Result<Option<String>, StateError> {
        let inner = &self.inner;
        let Some(legacy) = inner.legacy_key.clone() else { return Ok(None) };
        let (client, bucket, key) = (inner.client.clone(), inner.bucket.clone(), legacy.clone());
        let found = inner.run(async move {
            match client.get_object().bucket(bucket).key(key).send().await {
                Ok(output) => Ok(Some(output.body.collect().await.map_err(|e| e.to_string())?.into_bytes().to_vec())),
                Err(error) if is_missing(&error) => Ok(None),
                Err(error) => Err(describe(&error)),
            }
        });
        let bytes = found.map_err(|message| StateError::Read { location: inner.location(), message })?;
        let recorded = bytes.and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let another_project = recorded.as_ref().and_then(|r| r["project"].as_str()).is_some_and(|p| Some(p) != project);
        Ok(recorded.filter(|_| !another_project).map(|_| format!("s3://{}/{legacy}", inner.bucket)))
    }

    /// The state object's bytes, remembering its version for the next write.
    pub(super) fn read(&self) -> Result<Option<Vec<u8>>, StateError> {
        let inner = &self.inner;
        let (client, bucket, key) = (inner.client.clone(), inner.bucket.clone(), inner.key.clone());
        let got = inner.run(async move {
            match client.get_object().bucket(bucket).key(key).send().await {
                Ok(output) => {
                    let etag = output.e_tag().map(str::to_owned);
                    let body = output.body.collect().await.map_err(|e| e.to_string())?;
                    Ok((Some(body.into_bytes().to_vec()), etag))
                }
                Err(error) if is_missing(&error) => Ok((None, None)),
                Err(error) => Err(describe(&error)),
            }
        });
        let (bytes, etag) = got.map_err(|message| StateError::Read { location: inner.location(), message })?;
        if let Ok(mut version) = inner.version.lock() {
            *version = Some(etag);
        }
        Ok(bytes)
    }

    /// Writes the state object if it is still the version last read (or written).
    pub(super) fn write(&self, bytes: &[u8]) -> Result<(), StateError> {
        let inner = &self.inner;
        // Never read: only a first write is safe.
        let expected = inner.version.lock().ok().and_then(|v| v.clone()).unwrap_or(None);
        let mut put = inner.client.put_object().bucket(&inner.bucket).key(&inner.key).body(ByteStream::from(bytes.to_vec()));
        put = match &expected {
            Some(etag) => put.if_match(etag),
            None => put.if_none_match("*"),
        };
        if let Some(kms) = &inner.kms_key_id {
            put = put.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id(kms);
        }
        let sent = inner.run(async move {
            match put.send().await {
                Ok(output) => Ok(output.e_tag().map(str::to_owned)),
                Err(error) if is_precondition(&error) => Err(None),
                Err(error) => Err(Some(describe(&error))),
            }
        });
        match sent {
            Ok(etag) => {
                if let Ok(mut version) = inner.version.lock() {
                    *version = Some(etag);
                }
                Ok(())
            }
            Err(None) => Err(StateError::Conflict { location: inner.location() }),
            Err(Some(message)) => Err(StateError::Write { location: inner.location(), message }),
        }
    }

    /// Deletes the state object after a migration elsewhere (versioning keeps it), if it is
    /// still the version read.
    pub(super) fn retire(&self) -> Result<(), StateError> {
        let inner = &self.inner;
        let expected = inner.version.lock().ok().and_then(|v| v.clone()).flatten();
        let mut delete = inner.client.delete_object().bucket(&inner.bucket).key(&inner.key);
        if let Some(etag) = &expected {
            delete = delete.if_match(etag);
        }
        let sent = inner.run(async move {
            match delete.send().await {
                Ok(_) => Ok(()),
                Err(error) if is_precondition(&error) => Err(None),
                Err(error) => Err(Some(describe(&error))),
            }
        });
        sent.map_err(|error| match error {
            None => StateError::Conflict { location: inner.location() },
            Some(message) => StateError::Write { location: inner.location(), message },
        })
    }

    /// Takes the lock and renews its lease in the background until the returned guard is
    /// dropped; stops the run through `stop` if the lock is lost.
    pub(super) fn lock(&self, command: &str, stop: &Stop) -> Result<Lock, LockError> {
        let inner = &self.inner;
        let mut info = LockInfo::ours(command);
        info.expires = Some(rfc3339_in(inner.lease.as_secs()));
        info.lease_seconds = Some(inner.lease.as_secs());
        let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
        let (client, bucket, key) = (inner.client.clone(), inner.bucket.clone(), inner.lock_key());
        // The lease is counted from before the request: S3 dates the object later.
        let sent = tokio::time::Instant::now();
        let created = inner.run(async move {
            match client.put_object().bucket(&bucket).key(&key).body(ByteStream::from(body)).if_none_match("*").send().await {
                Ok(output) => Ok(Ok(output.e_tag().unwrap_or_default().to_owned())),
                Err(error) if is_precondition(&error) => holder(&client, &bucket, &key).await.map(Err),
                Err(error) => Err(describe(&error)),
            }
        });
        let etag = match created.map_err(|message| inner.lock_error(message))? {
            Ok(etag) => etag,
            Err(None) => return Err(LockError::Held { environment: inner.environment.clone(), info: Box::new(LockInfo::unknown()), stale: false }),
            Err(Some(held)) => {
                let lease_ran_out = match (held.written, inner.clock.now()) {
                    (Some(written), Some(now)) => held.info.lease_ran_out(written, now, inner.lease),
                    // Without the store's times the lease cannot be judged: taken as running.
                    _ => false,
                };
                let stale = held.info.process_ended() || lease_ran_out;
                return Err(LockError::Held { environment: inner.environment.clone(), info: Box::new(held.info), stale });
            }
        };
        let etag = Arc::new(Mutex::new(Some(etag)));
        let ours = info.id.clone();
        let renewal = inner.runtime.as_ref().map(|runtime| {
            let lease = Lease { client: inner.client.clone(), bucket: inner.bucket.clone(), key: inner.lock_key(), length: inner.lease };
            runtime.spawn(lease.renew(info, Arc::clone(&etag), sent, inner.environment.clone(), stop.clone()))
        });
        let owner = Arc::clone(inner);
        let release = move || {
            if let Some(renewal) = renewal {
                renewal.abort();
            }
            // Only our lock: once it is someone else's (renewal found so, or the ETag differs),
            // theirs stays.
            let Some(current) = etag.lock().ok().and_then(|e| e.clone()) else { return };
            let (client, bucket, key) = (owner.client.clone(), owner.bucket.clone(), owner.lock_key());
            owner.run(async move {
                let deleted = client.delete_object().bucket(&bucket).key(&key).if_match(current).send().await;
                // A renewal cut short by the abort may still have landed, with a new ETag.
                if deleted.is_err_and(|error| is_precondition(&error)) {
                    if let Ok(Some(held)) = holder(&client, &bucket, &key).await.as_ref().map(|h| h.as_ref().filter(|h| h.info.id == ours)) {
                        drop(client.delete_object().bucket(&bucket).key(&key).if_match(&held.etag).send().await);
                    }
                }
            });
        };
        Ok(Lock { release: Some(Box::new(release)) })
    }

    /// Removes the lock if it is the one named `id`; the id is required, since the holder may
    /// be alive on another machine. Returns who held it.
    pub(super) fn unlock(&self, id: Option<&str>) -> Result<Option<LockInfo>, LockError> {
        let inner = &self.inner;
        let (client, bucket, key) = (inner.client.clone(), inner.bucket.clone(), inner.lock_key());
        let Some(Held { info, etag, .. }) = inner.run(async move { holder(&client, &bucket, &key).await }).map_err(|m| inner.lock_error(m))? else {
            return Ok(None);
        };
        let Some(given) = id else {
            return Err(LockError::IdNeeded { environment: inner.environment.clone(), info: Box::new(info) });
        };
        if given != info.id {
            return Err(LockError::WrongId { environment: inner.environment.clone(), held: info.id, given: given.to_owned() });
        }
        let delete = inner.client.delete_object().bucket(&inner.bucket).key(inner.lock_key()).if_match(etag);
        let deleted = inner.run(async move {
            match delete.send().await {
                Ok(_) => Ok(()),
                // Renewed or retaken meanwhile: its holder is alive.
                Err(error) if is_precondition(&error) => Err(String::from("the lock changed while it was being removed: its holder is alive")),
                Err(error) => Err(describe(&error)),
            }
        });
        deleted.map(|()| Some(info)).map_err(|message| inner.lock_error(message))
    }
}

/// The lock object whose lease a run renews.
struct Lease {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    length: Duration,
}

impl Lease {
    /// Extends the lease every third of its length until the lock is released (the task is
    /// aborted). Stops the run when S3 refuses a renewal (the object is not ours any more:
    /// another run took the lock, or it was unlocked by hand), and when the lease would run
    /// out before the next attempt, as measured here on the monotonic clock from when the last
    /// renewal that succeeded was sent; it keeps trying after that, to hold the lock while the
    /// run winds down.
    /// `etag` is the lock object's as we last wrote it; `None` once it is not ours.
    async fn renew(self, mut info: LockInfo, etag: Arc<Mutex<Option<String>>>, mut renewed: tokio::time::Instant, environment: String, stop: Stop) {
        let Lease { client, bucket, key, length } = self;
        loop {
            tokio::time::sleep(length / 3).await;
            info.expires = Some(rfc3339_in(length.as_secs()));
            let Some(current) = etag.lock().ok().and_then(|e| e.clone()) else { return };
            let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
            let sent = tokio::time::Instant::now();
            match client.put_object().bucket(&bucket).key(&key).body(ByteStream::from(body)).if_match(current).send().await {
                Ok(output) => {
                    renewed = sent;
                    if let (Ok(mut etag), Some(new)) = (etag.lock(), output.e_tag()) {
                        *etag = Some(new.to_owned());
                    }
                }
                Err(error) if is_precondition(&error) || is_missing(&error) => {
                    let now = holder(&client, &bucket, &key).await;
                    // Our own renewal landed but its reply was lost, so the SDK's retry was
                    // refused: the lock is still ours, as that renewal wrote it.
                    if let Ok(Some(held)) = &now {
                        if held.info.id == info.id {
                            renewed = sent;
                            if let Ok(mut etag) = etag.lock() {
                                *etag = Some(held.etag.clone());
                            }
                            continue;
                        }
                    }
                    if let Ok(mut etag) = etag.lock() {
                        *etag = None;
                    }
                    let why = match now {
                        Ok(Some(now)) => format!("the lock of `{environment}` was taken over by {}", now.info),
                        Ok(None) => format!("the lock of `{environment}` was removed (`kstack state unlock`?) while this run held it"),
                        Err(_) => format!("the lock of `{environment}` is not this run's any more"),
                    };
                    stop.stop(Reason::LockLost(why));
                    return;
                }
                Err(error) => {
                    tracing::warn!("could not renew the lock s3://{bucket}/{key}, will retry: {}", describe(&error));
                    if renewed.elapsed() + length / 3 >= length {
                        stop.stop(Reason::LockLost(format!(
                            "the lock of `{environment}` could not be renewed before its {}s lease ran out ({}); another run may take it",
                            length.as_secs(),
                            describe(&error)
                        )));
                    }
                }
            }
        }
    }
}
