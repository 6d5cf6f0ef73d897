//! The service's clock, as the `Date` header of its replies tells it. Leases (the S3 lock's,
//! a bake's) are judged on this clock only: the holder and the judge may run on machines
//! whose clocks disagree by minutes, but both talk to the same service.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};

#[derive(Debug, Default)]
pub struct ServiceClock {
    /// The last reply's `Date`, and when (on this machine's monotonic clock) it came.
    last: Mutex<Option<(SystemTime, Instant)>>,
}

impl ServiceClock {
    pub fn interceptor(self: &Arc<Self>) -> ReadDate {
        ReadDate(Arc::clone(self))
    }

    /// The service's time now: its last reply's `Date` plus the time that passed here since,
    /// measured on the monotonic clock. `None` before the first reply. `Date` has whole
    /// seconds and is cut, not rounded, so this is up to a second behind the service.
    pub fn now(&self) -> Option<SystemTime> {
        let last = *self.last.lock().ok()?;
        last.map(|(date, seen)| date + seen.elapsed())
    }

    fn saw(&self, date: SystemTime) {
        if let Ok(mut last) = self.last.lock() {
            // Replies of concurrent requests arrive out of order: keep the latest time.
            let now = Instant::now();
            let newer = last.is_none_or(|(known, seen)| date > known + now.duration_since(seen));
            if newer {
                *last = Some((date, now));
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadDate(Arc<ServiceClock>);

impl Intercept for ReadDate {
    fn name(&self) -> &'static str {
        "kstack::ReadDate"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _config: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let date = context.response().headers().get("date").and_then(|d| DateTime::from_str(d, Format::HttpDate).ok());
        if let Some(date) = date.and_then(|d| SystemTime::try_from(d).ok()) {
            self.0.saw(date);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{parse_rfc3339, rfc3339};
    use std::time::Duration;

    #[test]
    fn the_latest_date_wins_and_time_runs_on_monotonically() {
        let clock = ServiceClock::default();
        assert!(clock.now().is_none());
        let date = parse_rfc3339("2030-01-01T00:00:10Z").unwrap();
        clock.saw(date);
        clock.saw(parse_rfc3339("2030-01-01T00:00:05Z").unwrap());
        let now = clock.now().unwrap();
        assert!(now >= date && now < date + Duration::from_secs(1), "{now:?}");
        assert_eq!(rfc3339(date), "2030-01-01T00:00:10Z");
    }
}
