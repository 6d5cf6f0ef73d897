//! Counts AWS API calls per operation, so refresh cost can be measured and reported.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

#[derive(Debug, Default)]
pub struct ApiCalls {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ApiCalls {
    pub fn interceptor(self: &Arc<Self>) -> CountCalls {
        CountCalls(Arc::clone(self))
    }

    /// Calls made so far, by `service:Operation`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

#[derive(Debug, Clone)]
pub struct CountCalls(Arc<ApiCalls>);

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "kstack::CountCalls"
    }

    // Client-level interceptors see `read_before_execution` before the operation's own
    // configuration (which holds its name) is in the bag; serialization comes after.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        config: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = config
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| format!("{}:{}", m.service(), m.name()))
            .unwrap_or_else(|| String::from("unknown"));
        if let Ok(mut counts) = self.0.counts.lock() {
            *counts.entry(operation).or_default() += 1;
        }
        Ok(())
    }
}
