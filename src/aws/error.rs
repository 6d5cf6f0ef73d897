//! An AWS call's failure, with the error code and message AWS gave.

use std::fmt;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

#[derive(Debug, Clone, thiserror::Error)]
pub struct AwsError {
    /// AWS's error code, e.g. `DependencyViolation`; `None` for transport failures.
    pub code: Option<String>,
    pub message: String,
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
    pub fn internal(message: impl Into<String>) -> AwsError {
        AwsError { code: None, message: message.into() }
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Failures after which AWS may or may not have acted: the connection broke (a reply lost,
    /// a reset, a timeout) or AWS failed internally.
    pub fn is_ambiguous(&self) -> bool {
        match self.code.as_deref() {
            None => true,
            Some(code) => matches!(code, "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" | "InternalServerError"),
        }
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
        let message = match error.message() {
            Some(message) => message.to_owned(),
            None => aws_smithy_types::error::display::DisplayErrorContext(&error).to_string(),
        };
        AwsError { code, message }
    }
}
