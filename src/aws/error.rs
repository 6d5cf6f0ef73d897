//! An AWS call's failure, with the error code and message AWS gave.

use std::fmt;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

#[derive(Debug, Clone, thiserror::Error)]
pub struct AwsError {
    /// AWS's error code, e.g. `DependencyViolation`; `None` for transport failures and
    /// kstack's own errors (a reply without an id, a resource that ended `failed`).
    pub code: Option<String>,
    pub message: String,
    /// The request or its reply was lost on the way (no connection, a timeout, a reply that
    /// could not be read): AWS may or may not have acted.
    pub transport: bool,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl AwsError {
    /// An error of kstack's own about an AWS call: AWS acted as it says (or did nothing).
    pub fn internal(message: impl Into<String>) -> AwsError {
        AwsError { code: None, message: message.into(), transport: false }
    }

    /// A reply that lacks what the call makes (its id): an error naming the operation, never
    /// an empty id.
    pub fn missing(operation: &str, what: &str) -> AwsError {
        AwsError::internal(format!("{operation} succeeded but its reply has no {what}"))
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Failures after which AWS may or may not have acted: the connection broke (a reply lost,
    /// a reset, a timeout), or AWS answered that it failed internally, which loses the reply
    /// just the same. Anything else is an answer: an error is an error.
    pub fn is_ambiguous(&self) -> bool {
        self.transport
            || matches!(
                self.code.as_deref(),
                Some("InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" | "InternalServerError")
            )
    }

    /// A create refused because the resource is there already: an earlier attempt whose
    /// reply was lost, or a resource kstack did not make.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some(
                "EntityAlreadyExists"
                    | "AlreadyExists"
                    | "InvalidGroup.Duplicate"
                    | "InvalidLaunchTemplateName.AlreadyExistsException"
                    | "DuplicateLoadBalancerName"
            )
        )
    }

    /// The resource does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        let Some(code) = self.code.as_deref() else { return false };
        code.ends_with(".NotFound")
            || code.ends_with("NotFoundException")
            || matches!(code, "NoSuchEntity" | "LoadBalancerNotFound" | "NotFound")
            || (code == "ValidationError" && self.message.to_ascii_lowercase().contains("not found"))
    }

    /// Failures that go away by themselves: throttling the SDK gave up on, and AWS's eventual
    /// consistency (a resource created a moment ago not yet visible to another API).
    pub fn is_transient(&self) -> bool {
        let Some(code) = self.code.as_deref() else { return false };
        let message = self.message.to_ascii_lowercase();
        matches!(
            code,
            "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InvalidVpcID.NotFound"
                | "InvalidSubnetID.NotFound"
                | "InvalidGroup.NotFound"
                | "InvalidInternetGatewayID.NotFound"
                | "InvalidRouteTableID.NotFound"
                | "InvalidNatGatewayID.NotFound"
                | "InvalidAllocationID.NotFound"
                | "InvalidLaunchTemplateId.NotFound"
                | "InvalidLaunchTemplateName.NotFoundException"
                | "IncorrectState"
        ) || (code == "ValidationError" && message.contains("instance profile"))
            || (code == "InvalidParameterValue" && message.contains("iam instance profile"))
            || (code == "ResourceInUse" && message.contains("scaling activit"))
            || (code == "ScalingActivityInProgress")
    }
}

impl<E, R> From<SdkError<E, R>> for AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    fn from(error: SdkError<E, R>) -> AwsError {
        let code = error.code().map(str::to_owned);
        // A request that could not be built never left; a service error is AWS's answer.
        let transport = matches!(error, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_));
        let message = match error.message() {
            Some(message) => message.to_owned(),
            None => aws_smithy_types::error::display::DisplayErrorContext(&error).to_string(),
        };
        AwsError { code, message, transport }
    }
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::client::result::{ConnectorError, SdkError};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::AwsError;

    type Sdk = SdkError<ErrorMetadata, HttpResponse>;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    fn answered(code: Option<&str>) -> AwsError {
        let mut metadata = ErrorMetadata::builder().message("it said no");
        if let Some(code) = code {
            metadata = metadata.code(code);
        }
        AwsError::from(Sdk::service_error(metadata.build(), response(400)))
    }

    #[test]
    fn only_a_lost_request_or_reply_leaves_the_outcome_unknown() {
        let timeout: AwsError = Sdk::timeout_error("read timed out").into();
        let dispatch: AwsError = Sdk::dispatch_failure(ConnectorError::io("connection reset".into())).into();
        let unreadable: AwsError = Sdk::response_error("truncated body", response(200)).into();
        for lost in [&timeout, &dispatch, &unreadable] {
            assert!(lost.is_ambiguous() && lost.code.is_none(), "{lost:?}");
        }
        assert!(answered(Some("InternalError")).is_ambiguous(), "AWS's own failure loses the reply too");
        let unbuilt: AwsError = Sdk::construction_failure("missing field").into();
        for answer in [answered(Some("DependencyViolation")), answered(None), unbuilt, AwsError::internal("NAT gateway nat-1 failed: no capacity")] {
            assert!(!answer.is_ambiguous(), "{answer:?}");
        }
        let missing = AwsError::missing("CreateVpc", "VPC id");
        assert!(!missing.is_ambiguous());
        assert_eq!(missing.to_string(), "CreateVpc succeeded but its reply has no VPC id");
    }
}
