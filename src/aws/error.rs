//! An AWS call's failure: what kind it is, the operation, AWS's code, message and request id.
//! Where it happened (region, resource address) is added by the errors that wrap it.

use std::fmt;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Who failed: AWS answering with an error, the way there and back, or kstack itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// AWS answered with an error; its code, e.g. `DependencyViolation`, when it gave one.
    Service { code: Option<String> },
    /// The request or its reply was lost on the way (no connection, a timeout, a reply that
    /// could not be read, no credentials to sign it with): AWS may or may not have acted.
    Transport,
    /// kstack's own error about a call: a reply without an id, a resource that ended `failed`,
    /// a request that could not be built. AWS acted as it says, or did nothing.
    Internal,
    /// No credentials to sign the request with: it never left.
    Credentials,
}

#[derive(Debug, Clone, thiserror::Error)]
pub struct AwsError {
    pub kind: AwsErrorKind,
    pub message: String,
    /// The API operation, e.g. `CreateVpc`, when the error came from one.
    pub operation: Option<String>,
    /// AWS's id of the request, which AWS support asks for.
    pub request_id: Option<String>,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(operation) = &self.operation {
            write!(f, "{operation}: ")?;
        }
        if let Some(code) = self.code() {
            write!(f, "{code}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl AwsError {
    /// An error of kstack's own about an AWS call: AWS acted as it says (or did nothing).
    pub fn internal(message: impl Into<String>) -> AwsError {
        AwsError { kind: AwsErrorKind::Internal, message: message.into(), operation: None, request_id: None }
    }

    /// AWS's error code, when AWS answered with one.
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            AwsErrorKind::Service { code } => code.as_deref(),
            AwsErrorKind::Transport | AwsErrorKind::Internal | AwsErrorKind::Credentials => None,
        }
    }

    /// A reply that lacks what the call makes (its id): an error naming the operation, never
    /// an empty id.
    pub fn missing(operation: &str, what: &str) -> AwsError {
        AwsError::internal(format!("{operation} succeeded but its reply has no {what}"))
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code() == Some(code)
    }

    /// Failures after which AWS may or may not have acted: the connection broke (a reply lost,
    /// a reset, a timeout), or AWS answered that it failed internally, which loses the reply
    /// just the same. Anything else is an answer: an error is an error.
    pub fn is_ambiguous(&self) -> bool {
        self.kind == AwsErrorKind::Transport
            || matches!(self.code(), Some("InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" | "InternalServerError"))
    }

    /// A create refused because the resource is there already: an earlier attempt whose
    /// reply was lost, or a resource kstack did not make.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self.code(),
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
        let Some(code) = self.code() else { return false };
        code.ends_with(".NotFound")
            || code.ends_with("NotFoundException")
            || matches!(code, "NoSuchEntity" | "LoadBalancerNotFound" | "NotFound")
            || (code == "ValidationError" && self.message.to_ascii_lowercase().contains("not found"))
    }

    /// Failures that go away by themselves: throttling the SDK gave up on, and AWS's eventual
    /// consistency (a resource created a moment ago not yet visible to another API).
    pub fn is_transient(&self) -> bool {
        let Some(code) = self.code() else { return false };
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

/// A step on the way to deleting or changing a resource (an association, an attachment, a
/// policy or a route let go of) whose target is gone is done: an earlier attempt's reply was
/// lost and the SDK's retry was told so, or AWS let go of it itself. It never means the
/// resource itself is gone, which only its own call says (`aws::delete`): a disassociation's
/// "not found" once ended a route table's delete before the table went, and left it behind.
pub(super) fn done_if_gone<T, E>(result: Result<T, E>) -> Result<(), AwsError>
where
    AwsError: From<E>,
{
    match result.map_err(AwsError::from) {
        Ok(_) => Ok(()),
        // A gateway's detachment retried after a lost reply is told it is not attached.
        Err(error) if error.is_not_found() || error.is_code("Gateway.NotAttached") => {
            tracing::debug!("{error}: already done");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

impl<E, R> From<SdkError<E, R>> for AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    fn from(error: SdkError<E, R>) -> AwsError {
        let operation = operation_of::<E>();
        if let Some(message) = missing_credentials(&error) {
            return AwsError { kind: AwsErrorKind::Credentials, message, operation, request_id: None };
        }
        let kind = match &error {
            SdkError::ServiceError(_) => AwsErrorKind::Service { code: error.code().map(str::to_owned) },
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => AwsErrorKind::Transport,
            // A request that could not be built never left.
            _ => AwsErrorKind::Internal,
        };
        let message = match error.message() {
            Some(message) => message.to_owned(),
            None => causes(&error),
        };
        let request_id = error.meta().extra("aws_request_id").map(str::to_owned);
        AwsError { kind, message, operation, request_id }
    }
}

/// The operation an SDK error type belongs to: `aws_sdk_ec2::operation::create_vpc::CreateVpcError`
/// is `CreateVpc`.
fn operation_of<E>() -> Option<String> {
    let name = std::any::type_name::<E>().rsplit("::").next()?;
    name.strip_suffix("Error").filter(|operation| !operation.is_empty()).map(str::to_owned)
}

/// Why no credentials could sign the request, when that is why it failed (the SDK reports it
/// as a dispatch failure, though nothing was sent): each provider the chain tried, one a line,
/// or why a profile or a role to assume gave none (STS refused it, the profile is not
/// there).
fn missing_credentials(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) | CredentialsError::ProviderError(_)) =
            cause.downcast_ref()
        {
            return Some(cause.source().map_or_else(|| cause.to_string(), causes));
        }
        source = cause.source();
    }
    None
}

