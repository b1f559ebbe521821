//! Turns SDK errors into the relay's three severities.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use crate::relay::ports::{PortError, Severity};

/// Codes that mean configuration is wrong: nothing will work until it is fixed.
const FATAL: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "ResourceNotFoundException",
    "NoSuchBucket",
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "ExpiredToken",
    "ExpiredTokenException",
    "KMS.AccessDeniedException",
    "KmsAccessDenied",
    "KMS.DisabledException",
    "KmsDisabled",
];

/// Codes that mean "slow down": retryable, and a signal for flow control.
const THROTTLING: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",
    "AWS.SimpleQueueService.RequestThrottled",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "KmsThrottled",
    "KMS.ThrottlingException",
];

/// Other codes that go away with time.
const RETRYABLE: &[&str] = &[
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
];

/// Classifies an error code and HTTP status.
pub fn severity_of(code: Option<&str>, status: Option<u16>) -> Severity {
    match code {
        Some(c) if FATAL.contains(&c) => Severity::Fatal,
        Some(c) if RETRYABLE.contains(&c) || THROTTLING.contains(&c) => Severity::Retryable,
        _ if status.is_some_and(|s| s >= 500 || s == 429) => Severity::Retryable,
        _ => Severity::Permanent,
    }
}

/// True when the service asked the caller to slow down (throttling codes, HTTP 429).
pub fn is_throttling(code: Option<&str>, status: Option<u16>) -> bool {
    code.is_some_and(|c| THROTTLING.contains(&c)) || status == Some(429)
}

/// Converts any SDK error, keeping its code and message (never credentials).
pub fn port_error<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code();
            let status = Some(se.raw().status().as_u16());
            let detail = format!(
                "{}: {}{}",
                code.unwrap_or("unknown error"),
                e.message().unwrap_or(""),
                status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
            );
            if is_throttling(code, status) {
                return PortError::throttled(operation, detail);
            }
            PortError::new(operation, severity_of(code, status), detail)
        }
        SdkError::TimeoutError(_) => PortError {
            timed_out: true,
            ..PortError::ambiguous(operation, "timed out")
        },
        SdkError::DispatchFailure(d) => {
            let detail = format!("dispatch failure: {:?}", d.as_connector_error());
            // A refused connection sent nothing; anything else may have reached the service.
            if detail.contains("Connection refused") {
                PortError::new(operation, Severity::Retryable, detail)
            } else {
                PortError::ambiguous(operation, detail)
            }
        }
        SdkError::ResponseError(_) => {
            PortError::ambiguous(operation, "the response could not be read")
        }
        SdkError::ConstructionFailure(_) => PortError::new(
            operation,
            Severity::Permanent,
            format!("request could not be built: {err}"),
        ),
        _ => PortError::new(operation, Severity::Retryable, err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Missing resources and denied access are fatal; throttling and 5xx retryable; the rest permanent.
    #[test]
    fn classifies_codes() {
        assert_eq!(
            severity_of(Some("AWS.SimpleQueueService.NonExistentQueue"), Some(400)),
            Severity::Fatal
        );
        assert_eq!(
            severity_of(Some("ResourceNotFoundException"), Some(400)),
            Severity::Fatal
        );
        assert_eq!(
            severity_of(Some("AccessDeniedException"), Some(400)),
            Severity::Fatal
        );
        assert_eq!(
            severity_of(Some("ProvisionedThroughputExceededException"), Some(400)),
            Severity::Retryable
        );
        assert_eq!(
            severity_of(Some("ThrottlingException"), Some(400)),
            Severity::Retryable
        );
        assert_eq!(
            severity_of(Some("Whatever"), Some(503)),
            Severity::Retryable
        );
        assert_eq!(severity_of(None, Some(500)), Severity::Retryable);
        assert_eq!(
            severity_of(Some("InvalidParameterValue"), Some(400)),
            Severity::Permanent
        );
        assert_eq!(
            severity_of(Some("BatchRequestTooLong"), Some(400)),
            Severity::Permanent
        );
    }
}