/// An error and its causes, each once, in plain words: the SDK's own rendering ends with a
/// debug dump of every layer.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// What the user can do about it: by the kind of failure.
impl crate::hint::Hint for AwsError {
    fn hint(&self) -> Option<String> {
        let hint = match self.kind {
            AwsErrorKind::Credentials => {
                "set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, run where an instance role applies, or name \
                 a profile or a role to assume (which must trust these credentials) in the environment's `aws:`"
            }
            AwsErrorKind::Transport => "check the network and AWS_ENDPOINT_URL, then run again: a run picks up where this one stopped",
            AwsErrorKind::Service { .. } | AwsErrorKind::Internal => {
                "check the message above and the credentials' permissions (AWS_PROFILE, AWS_ACCESS_KEY_ID), then run again"
            }
        };
        Some(hint.to_owned())
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
            assert!(lost.is_ambiguous() && lost.code().is_none(), "{lost:?}");
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

    #[test]
    fn an_answer_names_its_operation_code_and_request_id() {
        use aws_sdk_ec2::operation::create_vpc::CreateVpcError;
        let metadata = ErrorMetadata::builder().code("VpcLimitExceeded").message("too many VPCs").custom("aws_request_id", "req-1").build();
        let error = AwsError::from(SdkError::<CreateVpcError, HttpResponse>::service_error(CreateVpcError::generic(metadata), response(400)));
        assert_eq!(error.kind, super::AwsErrorKind::Service { code: Some(String::from("VpcLimitExceeded")) });
        assert_eq!(error.to_string(), "CreateVpc: VpcLimitExceeded: too many VPCs (request id req-1)");
    }

    #[test]
    fn missing_credentials_list_what_was_tried_without_the_sdks_debug_dump() {
        use aws_credential_types::provider::error::CredentialsError;
        let tried =
            std::io::Error::other("no credentials found in chain. Attempted:\n  Environment: environment variable not set\n  Profile: not enabled");
        let connector = ConnectorError::other(Box::new(CredentialsError::not_loaded(tried)), None);
        let error = AwsError::from(Sdk::dispatch_failure(connector));
        assert_eq!(error.kind, super::AwsErrorKind::Credentials);
        assert!(!error.is_ambiguous(), "nothing was sent");
        assert_eq!(error.message, "no credentials found in chain. Attempted:\n  Environment: environment variable not set\n  Profile: not enabled");
        let hint = crate::hint::Hint::hint(&error).unwrap_or_default();
        assert!(hint.contains("AWS_PROFILE"), "{hint}");
    }

    #[test]
    fn a_role_sts_refuses_is_a_credentials_error_not_the_network() {
        use aws_credential_types::provider::error::CredentialsError;
        let refused = std::io::Error::other("AccessDenied: User is not authorized to perform sts:AssumeRole");
        let connector = ConnectorError::other(Box::new(CredentialsError::provider_error(refused)), None);
        let error = AwsError::from(Sdk::dispatch_failure(connector));
        assert_eq!(error.kind, super::AwsErrorKind::Credentials);
        assert!(error.message.contains("not authorized to perform sts:AssumeRole"), "{}", error.message);
        assert!(crate::hint::Hint::hint(&error).unwrap_or_default().contains("a role to assume"));
    }
}
